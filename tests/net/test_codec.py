"""The wire format: round trips for every allowed dtype and shape, strict refusal of anything malformed (fuzzed)."""

import json
import random
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfppml.errors import ProtocolError
from tfppml.net.codec import ALLOWED_DTYPES, decode_message, encode_message

LIMIT = 1 << 24
EXAMPLE_SHAPES = [(), (0,), (1,), (5,), (3, 4), (2, 0, 3), (2, 3, 4, 5)]


def _example(dtype: str, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(size=shape).astype(dtype)


@pytest.mark.parametrize("shape", EXAMPLE_SHAPES)
@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
def test_round_trip_every_dtype_and_shape(dtype, shape):
    array = _example(dtype, shape)
    meta, tensors = decode_message(encode_message({"k": 1}, {"t": array}), max_bytes=LIMIT)
    assert meta == {"k": 1}
    out = tensors["t"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable and out.flags.c_contiguous


def test_round_trip_keeps_order_meta_types_and_edge_values():
    meta = {
        "s": "ünï",
        "i": -(2**63),
        "big": 2**64 - 1,
        "f": 1.5e-300,
        "b": True,
        "n": None,
        "l": [1, [2, {"x": []}]],
    }
    tensors = {
        "u": np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64),
        "nan": np.array([np.nan, np.inf, -np.inf, -0.0]),
        "strided": np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">i8"),
    }
    got_meta, got = decode_message(encode_message(meta, tensors), max_bytes=LIMIT)
    assert got_meta == meta
    assert list(got) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(got[name], array)
    assert got["big_endian"].dtype == np.int64


def test_tuples_in_meta_come_back_as_lists():
    meta, _ = decode_message(encode_message({"shape": (2, 3)}), max_bytes=LIMIT)
    assert meta == {"shape": [2, 3]}


def test_views_without_copy_are_read_only_and_share_the_buffer():
    data = encode_message({}, {"x": np.arange(4, dtype=np.uint64)})
    _, tensors = decode_message(data, max_bytes=LIMIT, copy=False)
    assert not tensors["x"].flags.writeable
    np.testing.assert_array_equal(tensors["x"], np.arange(4))


@pytest.mark.parametrize("tag", ["t", "tag/12", "a-much-longer-tag/with/parts/7"])
def test_the_first_tensor_is_aligned_so_copy_false_does_not_copy(tag):
    data = encode_message({"tag": tag}, {"value": np.arange(5, dtype=np.uint64)})
    meta, tensors = decode_message(data, max_bytes=LIMIT, copy=False)
    assert meta == {"tag": tag}  # the padding is JSON whitespace
    view = tensors["value"]
    assert view.flags.aligned and np.shares_memory(view, np.frombuffer(data, dtype=np.uint8))


def test_an_unaligned_tensor_is_copied_even_without_copy():
    # The second tensor starts 1 byte after the first one's single uint8: its uint64 data is unaligned.
    data = encode_message({}, {"a": np.zeros(1, np.uint8), "b": np.arange(3, dtype=np.uint64)})
    _, tensors = decode_message(data, max_bytes=LIMIT, copy=False)
    assert tensors["b"].flags.aligned and tensors["b"].flags.owndata
    np.testing.assert_array_equal(tensors["b"], np.arange(3))


def test_large_tensor_costs_only_its_bytes():
    array = np.zeros(1 << 20, dtype=np.uint64)
    data = encode_message({"tag": "m"}, {"value": array})
    assert len(data) - array.nbytes < 64


