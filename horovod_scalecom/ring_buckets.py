"""Groups of gradients that the ring exchanges together (framework-free).

The ScaleCom ring starts a group's exchange as soon as backward has produced
every gradient in it, and runs the groups one after the other, in the same
order on every rank. Groups are therefore formed from what every rank knows
alike (the parameters' registration order and sizes, never the order in which
gradients happen to arrive), and in the order backward usually produces them:
the last registered parameters first, as DDP's buckets and Horovod's fusion
do. Grouping changes when bytes travel, never the numbers: each tensor's
chunks, selection and arithmetic are its own.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

#: Default group size: DDP's bucket_cap_mb. Large enough that a group's fixed
#: cost (one agreement allreduce and 2 (n - 1) message latencies) is small
#: against its bytes, small enough that the first group starts early in
#: backward.
DEFAULT_BUCKET_CAP_MB = 25.0


def bucket_by_size(nbytes: Sequence[int], cap_mb: float = DEFAULT_BUCKET_CAP_MB) -> list[list[int]]:
    """Indices 0..len(nbytes)-1 (registration order) cut into groups of at most
    ``cap_mb`` megabytes each (a larger tensor is a group of its own), walking
    from the last registered tensor to the first. Each group lists its indices
    in registration order, the order of the tensors in its fused message."""
    if not cap_mb > 0:
        raise ValueError(f"bucket_cap_mb must be positive, got {cap_mb!r}")
    cap = cap_mb * 1e6
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in reversed(range(len(nbytes))):
        if current and size + nbytes[i] > cap:
            groups.append(sorted(current))
            current, size = [], 0
        current.append(i)
        size += nbytes[i]
    if current:
        groups.append(sorted(current))
    return groups


def explicit_groups(count: int, groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Horovod's ``groups=[[p, ...], ...]`` as indices: each listed group as
    given (in registration order), then every other tensor alone, last
    registered first. A tensor may be in one group only."""
    seen: set[int] = set()
    out: list[list[int]] = []
    for group in groups:
        members = sorted(set(group))
        if not members:
            raise ValueError("groups: an empty group")
        twice = seen.intersection(members)
        if twice:
            raise ValueError(f"groups: a parameter is in more than one group (index {min(twice)})")
        seen.update(members)
        out.append(members)
    out += [[i] for i in reversed(range(count)) if i not in seen]
    return out


def even_groups(count: int, num_groups: int) -> list[list[int]]:
    """Horovod's ``num_groups=N``: N groups of consecutive tensors, as equal in
    count as possible (numpy.array_split), the last registered group first."""
    if not (isinstance(num_groups, int) and num_groups > 0):
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    num_groups = min(num_groups, max(count, 1))
    base, extra = divmod(count, num_groups)
    out, start = [], 0
    for g in range(num_groups):
        stop = start + base + (1 if g < extra else 0)
        if stop > start:
            out.append(list(range(start, stop)))
        start = stop
    return out[::-1]


def make_groups(nbytes: Sequence[int], groups: int | Sequence[Sequence[Any]] | None,
                cap_mb: float, index_of: Callable[[Any], int]) -> list[list[int]]:
    """The groups of tensors 0..len(nbytes)-1 (registration order): Horovod's
    ``groups`` (an int: even_groups; lists of members, mapped to indices by
    ``index_of``, which raises KeyError for a stranger: explicit_groups), or
    by default bucket_by_size with ``cap_mb``."""
    if groups is None:
        return bucket_by_size(nbytes, cap_mb)
    if isinstance(groups, int):
        return even_groups(len(nbytes), groups)
    try:
        members = [[index_of(m) for m in group] for group in groups]
    except KeyError:
        raise ValueError("groups: a listed parameter is not one of the optimizer's "
                         "parameters that require a gradient") from None
    except TypeError:
        raise ValueError("groups must be an int or a list of lists of parameters") from None
    return explicit_groups(len(nbytes), members)
