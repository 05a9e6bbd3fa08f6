"""How the ring groups gradients (horovod_scalecom.ring_buckets): deterministic,
every tensor exactly once, in the order backward produces them."""

import pytest

from horovod_scalecom.ring_buckets import bucket_by_size, even_groups, explicit_groups, make_groups


def flat(groups):
    return sorted(i for g in groups for i in g)


def test_bucket_by_size_walks_from_the_last_tensor_and_caps_bytes():
    mb = 1_000_000
    sizes = [3 * mb, 10 * mb, 1 * mb, 30 * mb, 2 * mb, 2 * mb]
    groups = bucket_by_size(sizes, cap_mb=5)
    assert groups == [[4, 5], [3], [2], [1], [0]]   # a tensor above the cap is alone
    assert bucket_by_size(sizes, cap_mb=100) == [[0, 1, 2, 3, 4, 5]]
    assert bucket_by_size([], cap_mb=1) == []
    for cap in (0.5, 3, 12, 40):
        groups = bucket_by_size(sizes, cap_mb=cap)
        assert flat(groups) == list(range(len(sizes)))
        assert all(g == sorted(g) for g in groups)
        assert all(len(g) == 1 or sum(sizes[i] for i in g) <= cap * mb for g in groups)
    with pytest.raises(ValueError, match="bucket_cap_mb must be positive"):
        bucket_by_size(sizes, cap_mb=0)


def test_even_groups_like_horovods_num_groups():
    assert even_groups(5, 2) == [[3, 4], [0, 1, 2]]
    assert even_groups(2, 5) == [[1], [0]]
    assert flat(even_groups(161, 7)) == list(range(161))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_groups must be a positive integer"):
            even_groups(4, bad)


def test_explicit_groups_then_the_others_alone():
    assert explicit_groups(5, [[3, 0]]) == [[0, 3], [4], [2], [1]]
    with pytest.raises(ValueError, match="more than one group"):
        explicit_groups(5, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="an empty group"):
        explicit_groups(5, [[]])


def test_make_groups_picks_horovods_argument_or_the_size_cap():
    sizes = [10, 20, 30]
    place = {"a": 0, "b": 1, "c": 2}.__getitem__
    assert make_groups(sizes, None, 1e-5, place) == [[2], [1], [0]]
    assert make_groups(sizes, 2, 25, place) == [[2], [0, 1]]
    assert make_groups(sizes, [["c", "a"]], 25, place) == [[0, 2], [1]]
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        make_groups(sizes, [["z"]], 25, place)
    with pytest.raises(ValueError, match="an int or a list of lists"):
        make_groups(sizes, [3], 25, place)
