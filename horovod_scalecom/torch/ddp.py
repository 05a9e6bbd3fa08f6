"""ScaleCom as a PyTorch DDP communication hook (no Horovod).

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from horovod_scalecom.torch.ddp import ScaleComHookState, scalecom_hook

    dist.init_process_group("gloo")          # or "nccl"
    model = DDP(model)
    model.register_comm_hook(ScaleComHookState(model, ratio=0.01), scalecom_hook)

For each gradient bucket DDP hands over, the hook runs ScaleCom on every
parameter in it, exactly as the exchange through Horovod's allreduce does
per tensor (the same ScaleComState, kernels and NumPy reference):

0. this rank's gradient is clipped to ``clip_factor`` times the running
   level of its norm;
1. the leader ``t mod n`` selects ``I = top-k |m + g|`` of each parameter
   (``t``: that parameter's exchanges so far);
2. one broadcast from the leader carries the indices of every parameter of
   the bucket it leads;
3. every rank gathers its ``(m + g)[I]`` and updates its memory (the
   low-pass filter);
4. one allreduce carries those k values of every parameter together with
   the parameters that go dense (warm-up, fewer than ``min_numel``
   elements); the sum is divided by n;
5. the mean is scattered back into the bucket.

Steps 0-2 run in the hook, on the thread of DDP's backward; 3-5 run in the
completion callbacks of the collectives (horovod_scalecom.torch.ddp_exchange),
so on gloo backward goes on while the bucket's exchange proceeds. The memory, step and clip
level are kept per parameter, by name: DDP may rebuild its buckets (after
the first iteration, under ``static_graph``) and nothing moves. Under
``no_sync()`` DDP calls no hook; the accumulated gradient is exchanged at
the next step that synchronizes, as one step.
"""

# No `from __future__ import annotations` here: DDP's register_comm_hook
# checks the hook's annotations as objects (dist.GradBucket, Future[Tensor]).
import zlib
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from horovod_scalecom.config import DEFAULTS, ScaleComConfig
from horovod_scalecom.torch.ddp_checks import check_bucket, model_and_module
from horovod_scalecom.torch.ddp_exchange import BucketExchange, Part
from horovod_scalecom.torch.ddp_group import DistGroup
from horovod_scalecom.torch.state import ScaleComState
from horovod_scalecom.stats import last_step, new_record

__all__ = ["ScaleComHookState", "scalecom_hook"]