@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.sampled_from(ALLOWED_DTYPES).flatmap(
            lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
        ),
        max_size=4,
    ),
    meta=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=10,
    ),
)
def test_round_trip_property(arrays, meta):
    got_meta, got = decode_message(encode_message({"m": meta}, arrays), max_bytes=LIMIT)
    assert got_meta == {"m": meta}
    assert list(got) == list(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


# -- encoding refuses what it cannot carry exactly


@pytest.mark.parametrize(
    "meta,error,match",
    [
        ({"x": np.int64(3)}, TypeError, r"`meta\['x'\]` has type int64"),
        ({"x": {1: 2}}, TypeError, "keys must be str"),
        ({"x": float("nan")}, ValueError, "finite"),
        ({"x": b"bytes"}, TypeError, "has type bytes"),
        ([1, 2], TypeError, "`meta` must be a dict"),
    ],
)
def test_encode_rejects_bad_meta(meta, error, match):
    with pytest.raises(error, match=match):
        encode_message(meta)


@pytest.mark.parametrize(
    "tensors,error,match",
    [
        ({"x": [1, 2]}, TypeError, "must be a numpy.ndarray"),
        ({"x": np.zeros(2, np.float16)}, TypeError, "dtype float16"),
        ({"x": np.array(["a"])}, TypeError, "dtype str"),
        ({"x": np.zeros(2, object)}, TypeError, "dtype object"),
        ({"": np.zeros(2)}, ValueError, "non-empty"),
        ({"n" * 300: np.zeros(2)}, ValueError, "longer than"),
    ],
)
def test_encode_rejects_bad_tensors(tensors, error, match):
    with pytest.raises(error, match=match):
        encode_message({}, tensors)


def test_encode_refuses_oversize():
    with pytest.raises(ValueError, match="max_bytes=1000"):
        encode_message({}, {"x": np.zeros(200, np.uint64)}, max_bytes=1000)


# -- decoding is strict


def _msg(meta_bytes=b"{}", tensors=(), *, magic=b"TFPM", version=1, flags=0, count=None):
    out = struct.pack(
        "<4sBBHI", magic, version, flags, len(tensors) if count is None else count, len(meta_bytes)
    )
    out += meta_bytes
    for name, code, shape, nbytes, data in tensors:
        out += struct.pack("<H", len(name)) + name + struct.pack("<BB", code, len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<Q", nbytes) + data
    return out


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "truncated"),
        (_msg(magic=b"HTTP"), "bad magic"),
        (_msg(version=2), "version 2"),
        (_msg(flags=1), "flags"),
        (_msg(count=5000), "more than the limit"),
        (_msg(b"[1]"), "must be a JSON object"),
        (_msg(b"{"), "not valid JSON"),
        (_msg(b'{"a": NaN}'), "non-finite"),
        (_msg(b'{"a": Infinity}'), "non-finite"),
        (_msg(b"\xff\xfe"), "not valid UTF-8"),
        (_msg(b"[" * 100000 + b"]" * 100000), "nested too deeply|not valid JSON"),
        (_msg(b'{"a": ' + b"9" * 5000 + b"}"), "not valid JSON"),
        (_msg(tensors=[(b"x", 99, (1,), 8, b"\0" * 8)]), "unknown dtype code 99"),
        (_msg(tensors=[(b"x", 1, (2,), 8, b"\0" * 8)]), "does not match"),
        (_msg(tensors=[(b"x", 1, (1,), 16, b"\0" * 16)]), "does not match"),
        (_msg(tensors=[(b"x", 1, (2**62, 2**62), 0, b"")]), "more than the whole message"),
        (_msg(tensors=[(b"x", 1, (1,) * 40, 8, b"\0" * 8)]), "40 dimensions"),
        (_msg(tensors=[(b"x", 1, (2,), 16, b"\0" * 8)]), "truncated"),
        (_msg(tensors=[(b"", 1, (1,), 8, b"\0" * 8)]), "name length 0"),
        (_msg(tensors=[(b"\xff", 1, (1,), 8, b"\0" * 8)]), "not valid UTF-8"),
        (_msg(tensors=[(b"x", 1, (1,), 8, b"\0" * 8)] * 2), "appears twice"),
        (_msg(tensors=[(b"x", 7, (2,), 2, b"\x01\x02")]), "bool data"),
        (_msg() + b"junk", "trailing bytes"),
        (_msg(count=1), "truncated"),
    ],
)
def test_decode_rejects_malformed(data, match):
    with pytest.raises(ProtocolError, match=match):
        decode_message(data, max_bytes=LIMIT)


def test_decode_accepts_zero_size_with_huge_other_dimension_or_refuses_clearly():
    data = _msg(tensors=[(b"x", 1, (0, 2**62), 0, b"")])
    try:
        _, tensors = decode_message(data, max_bytes=LIMIT)
    except ProtocolError as err:
        assert "not representable" in str(err)
    else:
        assert tensors["x"].size == 0


def test_decode_refuses_oversize_before_parsing():
    data = encode_message({}, {"x": np.zeros(1000, np.uint64)})
    with pytest.raises(ProtocolError, match=f"message of {len(data)} bytes exceeds the limit of 1000 bytes"):
        decode_message(data, max_bytes=1000)


def test_decode_rejects_non_bytes():
    with pytest.raises(TypeError, match="`data` must be bytes"):
        decode_message("text", max_bytes=LIMIT)


# -- fuzzing: truncations and bit flips of valid messages only ever raise ProtocolError


def _sample_messages():
    return [
        encode_message(
            {"tag": "mul/1", "shape": [2, 3]}, {"value": np.arange(6, dtype=np.uint64).reshape(2, 3)}
        ),
        encode_message(
            {},
            {
                "a": np.array([True, False]),
                "b": np.zeros((0, 2), np.float32),
                "c": np.array(7, dtype=np.int32),
            },
        ),
        encode_message({"nested": {"x": [1, 2.5, None, "s"]}}),
    ]


def _decode_or_protocol_error(data):
    try:
        meta, tensors = decode_message(data, max_bytes=LIMIT)
    except ProtocolError as err:
        assert str(err)
        return None
    assert isinstance(meta, dict)
    for array in tensors.values():
        assert array.dtype.name in ALLOWED_DTYPES
        assert array.nbytes <= len(data)
    return meta, tensors


def test_every_truncation_is_refused():
    for data in _sample_messages():
        for cut in range(len(data)):
            with pytest.raises(ProtocolError):
                decode_message(data[:cut], max_bytes=LIMIT)


def test_random_bit_flips_never_crash():
    rng = random.Random(1234)
    messages = _sample_messages()
    deadline = time.monotonic() + 3.0  # bounded: the shared machine has 2 cores
    rounds = 0
    while time.monotonic() < deadline:
        data = bytearray(rng.choice(messages))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)] + bytes(rng.randrange(8))
        _decode_or_protocol_error(bytes(data))
        rounds += 1
    assert rounds > 100


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    _decode_or_protocol_error(data)


@settings(max_examples=200)
@given(st.data())
def test_header_fields_fuzzed_never_crash(data):
    count = data.draw(st.integers(0, 3))
    tensors = [
        (
            data.draw(st.binary(max_size=4)),
            data.draw(st.integers(0, 255)),
            tuple(data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=4))),
            data.draw(st.integers(0, 2**64 - 1)),
            data.draw(st.binary(max_size=32)),
        )
        for _ in range(count)
    ]
    meta = data.draw(st.sampled_from([b"{}", b'{"a":1}', json.dumps({"x": [1, 2]}).encode()]))
    _decode_or_protocol_error(_msg(meta, tensors, count=data.draw(st.integers(0, 5))))
