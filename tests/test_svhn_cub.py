"""SVHN (full numbers and 32x32) and CUB-200-2011 readers, on tiny fixture files written here in
the official layouts: digitStruct.mat as MATLAB v7.3 (HDF5 object references), *_32x32.mat as
MATLAB v5, CUB's four text tables and images/ tree."""
import itertools

import numpy as np
import pytest
import torch

import h5py
import scipy.io as sio
from PIL import Image

from stnkit.data import cub, svhn  # noqa: E402
from stnkit.data.cub import CUB200, CUBFormatError, normalise_box  # noqa: E402
from stnkit.data.svhn import SVHNFormatError, SVHNSequences  # noqa: E402

DARK, BRIGHT = 40, 250


# ---- fixtures: SVHN full numbers --------------------------------------------------------------

def write_digit_struct(path, records):
    """records: [(name, [(left, top, width, height, label), ...]), ...] -> a digitStruct.mat laid out
    like the official one: a MATLAB userblock, then /digitStruct/{name,bbox} as (N, 1) references
    into #refs#; one-digit fields are (1, 1) doubles, several digits (K, 1) references to (1, 1) doubles."""
    fresh = (f"r{i}" for i in itertools.count())
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def put(array):
            return refs.create_dataset(next(fresh), data=array).ref

        names, bboxes = [], []
        for name, digits in records:
            names.append(put(np.array([[ord(c)] for c in name], dtype=np.uint16)))  # (L, 1) char codes
            group = refs.create_group(next(fresh))
            for j, field in enumerate(("left", "top", "width", "height", "label")):
                values = [float(d[j]) for d in digits]
                if len(values) == 1:
                    group.create_dataset(field, data=np.array([[values[0]]]))
                else:
                    group.create_dataset(field, data=np.array([[put(np.array([[v]]))] for v in values], dtype=h5py.ref_dtype))
            bboxes.append(group.ref)
        group = f.create_group("digitStruct")
        group.create_dataset("name", data=np.array(names, dtype=h5py.ref_dtype).reshape(-1, 1))
        group.create_dataset("bbox", data=np.array(bboxes, dtype=h5py.ref_dtype).reshape(-1, 1))
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(116))


def write_png(path, size, digits):
    """A dark (H, W) = size photo with each digit box filled bright."""
    H, W = size
    pixels = np.full((H, W, 3), DARK, dtype=np.uint8)
    for left, top, width, height, _ in digits:
        pixels[max(top, 0): top + height, max(left, 0): left + width] = BRIGHT
    Image.fromarray(pixels).save(path)


# name, (H, W), digits as (left, top, width, height, file label); adjacent boxes so the union is all bright
SVHN_PHOTOS = [
    ("1.png", (50, 80), [(30, 10, 20, 30, 10)]),  # one digit: scalar fields; 10 means 0
    ("2.png", (60, 120), [(20, 15, 25, 30, 1), (45, 15, 25, 30, 9), (70, 15, 25, 30, 10)]),
    ("3.png", (40, 120), [(5 + 18 * k, 5, 18, 30, 1 + k) for k in range(6)]),  # 6 digits: skipped
    ("4.png", (40, 40), [(-3, 22, 15, 20, 5), (12, 22, 15, 20, 2)]),  # sticks out of the photo
]


def make_svhn(root, split="train", photos=SVHN_PHOTOS):
    folder = root / split
    folder.mkdir(parents=True)
    for name, size, digits in photos:
        write_png(folder / name, size, digits)
    write_digit_struct(folder / "digitStruct.mat", [(name, digits) for name, _, digits in photos])
    return folder


# ---- SVHN: digitStruct.mat --------------------------------------------------------------------

def test_read_digit_struct_scalar_and_reference_fields(tmp_path):
    folder = make_svhn(tmp_path)
    records = svhn.read_digit_struct(folder / "digitStruct.mat")
    assert [r.name for r in records] == ["1.png", "2.png", "3.png", "4.png"]
    assert records[0].boxes.tolist() == [[30, 10, 20, 30]]
    assert records[0].labels.dtype == np.int64 and records[0].labels.tolist() == [0]
    assert records[1].boxes.shape == (3, 4) and records[1].boxes[:, 0].tolist() == [20, 45, 70]
    assert records[1].labels.tolist() == [1, 9, 0]
    assert records[2].labels.tolist() == [1, 2, 3, 4, 5, 6]
    assert records[3].boxes[0].tolist() == [-3, 22, 15, 20]