class ScaleComHookState:
    """ScaleCom's knobs and memory for a DDP model, and its exchange.

    Args:
        model: the model (the DDP wrapper or the module inside it); memory is
            kept per parameter name, as in the module's ``named_parameters()``.
        process_group: the group DDP reduces over (None: the DDP model's
            group when ``model`` is the DDP wrapper, else the default group).
        ratio: fraction of each tensor's elements sent (0.01 = 100x).
        beta: low-pass filter coefficient in (0, 1]; 1 is classic error feedback.
        warmup_steps: per parameter, the first exchanges are dense.
        min_numel: parameters with fewer elements are sent dense.
        clip_factor: each rank's gradient of a compressed parameter is clipped
            to ``clip_factor`` times the running level of its norm (None: off).
        clip_norm: if set, each rank first scales every parameter's gradient
            to L2 norm at most ``clip_norm`` (None: off).
        share_timeout: seconds any of ScaleCom's collectives may take before
            it raises instead of hanging.

    Building it is collective on every rank of ``process_group`` (default:
    the DDP model's, else the default group): it makes ScaleCom's two groups
    and checks that every rank has the same knobs and parameters (a
    difference raises on every rank, naming it). The same
    names and defaults as the Horovod paths (``horovod_scalecom.torch.ScaleCom``);
    the leaders are never staggered (one broadcast per bucket).
    """

    def __init__(self, model: torch.nn.Module, process_group: Any = None,
                 ratio: float = DEFAULTS.ratio, beta: float = DEFAULTS.beta,
                 warmup_steps: int = DEFAULTS.warmup_steps, min_numel: int = DEFAULTS.min_numel,
                 clip_factor: Optional[float] = DEFAULTS.clip_factor,
                 clip_norm: Optional[float] = DEFAULTS.clip_norm,
                 share_timeout: float = DEFAULTS.share_timeout) -> None:
        config = ScaleComConfig(ratio=ratio, beta=beta, warmup_steps=warmup_steps,
                                min_numel=min_numel, clip_factor=clip_factor, clip_norm=clip_norm,
                                share_timeout=share_timeout)
        ddp, module = model_and_module(model)
        if ddp is not None:
            # The group DDP averages over; another one would mix other ranks' gradients in.
            if process_group is None:
                process_group = ddp.process_group
            elif process_group is not ddp.process_group:
                raise ValueError(
                    "ScaleComHookState: process_group differs from the DDP model's (the "
                    f"state's would be ranks {_ranks(process_group)}, DDP averages over ranks "
                    f"{_ranks(ddp.process_group)}): pass the group DDP was built with, or "
                    "leave it out")
        # DDP exchanges the gradients of the parameters that require one.
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        odd = [f"{n} ({p.dtype})" for n, p in named if not p.is_floating_point()]
        if odd:
            raise TypeError(f"ScaleCom's DDP hook averages real floating-point gradients; "
                            f"these parameters are not: {', '.join(odd)}")
        self.group = DistGroup(process_group, config.share_timeout)
        self.state = ScaleComState(named, config, self.group)
        self._by_param = {s.param: s for s in self.state.tensors.values()}
        self._last: dict[str, dict[str, Any]] = {}
        self._exchange = BucketExchange(self.state, self.group, self._record)
        self.state.check_config()

    @property
    def config(self) -> ScaleComConfig:
        return self.state.config

    # -- the exchange of one bucket ---------------------------------------------------

    def exchange(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """The bucket's gradients averaged over the ranks, ScaleCom-compressed
        (horovod_scalecom.torch.ddp_exchange)."""
        check_bucket(bucket)
        buffer = bucket.buffer()
        if buffer.is_sparse or any(g.is_sparse for g in bucket.gradients()):
            names = ", ".join(self._name(p) for p in bucket.parameters())
            raise TypeError(f"ScaleCom's DDP hook: the gradients of {names} are sparse; it "
                            "averages dense gradients (use nn.Embedding(..., sparse=False))")
        if not buffer.is_floating_point():
            raise TypeError(f"ScaleCom's DDP hook: bucket {bucket.index()} holds "
                            f"{buffer.dtype} gradients; ScaleCom averages floating-point "
                            "gradients only")
        parts = self._parts(bucket, buffer)
        if self.group.size() == 1:
            return _done(buffer)
        return self._exchange.start(bucket.index(), buffer, parts)

    def _parts(self, bucket: dist.GradBucket, buffer: torch.Tensor) -> list[Part]:
        """Each parameter of the bucket, its state and this exchange's step."""
        parts = []
        base = buffer.data_ptr()
        for param, grad in zip(bucket.parameters(), bucket.gradients()):
            state = self._by_param.get(param)
            if state is None:
                raise ValueError(
                    f"ScaleCom's DDP hook got the gradient of a parameter of shape "
                    f"{tuple(param.shape)} that its state does not know: build "
                    "ScaleComHookState from the model that DDP wraps")
            start = (grad.data_ptr() - base) // buffer.element_size()
            parts.append(Part(state, start, grad.numel(), state.step))
            state.step += 1
        return parts

    def _name(self, param: torch.Tensor) -> str:
        state = self._by_param.get(param)
        return state.name if state is not None else f"a parameter of shape {tuple(param.shape)}"

    # -- checkpoints and figures ------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Memory, step counter and clip level of every parameter, for this rank
        (save one per rank); the same format as the Horovod paths'."""
        return self.state.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Restore what state_dict() saved on this same rank of a job of the
        same size. Collective: every rank checks its own state first (its
        rank and world size, the model's parameters, and with ``strict`` the
        knobs: another ratio or beta built that memory), then the ranks
        compare their steps (the step picks the leader); if any rank's check
        fails, every rank raises and none loads. ``strict=False`` carries
        the memory over to other knobs."""
        error: Optional[BaseException] = None
        steps = 0
        try:
            self.state.check_state_dict(state_dict)
            differ = self.state.config_differences(state_dict) if strict else []
            if differ:
                raise ValueError(
                    f"this ScaleCom state was saved with other knobs: {', '.join(differ)}. "
                    "Its memory was built under them: build ScaleComHookState with the saved "
                    "knobs, or load with strict=False to carry the memory over")
            saved = state_dict["tensors"]
            steps = zlib.crc32("|".join(
                f"{n}:{int(saved[n]['step']) if n in saved else s.step}"
                for n, s in self.state.tensors.items()).encode())
        except Exception as exc:   # noqa: BLE001 - every rank must reach the allgather
            error = exc
        every = self.group.allgather_row(
            torch.tensor([float(error is not None), steps], dtype=torch.float64),
            "every rank's check of its loaded ScaleCom state", self.state.share_timeout)
        if error is not None:
            raise error
        failed = [r for r in range(len(every)) if every[r, 0]]
        if failed:
            raise ValueError(f"ScaleCom: rank(s) {failed} could not load their ScaleCom state "
                             "(their own error says why); no rank loaded its state")
        if not (every[:, 1] == every[0, 1]).all():
            raise ValueError("ScaleCom: the ranks loaded states saved at different steps; "
                             "load every rank's state of the same checkpoint")
        self.state.load_state_dict(state_dict)

    def stats(self) -> dict[str, Any]:
        """Figures of each parameter's last exchange and their totals, under the
        keys of ``ScaleCom.stats()``. Bytes follow docs/algorithm.md's byte model: the
        index broadcast plus a ring allreduce of k values (dense parameters:
        a ring allreduce of all their elements)."""
        return last_step(self._last, self.state.watch.stats(), "torch.distributed broadcast")

    def _record(self, part: Part, *lead: Optional[int], **figures: Any) -> None:
        """A part's figures: a new entry when its leader (None: dense) is given."""
        if lead:
            self._last[part.state.name] = new_record(
                part.numel, part.k or None, lead[0], part.step, self.group.size(),
                grad_norm=0.0, clip_scale=1.0, clip_s=0.0)
        self._last[part.state.name].update(figures)


def scalecom_hook(state: ScaleComHookState, bucket: dist.GradBucket,
                  *_other: Any) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket's gradients averaged over the ranks
    by ScaleCom (see the module's docstring). Register it with
    ``ddp_model.register_comm_hook(ScaleComHookState(ddp_model, ...), scalecom_hook)``.
    (``_other`` takes the third argument FSDP's hooks get, so that a hook
    registered on FSDP raises ScaleCom's error naming FSDP, not Python's
    about the number of arguments.)"""
    return state.exchange(bucket)


def _ranks(group: Any) -> list[int]:
    try:
        return dist.get_process_group_ranks(group)
    except Exception:   # noqa: BLE001 - only for the message; not a group at all
        return [f"{group!r}, not a process group"]   # type: ignore[list-item]


def _done(value: Any) -> torch.futures.Future:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(value)
    return future
