"""The paper's datasets over real digits: shapes, ranges, labels, determinism, epochs, boxes."""
import math

import pytest
import torch

from stnkit.data import Digits, make_dataset, names
from stnkit.data.tasks import NO_DIGIT, Sequences, Volumes3D, rotation3d

SHAPES = {
    "r": (1, 28, 28), "rts": (1, 42, 42), "p": (1, 28, 28), "e": (1, 28, 28), "tc": (1, 60, 60),
    "addition": (2, 42, 42), "coloc": (1, 84, 84), "coloc-clutter": (1, 84, 84),
    "3d": (1, 60, 60, 60), "seq64": (1, 64, 64), "seq128": (1, 128, 128),
}


@pytest.fixture(scope="module")
def digits():
    """A small fake digit set: class c is a bar whose length depends on c (nonzero ink)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 10
    images = torch.zeros(40, 28, 28, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 6:22, 10 + c % 3: 14 + c % 3] = 200 + int(torch.randint(0, 55, (1,), generator=g))
        images[i, 6:6 + c + 1, 8:20] = 255
    return Digits(images, labels)


def test_every_dataset_is_listed():
    from stnkit.data.files import FILES

    assert set(names()) == set(SHAPES) | set(FILES)


@pytest.mark.parametrize("name", list(SHAPES))
def test_shapes_ranges_and_determinism(name, digits):
    ds = make_dataset(name, "test", digits=digits, seed=3)
    a = next(ds.batches(8))
    b = next(make_dataset(name, "test", digits=digits, seed=3).batches(8))
    c = next(make_dataset(name, "test", digits=digits, seed=4).batches(8))
    assert a.x.shape == (8, *SHAPES[name]) and a.x.dtype == torch.float32
    assert a.x.min() >= 0 and a.x.max() <= 1 + 1e-6 and a.x.max() > 0.5
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert torch.isfinite(a.x).all()


def test_training_epochs_draw_fresh_distortions_unless_fixed(digits):
    ds = make_dataset("rts", "train", digits=digits)
    e0, e1 = next(ds.batches(40, epoch=0)), next(ds.batches(40, epoch=1))
    assert not torch.equal(e0.x, e1.x)
    fixed = make_dataset("rts", "train", digits=digits, fixed=True)
    assert torch.equal(next(fixed.batches(40, epoch=0)).x, next(fixed.batches(40, epoch=5)).x)
    test = make_dataset("rts", "test", digits=digits)
    assert torch.equal(next(test.batches(40, epoch=0)).x, next(test.batches(40, epoch=7)).x)


def test_each_digit_once_per_epoch(digits):
    ds = make_dataset("r", "train", digits=digits)
    ys = torch.cat([b.y for b in ds.batches(7)])
    assert len(ys) == 40 and torch.equal(ys.sort().values, digits.labels.sort().values)
    assert sum(len(b.y) for b in ds.batches(7, drop_last=True)) == 35


def test_addition_label_is_the_sum(digits):
    ds = make_dataset("addition", "test", digits=digits)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(40)
    params = ds.task.make_params(g, 40, len(ds.pool))
    x, y = ds.task.apply(ds.pool[idx][:, None], digits.labels[idx], params, ds.pool, digits.labels)
    assert torch.equal(y, digits.labels + digits.labels[params["partner"]])
    assert y.max() <= 18 and ds.num_classes == 19
    assert x[:, 0].sum() > 0 and x[:, 1].sum() > 0


def test_coloc_box_contains_all_digit_ink(digits):
    ds = make_dataset("coloc", "test", digits=digits)
    b = ds.sample(30)
    for img, box in zip(b.x[:, 0], b.box):
        x0, y0, x1, y1 = box.tolist()
        assert 0 <= x0 < x1 <= 84 and 0 <= y0 < y1 <= 84
        inside = img[y0:y1, x0:x1].sum()
        assert float(inside) == pytest.approx(float(img.sum()), rel=1e-6)  # no clutter: all ink
        assert (x1 - x0, y1 - y0) == (28, 28)  # the digit's frame


def test_coloc_clutter_keeps_the_digit_box_and_single_class(digits):
    ds = make_dataset("coloc-clutter", "train", digits=digits, digit_class=3)
    assert len(ds) == 4
    b = next(ds.batches(4))
    assert (b.y == 3).all()
    plain = make_dataset("coloc", "train", digits=digits, digit_class=3)
    assert b.x.sum() > next(plain.batches(4)).x.sum()  # the 16 patches add ink
    with pytest.raises(ValueError, match="digit_class"):
        make_dataset("coloc", "train", digits=digits, digit_class=11)


def test_rotation3d_is_a_rotation():
    R = rotation3d(torch.tensor([0.3]), torch.tensor([-0.2]), torch.tensor([1.0]))[0]
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    assert float(torch.linalg.det(R)) == pytest.approx(1.0, abs=1e-6)
    Rz = rotation3d(torch.zeros(1), torch.zeros(1), torch.tensor([math.pi / 2]))[0]
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6, rtol=0)


def test_3d_identity_pose_reproduces_the_extruded_digit():
    v = Volumes3D(canvas=28)
    x = torch.rand(2, 1, 28, 28)
    zero = {k: torch.zeros(2) for k in ("ax", "ay", "az")} | {"scale": torch.ones(2), "centre": torch.zeros(2, 3)}
    out, _ = v.apply(x, torch.zeros(2), zero)
    torch.testing.assert_close(out, v.extrude(x), atol=1e-5, rtol=0)
    assert torch.equal(v.extrude(x)[:, :, 14], x) and v.extrude(x)[:, :, 0].sum() == 0
    p = Volumes3D().make_params(torch.Generator().manual_seed(0), 2000)
    assert p["az"].abs().max() <= math.radians(45) and p["ax"].abs().max() <= math.radians(30)


def test_sequences_labels_and_padding(digits):
    for name in ("seq64", "seq128"):
        ds = make_dataset(name, "test", digits=digits)
        b = ds.sample(200)
        assert b.y.shape == (200, 5)
        lengths = (b.y != NO_DIGIT).sum(1)
        assert lengths.min() == 1 and lengths.max() == 5
        for row, n in zip(b.y, lengths):  # digits first, then padding
            assert (row[:n] < 10).all() and (row[n:] == NO_DIGIT).all()
    one = Sequences(canvas=64)
    p = one.make_params(torch.Generator().manual_seed(1), 50, 40)
    p["length"][:] = 1
    x, y = one.apply(None, None, p, digits.images.float() / 255, digits.labels)
    assert (y[:, 1:] == NO_DIGIT).all() and torch.equal(y[:, 0], digits.labels[p["digits"][:, 0]])


def test_real_bundled_digits_flow_through():
    ds = make_dataset("rts", "test")
    assert len(ds) == 1000
    b = next(ds.batches(16))
    assert b.x.shape == (16, 1, 42, 42) and b.y.max() <= 9