def test_digit_struct_missing_corrupt_or_foreign(tmp_path):
    folder = make_svhn(tmp_path)
    mat = folder / "digitStruct.mat"
    with pytest.raises(FileNotFoundError, match="ufldl.stanford.edu/housenumbers"):
        svhn.read_digit_struct(folder / "nope.mat")
    raw = mat.read_bytes()
    mat.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SVHNFormatError, match="digitStruct.mat.*corrupt"):
        svhn.read_digit_struct(mat)
    mat.write_bytes(b"not a mat file at all" * 50)
    with pytest.raises(ValueError, match="digitStruct.mat"):
        svhn.read_digit_struct(mat)
    with h5py.File(mat, "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(SVHNFormatError, match="no /digitStruct"):
        svhn.read_digit_struct(mat)


def test_digit_struct_bad_labels_and_ragged_fields(tmp_path):
    mat = tmp_path / "digitStruct.mat"
    write_digit_struct(mat, [("1.png", [(1, 1, 5, 5, 11)])])
    with pytest.raises(SVHNFormatError, match=r"image 1 \(1.png\).*1-10"):
        svhn.read_digit_struct(mat)
    write_digit_struct(mat, [("1.png", [(1, 1, 5, 5, 3), (6, 1, 5, 5, 4)])])
    with h5py.File(mat, "r+") as f:
        box = f[f["digitStruct/bbox"][0, 0]]
        del box["label"]
        box["label"] = np.array([[3.0]])  # one label for two boxes
    with pytest.raises(SVHNFormatError, match="lengths"):
        svhn.read_digit_struct(mat)


# ---- SVHN: crops ------------------------------------------------------------------------------

def test_crop_resize_against_slicing_and_edge_padding():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = svhn.crop_resize(image, np.array([10.0, 5.0, 42.0, 37.0]), 32)  # a 32 px box at scale 1
    np.testing.assert_array_equal(out, image[5:37, 10:42])
    out = svhn.crop_resize(image, np.array([-4.0, 0.0, 28.0, 32.0]), 32)  # 4 columns left of the photo
    np.testing.assert_array_equal(out[:, :4], np.repeat(image[:32, :1], 4, axis=1))
    np.testing.assert_array_equal(out[:, 4:], image[:32, :28])


def test_union_and_expanded_box():
    boxes = np.array([[20, 15, 25, 30], [70, 10, 25, 30]], dtype=float)  # (left, top, w, h)
    np.testing.assert_array_equal(svhn.union_box(boxes), [20, 10, 95, 45])
    np.testing.assert_allclose(svhn.expand_box(np.array([20.0, 10, 95, 45]), 1.3),
                               [57.5 - 48.75, 27.5 - 22.75, 57.5 + 48.75, 27.5 + 22.75])


def test_sequences_shapes_labels_and_skip(tmp_path):
    make_svhn(tmp_path)
    ds = SVHNSequences(tmp_path, "train", size=64)
    assert len(ds) == 3 and ds.skipped == 1 and ds.names == ["1.png", "2.png", "4.png"]
    assert ds.images.shape == (3, 3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [
        [0, 10, 10, 10, 10], [1, 9, 0, 10, 10], [5, 2, 10, 10, 10]]
    assert ds.lengths.tolist() == [1, 3, 2]
    image, labels, length = ds[1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and int(length) == 3 and labels.tolist() == [1, 9, 0, 10, 10]


@pytest.mark.parametrize("size, inside, outside", [(64, (10, 54), 5), (128, (36, 92), 28)])
def test_crop_puts_the_digits_in_the_centre(tmp_path, size, inside, outside):
    """The union box spans the central 1/1.3 (64px) or 1/2 (128px) of each axis: bright there, dark beyond."""
    make_svhn(tmp_path)
    ds = SVHNSequences(tmp_path, "train", size=size)
    for i in range(2):  # 1.png and 2.png, well inside their photos
        image = ds.images[i].int()  # (3, S, S)
        a, b = inside
        assert image[:, a:b, a:b].min() > 200
        for border in (image[:, :outside], image[:, -outside:], image[:, :, :outside], image[:, :, -outside:]):
            assert border.max() < 80


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    folder = make_svhn(tmp_path)
    first = SVHNSequences(tmp_path, size=64)
    cache = folder / "stnkit-crops-64px.npz"
    assert cache.is_file() and not list(folder.glob("*.tmp"))

    def boom(path):
        raise AssertionError("digitStruct.mat parsed again")

    monkeypatch.setattr(svhn, "read_digit_struct", boom)
    second = SVHNSequences(tmp_path, size=64)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.names == first.names and second.skipped == 1
    monkeypatch.undo()

    cache.write_bytes(b"damaged")
    assert torch.equal(SVHNSequences(tmp_path, size=64).images, first.images)
    assert np.load(cache)["images"].shape == (3, 3, 64, 64)  # rebuilt


def test_cache_rebuilt_when_digit_struct_changes(tmp_path):
    folder = make_svhn(tmp_path)
    assert len(SVHNSequences(tmp_path)) == 3
    write_digit_struct(folder / "digitStruct.mat", [(n, d) for n, _, d in SVHN_PHOTOS[:2]])
    assert len(SVHNSequences(tmp_path)) == 2


def test_sequences_missing_files_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ufldl.stanford.edu/housenumbers.*train/digitStruct.mat"):
        SVHNSequences(tmp_path, "train")
    folder = make_svhn(tmp_path)
    (folder / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="2.png"):
        SVHNSequences(tmp_path)
    (folder / "2.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(SVHNFormatError, match="2.png"):
        SVHNSequences(tmp_path)
    with pytest.raises(ValueError, match="split"):
        SVHNSequences(tmp_path, "valid")
    with pytest.raises(ValueError, match="64px and 128px"):
        SVHNSequences(tmp_path, size=32)


# ---- SVHN: 32x32 cropped digits ---------------------------------------------------------------

def write_cropped(path, n=4, y=(1, 10, 3, 10)):
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    sio.savemat(path, {"X": x, "y": np.array(y, dtype=np.uint8).reshape(-1, 1)})
    return x


def test_cropped_digits_layout_and_labels(tmp_path):
    x = write_cropped(tmp_path / "test_32x32.mat")
    images, labels = svhn.svhn_cropped(tmp_path, "test")
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 0, 3, 0]
    for n in range(4):
        np.testing.assert_array_equal(images[n].numpy(), x[:, :, :, n].transpose(2, 0, 1))


def test_cropped_digits_bad_files(tmp_path):
    path = tmp_path / "train_32x32.mat"
    with pytest.raises(FileNotFoundError, match="ufldl.stanford.edu/housenumbers"):
        svhn.svhn_cropped(tmp_path, "train")
    write_cropped(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SVHNFormatError, match="train_32x32.mat.*corrupt"):
        svhn.svhn_cropped(tmp_path)
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(SVHNFormatError, match="train_32x32.mat"):
        svhn.svhn_cropped(tmp_path)
    sio.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(SVHNFormatError, match="X and y"):
        svhn.svhn_cropped(tmp_path)
    write_cropped(path, n=4, y=(1, 2, 3))
    with pytest.raises(SVHNFormatError, match="N = 4"):
        svhn.svhn_cropped(tmp_path)


# ---- CUB-200-2011 -----------------------------------------------------------------------------

# id, relpath, class (1-based), is_train, (H, W), box (x, y, w, h), greyscale?
CUB_PHOTOS = [
    (1, "001.Albatross/a_1.jpg", 1, 1, (60, 80), (10, 20, 40, 30), False),
    (2, "001.Albatross/a_2.jpg", 1, 0, (50, 50), (0, 0, 25, 50), False),
    (3, "002.Bunting/b_1.jpg", 2, 1, (90, 70), (35, 45, 30, 40), True),
    (4, "002.Bunting/b_2.jpg", 2, 0, (40, 60), (5, 5, 50, 30), False),
    (5, "003.Cardinal/c_1.jpg", 3, 1, (64, 64), (16, 16, 32, 32), False),
    (6, "003.Cardinal/c_2.jpg", 3, 0, (30, 90), (60, 0, 30, 30), False),
]


def make_cub(root):
    root.mkdir(parents=True, exist_ok=True)
    for _, rel, _, _, (H, W), (x, y, w, h), grey in CUB_PHOTOS:
        pixels = np.full((H, W), DARK, dtype=np.uint8)
        pixels[y: y + h, x: x + w] = BRIGHT
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels) if grey else Image.fromarray(np.stack([pixels] * 3, -1))
        image.save(path.with_suffix(".png"), format="PNG")  # lossless, under the .jpg name below
        path.with_suffix(".png").rename(path)
    lines = {
        "images.txt": [f"{i} {rel}" for i, rel, *_ in CUB_PHOTOS],
        "image_class_labels.txt": [f"{i} {c}" for i, _, c, *_ in CUB_PHOTOS],
        "train_test_split.txt": [f"{i} {t}" for i, _, _, t, *_ in CUB_PHOTOS],
        "bounding_boxes.txt": [f"{p[0]} " + " ".join(f"{v:.1f}" for v in p[5]) for p in CUB_PHOTOS],
    }
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


def test_cub_splits_labels_and_items(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    train, test = CUB200(root, "train", size=32), CUB200(tmp_path, "test", size=32)  # parent folder works too
    assert train.ids == [1, 3, 5] and test.ids == [2, 4, 6]
    assert train.labels.tolist() == [0, 1, 2] and test.labels.dtype == torch.int64
    for ds in (train, test):
        for i in range(len(ds)):
            image, label, box = ds[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            assert 0 <= image.min() and image.max() <= 1 and isinstance(label, int)
            assert box.shape == (4,) and box.dtype == torch.float32


def test_cub_box_is_normalised_and_covers_the_bird(tmp_path):
    ds = CUB200(make_cub(tmp_path), "train", size=64)
    for i, (H, W), (x, y, w, h) in [(0, (60, 80), (10, 20, 40, 30)), (1, (90, 70), (35, 45, 30, 40))]:
        image, _, box = ds[i]
        expected = [2 * x / W - 1, 2 * y / H - 1, 2 * (x + w) / W - 1, 2 * (y + h) / H - 1]
        torch.testing.assert_close(box, torch.tensor(expected), atol=1e-6, rtol=0)
        px = ((box + 1) / 2 * 64).tolist()  # pixel edges in the 64x64 image
        x0, y0, x1, y1 = round(px[0]), round(px[1]), round(px[2]), round(px[3])
        assert image[:, y0 + 2: y1 - 2, x0 + 2: x1 - 2].min() > 0.8
        outside = torch.ones(64, 64, dtype=torch.bool)
        outside[max(y0 - 2, 0): y1 + 2, max(x0 - 2, 0): x1 + 2] = False
        assert image[:, outside].max() < 0.3


def test_normalise_box_edges_and_clamp():
    box = normalise_box(torch.tensor([[0.0, 0.0, 80.0, 60.0], [-10.0, 50.0, 100.0, 20.0]]), (60, 80))
    torch.testing.assert_close(box, torch.tensor([[-1.0, -1.0, 1.0, 1.0], [-1.0, 2 / 3, 1.0, 1.0]]))


def test_cub_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images.txt.*vision.caltech.edu"):
        CUB200(tmp_path)
    root = make_cub(tmp_path)
    (root / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        CUB200(root)
    root = make_cub(tmp_path / "again")
    (root / "images" / CUB_PHOTOS[0][1]).unlink()
    ds = CUB200(root)
    with pytest.raises(FileNotFoundError, match="a_1.jpg"):
        ds[0]


@pytest.mark.parametrize("name, line, bad, match", [
    ("image_class_labels.txt", 3, "3 abc", "image_class_labels.txt:3: expected 'id class'"),
    ("image_class_labels.txt", 2, "2 201", "image_class_labels.txt:2: .*outside 1-200"),
    ("train_test_split.txt", 4, "4 2", "train_test_split.txt:4: .*0 or 1"),
    ("bounding_boxes.txt", 5, "5 1.0 2.0 3.0", "bounding_boxes.txt:5: .*4 fields, expected 5"),
    ("bounding_boxes.txt", 1, "1 1.0 2.0 0.0 4.0", "bounding_boxes.txt:1: .*positive"),
    ("images.txt", 6, "5 003.Cardinal/c_2.jpg", "images.txt:6: image id 5 appears a second time"),
])
def test_cub_bad_lines_name_file_and_line(tmp_path, name, line, bad, match):
    root = make_cub(tmp_path)
    rows = (root / name).read_text().splitlines()
    rows[line - 1] = bad
    (root / name).write_text("\n".join(rows) + "\n")
    with pytest.raises(CUBFormatError, match=match):
        CUB200(root)


def test_cub_id_missing_from_a_table_and_bad_arguments(tmp_path):
    root = make_cub(tmp_path)
    rows = (root / "train_test_split.txt").read_text().splitlines()
    (root / "train_test_split.txt").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(CUBFormatError, match="train_test_split.txt: no line for image id 6"):
        CUB200(root)
    with pytest.raises(ValueError, match="split"):
        CUB200(root, "val")
    with pytest.raises(ValueError, match="size"):
        CUB200(root, size=0)
    assert cub.NUM_CLASSES == 200
