"""IDX reading and writing: round trips, the byte layout, and a clear IDXError for every bad file."""
import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from stnkit.data.idx import IDXError, read_idx, read_idx_pair, write_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _raises(path, fault):
    """pytest.raises for an IDXError whose message names `path` and matches `fault`."""
    return pytest.raises(IDXError, match=re.escape(str(path)) + ".*" + fault)


@pytest.fixture
def pair(tmp_path):
    """A small image/label pair on disk: 6 images (6, 5, 4) uint8 and 6 uint8 labels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    y = rng.integers(0, 10, 6, dtype=np.uint8)
    write_idx(tmp_path / "images-idx3-ubyte", x)
    write_idx(tmp_path / "labels-idx1-ubyte.gz", y)
    return tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte.gz", x, y


# ---------------------------------------------------------------- round trips and layout

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "dtype, shape",
    [(np.uint8, (3, 28, 28)), (np.uint8, (7,)), (np.int8, (2, 3)), (np.int16, (4, 3, 2, 1)),
     (np.int32, (5, 2)), (np.float32, (2, 2, 3)), (np.float64, (6,)), (np.uint8, (0, 28, 28))],
)
def test_round_trip(tmp_path, suffix, dtype, shape):
    rng = np.random.default_rng(1)
    if np.dtype(dtype).kind == "f":
        a = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    assert b.shape == shape
    np.testing.assert_array_equal(a, b)
    b[...] = 0  # the result is a writable copy, not a view of read-only bytes


def test_gz_name_writes_gzip_and_plain_name_writes_raw(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a", a)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == (tmp_path / "a").read_bytes()


def test_byte_layout_matches_the_format(tmp_path):
    """Independent reference: the header and big-endian data written out by hand."""
    path = tmp_path / "a"
    write_idx(path, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    write_idx(path, np.array([1, -2], dtype=np.int16))
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x00, 0x01, 0xFF, 0xFE])
    # a hand-made big-endian float file reads back in native byte order
    path.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + np.array([1.5, -2.0], ">f4").tobytes())
    b = read_idx(path)
    assert b.dtype == np.float32 and b.dtype.isnative
    np.testing.assert_array_equal(b, [1.5, -2.0])


def test_gzip_detected_by_content_not_name(tmp_path):
    a = np.arange(6, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), a)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "plain-name")), a)  # str paths too


def test_read_idx_pair(pair):
    images, labels, x, y = pair
    xi, yi = read_idx_pair(images, labels)
    assert xi.dtype == np.uint8 and xi.shape == (6, 5, 4)
    assert yi.dtype == np.int64 and yi.shape == (6,)
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)


# ---------------------------------------------------------------- bad files

def test_error_is_a_value_error():
    assert issubclass(IDXError, ValueError)


def test_missing_file(tmp_path):
    with _raises(tmp_path / "nope", "no such file"):
        read_idx(tmp_path / "nope")
    with _raises(tmp_path, "no such file"):  # a directory is not a file
        read_idx(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x08"])
def test_too_short_for_header(tmp_path, content):
    path = tmp_path / "short"
    path.write_bytes(content)
    with _raises(path, "too short for an IDX header"):
        read_idx(path)


@pytest.mark.parametrize(
    "magic", [b"\x01\x00\x08\x01", b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"PK\x03\x04"]
)
def test_bad_magic(tmp_path, magic):
    path = tmp_path / "bad"
    path.write_bytes(magic + b"\x00\x00\x00\x01" + b"\x00" * 8)
    with _raises(path, "bad magic number " + magic.hex()):
        read_idx(path)


def test_header_shorter_than_promised(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0]))  # 3 dims promised, 1.5 given
    with _raises(path, "header promises 3 dimensions but the file ends at byte 10"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data(tmp_path, suffix):
    good = tmp_path / "good"
    write_idx(good, np.zeros((4, 3, 3), np.uint8))
    path = tmp_path / f"cut{suffix}"
    body = good.read_bytes()[:-5]
    path.write_bytes(gzip.compress(body) if suffix else body)
    with _raises(path, r"truncated: shape \(4, 3, 3\) of uint8 needs 36 data bytes, found 31"):
        read_idx(path)


def test_truncated_wide_dtype(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.zeros(3, np.float64))
    path = tmp_path / "cut"
    path.write_bytes(good.read_bytes()[:-1])
    with _raises(path, "truncated.*needs 24 data bytes, found 23"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_trailing_bytes(tmp_path, suffix):
    good = tmp_path / "good"
    write_idx(good, np.zeros((2, 3), np.uint8))
    path = tmp_path / f"long{suffix}"
    body = good.read_bytes() + b"\x00\x00"
    path.write_bytes(gzip.compress(body) if suffix else body)
    with _raises(path, "has trailing bytes: .*needs 6 data bytes, found 8"):
        read_idx(path)


def _gz_fixture(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "images.gz"
    write_idx(path, rng.integers(0, 8, (20, 28, 28), dtype=np.uint8))  # compresses, but not to nothing
    return path, path.read_bytes()


@pytest.mark.parametrize("start", [0.3, 0.5, 0.7])
def test_corrupt_gzip(tmp_path, start):
    path, raw = _gz_fixture(tmp_path)
    i = int(len(raw) * start)
    path.write_bytes(raw[:i] + bytes(b ^ 0xFF for b in raw[i:i + 16]) + raw[i + 16:])
    with _raises(path, "corrupt or truncated gzip data"):
        read_idx(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, -4, -1])
def test_truncated_gzip(tmp_path, keep):
    path, raw = _gz_fixture(tmp_path)
    n = keep if isinstance(keep, int) else int(len(raw) * keep)
    path.write_bytes(raw[:n])
    with _raises(path, "corrupt or truncated gzip data"):
        read_idx(path)


def test_gzip_header_only(tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(b"\x1f\x8b")
    with _raises(path, "corrupt or truncated gzip data"):
        read_idx(path)


def test_pair_count_mismatch(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 2, 2), np.uint8))
    write_idx(tmp_path / "y", np.zeros(4, np.uint8))
    with pytest.raises(IDXError, match=re.escape(f"{tmp_path / 'x'} has 5 images but {tmp_path / 'y'} has 4 labels")):
        read_idx_pair(tmp_path / "x", tmp_path / "y")


@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 3, 1), (9,)])
def test_pair_images_wrong_ndim(tmp_path, shape):
    write_idx(tmp_path / "x", np.zeros(shape, np.uint8))
    write_idx(tmp_path / "y", np.zeros(shape[0], np.uint8))
    with _raises(tmp_path / "x", r"expected uint8 images \(N, H, W\), got uint8 " + re.escape(str(shape))):
        read_idx_pair(tmp_path / "x", tmp_path / "y")


def test_pair_images_wrong_dtype(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 3, 3), np.float32))
    write_idx(tmp_path / "y", np.zeros(2, np.uint8))
    with _raises(tmp_path / "x", "expected uint8 images.*got float32"):
        read_idx_pair(tmp_path / "x", tmp_path / "y")


def test_pair_labels_wrong_ndim(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 3, 3), np.uint8))
    write_idx(tmp_path / "y", np.zeros((2, 1), np.uint8))
    with _raises(tmp_path / "y", r"expected labels \(N,\), got shape \(2, 1\)"):
        read_idx_pair(tmp_path / "x", tmp_path / "y")


def test_pair_bad_file_is_named(tmp_path, pair):
    images, labels, _, _ = pair
    labels.write_bytes(labels.read_bytes()[:-3])
    with _raises(labels, "corrupt or truncated gzip"):
        read_idx_pair(images, labels)
    with _raises(tmp_path / "missing", "no such file"):
        read_idx_pair(tmp_path / "missing", images)


# ---------------------------------------------------------------- real data, where installed

@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_set():
    x, y = read_idx_pair(FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    assert x.max() == 255 and 40 < x.mean() < 100  # Fashion-MNIST's mean intensity is about 73
