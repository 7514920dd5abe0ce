"""Arguments checked where they arrive, before anything is allocated (issue #17, attack 2).

Before #17 `window_sum` and `max_pool2d` took any pool and strides: pool [-10**8, 1] on a 1x4x4x1 share made a
server allocate 6.7 GB, strides [0, 0] raised ZeroDivisionError, and conv2d read its strides and padding
unchecked (KeyError).  The control calls the unchecked gathering itself with a (smaller) hostile pool and
measures what it allocates; the real operations refuse every such argument with a ProtocolError naming it, and
allocate nothing of the size asked for.
"""

import tracemalloc

import numpy as np
import pytest

from tfppml.errors import ProtocolError, QuotaExceeded
from tfppml.mpc.party_ops.local import windows

from .helpers import call, owner_with_mlp


@pytest.fixture(scope="module")
def prot():
    prot = owner_with_mlp()
    prot.image = prot.share(np.ones((1, 4, 4, 1)))
    prot.filters = prot.share(np.ones((2, 2, 1, 1)))
    yield prot
    prot.close()


def _run(prot, op, args, name):
    session = {"session": prot._setup_id}
    return [result for result, _ in call(prot, "driver", op, name, {"out": f"{name}.out", **args}, meta=session)]


def test_control_unchecked_windows_allocate_what_the_caller_asks():
    x = np.ones((1, 4, 4, 1), dtype=np.uint64)
    tracemalloc.start()
    try:
        windows(x, [-10**6, 1], [1, 1])
    except Exception:  # noqa: BLE001 - whatever it ends in, the memory was taken first
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak > 1 << 22, f"the unchecked gather took only {peak} bytes for a 128-byte input"
    with pytest.raises(ZeroDivisionError):
        windows(x, [2, 2], [0, 0])


@pytest.mark.parametrize("op", ["window_sum", "max_pool2d"])
@pytest.mark.parametrize(
    "args, words",
    [
        ({"pool": [-10**8, 1], "strides": [1, 1]}, "'pool' must be two ints in [1, 1024]"),
        ({"pool": [2, 2], "strides": [0, 0]}, "'strides' must be two ints in [1, 1024]"),
        ({"pool": [5, 1], "strides": [1, 1]}, "larger than the input's 4x4"),
        ({"pool": [2, 2]}, "'strides' must be two ints"),
        ({"pool": [2.0, 2], "strides": [1, 1]}, "'pool' must be two ints"),
        ({"pool": [True, 2], "strides": [1, 1]}, "'pool' must be two ints"),
        ({"pool": "22", "strides": [1, 1]}, "'pool' must be two ints"),
    ],
)
def test_pooling_arguments_are_refused_before_allocation(prot, op, args, words):
    tracemalloc.start()
    results = _run(prot, op, {"x": prot.image.id, **args}, f"{op}.{abs(hash(str(args)))}")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for result in results:
        assert isinstance(result, ProtocolError) and words in str(result), result
    assert peak < 1 << 20, f"{peak} bytes allocated for a refused request"


@pytest.mark.parametrize(
    "args, words",
    [
        ({}, "'strides' must be two ints"),
        ({"strides": [1, 1]}, "'padding' must be one of ['SAME', 'VALID']"),
        ({"strides": [1, 1], "padding": "same"}, "'padding' must be one of"),
        ({"strides": [0, 1], "padding": "VALID"}, "'strides' must be two ints in [1, 1024]"),
        ({"strides": [1, 1], "padding": "VALID", "trunc": 99}, "'trunc' must be an int in [0, 62]"),
    ],
)
def test_conv2d_arguments_are_refused(prot, args, words):
    args = {"trunc": 0, **args}
    for result in _run(prot, "conv2d", {"x": prot.image.id, "y": prot.filters.id, **args}, f"conv.{abs(hash(str(args)))}"):
        assert isinstance(result, ProtocolError) and words in str(result), result


