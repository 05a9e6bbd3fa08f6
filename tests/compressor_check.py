"""Compressor outputs from an mpirun job against the NumPy reference (both frontends)."""

import numpy as np

from horovod_scalecom.reference import HorovodPathSimulator
from workers.common import SHAPES, gradient

F32 = np.float32
NAMES = [n.replace(".", "_") for n in SHAPES]


def clipped(g, max_norm):
    """What clip_before_exchange does to one gradient (up to float rounding)."""
    norm = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    return (g * F32(min(1.0, max_norm / (norm + 1e-6)))).astype(F32)


def reference(n, steps, cfg, seed=0, bpps=1, skip_param=None, cast=None, inject=False,
              clip=None):
    """Outputs and memories the spec gives for the worker's gradient sequence."""
    sim = HorovodPathSimulator(n, cfg)
    for name, shape in zip(NAMES, SHAPES.values()):
        sim.register(name, int(np.prod(shape)))
    outputs = []
    for step in range(steps):
        outputs.append({})
        for i, (name, shape) in enumerate(zip(NAMES, SHAPES.values())):
            grads = []
            for r in range(n):
                g = np.zeros(shape, F32)
                for micro in range(bpps):
                    part = gradient(seed, r, step * bpps + micro, i, shape, inject)
                    if skip_param == i and step % 2 == 1:
                        part = np.zeros(shape, F32)     # zero_grad() left zeros behind
                    if clip:
                        part = clipped(part, clip)
                    g = g + (cast(part) if cast else part)
                grads.append(g)
            outputs[-1][name] = sim.step(name, grads).outputs[0]
    return outputs, sim


def assert_exchange(out, ref, exact, what):
    """An exchange's result against the reference's: the same support, and the
    same bits (``exact``) or the same values up to float32 rounding."""
    np.testing.assert_array_equal(out != 0, ref != 0, err_msg=f"support of {what}")
    if exact:
        np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32), err_msg=what)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6, err_msg=what)


def check(job, n, steps, cfg, exact, memory_exact=True, **kw):
    """Every rank's outputs against the reference, then every rank's state:
    each tensor's step count, and the memory of each compressed tensor. A
    key the worker did not write fails the check, so a worker that stops
    reporting cannot pass it."""
    expected, sim = reference(n, steps, cfg, **kw)
    results = [job.result(r) for r in range(n)]
    for step in range(steps):
        for name in NAMES:
            ref = expected[step][name].reshape(-1)
            outs = [res[f"out/{step}/{name}"].reshape(-1) for res in results]
            for r in range(1, n):
                np.testing.assert_array_equal(outs[r], outs[0], err_msg=f"rank {r} != rank 0")
            assert_exchange(outs[0], ref, exact, f"{name} at step {step}")
    for r, res in enumerate(results):
        for name in NAMES:
            if sim.tensors[name].numel < cfg.min_numel:
                # Dense: no memory to hold (TensorFlow keeps no state for it).
                assert not np.any(res.get(f"mem/{name}", 0)), f"memory of dense {name}"
                assert int(res.get(f"step/{name}", steps)) == steps, (r, name)
                continue
            for key in (f"step/{name}", f"mem/{name}"):
                assert key in res, f"rank {r} did not report {key}"
            assert int(res[f"step/{name}"]) == steps, (r, name)
            if memory_exact:
                np.testing.assert_array_equal(res[f"mem/{name}"].view(np.uint32),
                                              sim.memory(name, r).view(np.uint32),
                                              err_msg=f"memory of {name} on rank {r}")
            else:
                np.testing.assert_allclose(res[f"mem/{name}"], sim.memory(name, r),
                                           rtol=1e-5, atol=1e-6,
                                           err_msg=f"memory of {name} on rank {r}")
    return results