def test_conv2d_of_mismatched_shapes_is_refused(prot):
    args = {"x": prot.filters.id, "y": prot.image.id, "strides": [1, 1], "padding": "VALID", "trunc": 0}
    for result in _run(prot, "conv2d", args, "conv.swap"):
        assert isinstance(result, ProtocolError) and "filter" in str(result), result


def test_results_beyond_the_per_request_bound_are_refused_before_allocation(prot):
    parties = prot.backend.parties
    for party in parties:
        party.limits.max_result_bytes = (1 << 16) - 1
    try:
        big = prot.share(np.ones((64, 1)))
        row = prot.share(np.ones((1, 64)))
        tracemalloc.start()
        results = _run(prot, "matmul", {"x": big.id, "y": row.id, "trunc": 16}, "mm.big")  # 64x64x16 B = 64 KiB
        results += _run(prot, "add", {"x": big.id, "y": row.id}, "add.big")  # broadcasts to 64x64
        results += _run(prot, "input_from", {"owner": 0, "shape": [1 << 20]}, "in.big")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        for result in results:
            assert isinstance(result, QuotaExceeded) and "per-request bound" in str(result), result
        assert peak < 1 << 20, "the 16 MiB input_from was refused before its masks were drawn"
    finally:
        for party in parties:
            party.limits.max_result_bytes = 1 << 30


@pytest.mark.parametrize(
    "op, args, words",
    [
        ("reshape", {"shape": [-1, -1]}, "one -1 at most"),
        ("reshape", {"shape": [2**41]}, "must be a list of at most 8 dimensions"),
        ("reshape", {"shape": [3, 5]}, "reshape of [1, 4, 4, 1] to [3, 5] failed"),
        ("transpose", {"perm": [0, 0, 1, 2]}, "not a permutation"),
        ("transpose", {"perm": "0123"}, "not a permutation"),
        ("getitem", {"index": [{"t": "s", "step": 0}]}, "step cannot be zero"),
        ("getitem", {"index": [{"t": "i", "v": 9}]}, "getitem of a tensor of shape [1, 4, 4, 1]"),
        ("getitem", {"index": [{"t": "n"}] * 9}, "at most 8 items"),
        ("sum", {"axis": 7}, "'axis' must be None, an axis or a list of axes of a rank-4 tensor"),
        ("sum", {"axis": [0], "keepdims": "yes"}, "'keepdims' must be a bool"),
        ("concat", {"xs": [], "axis": 0}, "at least one shared tensor"),
        ("concat", {"xs": ["IMAGE", "IMAGE"], "axis": 9}, "'axis' must be an int in [-8, 7]"),
        ("scale_up", {"bits": 63}, "'bits' must be an int in [0, 62]"),
        ("truncate", {"bits": 0}, "'bits' must be an int in [1, 62]"),
        ("argmax", {}, None),
    ],
)
def test_local_and_interactive_arguments_are_refused(prot, op, args, words):
    args = {k: ([prot.image.id if v == "IMAGE" else v for v in val] if isinstance(val, list) and k == "xs" else val)
            for k, val in args.items()}
    results = _run(prot, op, {"x": prot.image.id, **args}, f"{op}.{abs(hash(str(args)))}")
    if words is None:  # argmax of a valid tensor: the control case of this table
        assert not any(isinstance(r, Exception) for r in results), results
        return
    for result in results:
        assert isinstance(result, ProtocolError) and words in str(result), result


def test_ids_and_operation_ids_are_checked(prot):
    session = {"session": prot._setup_id}
    for op_id in ("a/b", "a|b", "$0", "", "x" * 200, 7):
        for result, _ in call(prot, "driver", "add", op_id, {"x": prot.image.id, "y": prot.image.id, "out": "o"}, meta=session):
            assert isinstance(result, ProtocolError) and "operation id" in str(result), result
    for out in ("$0", "a|b", 5, "x" * 300):
        for result, _ in call(prot, "driver", "add", f"out.{abs(hash(str(out)))}", {"x": prot.image.id, "y": prot.image.id, "out": out}, meta=session):
            assert isinstance(result, ProtocolError) and "identifier" in str(result), result
