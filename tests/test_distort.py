"""Distortions: parameters within the documented ranges, determinism, and geometry checked
against independent computations."""
import math

import pytest
import torch

import stnkit
from stnkit.data.distort import (
    CORNERS, DISTORTIONS, Elastic, Perspective, RotateScaleTranslate, TranslateClutter, convex, crop,
    homography_from_points, paste, placement, rotation2d,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blob_digits(n=6, size=28):
    """Digits that are a single bright 4x4 square at the centre: easy to track."""
    x = torch.zeros(n, 1, size, size)
    x[..., 12:16, 12:16] = 1.0
    return x


@pytest.mark.parametrize("name", ["r", "rts", "p", "e"])
def test_deterministic_for_a_seed_and_different_across_seeds(name):
    d = DISTORTIONS[name]
    x = (blob_digits(8) + torch.rand(8, 1, 28, 28) * 0.1).clamp(max=1)
    a = d.apply(x, d.make_params(gen(1), 8))
    b = d.apply(x, d.make_params(gen(1), 8))
    c = d.apply(x, d.make_params(gen(2), 8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (8, 1, *d.out_size) and a.min() >= 0 and a.max() <= 1 + 1e-6


def test_rts_ranges():
    d = DISTORTIONS["rts"]
    p = d.make_params(gen(), 5000)
    assert p["angle"].abs().max() <= math.radians(45) and p["angle"].abs().max() > math.radians(44)
    assert p["scale"].min() >= 0.7 and p["scale"].max() <= 1.2
    room = (42 - 28 * p["scale"]) / 2
    assert (p["centre"].abs() <= room[:, None] + 1e-6).all()
    assert d.out_size == (42, 42)


def test_r_ranges():
    p = DISTORTIONS["r"].make_params(gen(), 5000)
    assert p["angle"].abs().max() <= math.pi / 2 and p["angle"].abs().max() > math.radians(89)
    assert torch.all(p["scale"] == 1) and torch.all(p["centre"] == 0)


def test_placement_puts_the_digit_centre_where_asked():
    # Independent check in pixels: the centre of the digit (input normalised 0) must be sampled
    # by the output pixel at canvas centre + offset.
    theta = placement(rotation2d(torch.tensor([0.3])), 28 * torch.tensor([0.8]), torch.tensor([[5.0, -3.0]]), canvas=42)
    target_px = torch.tensor([[[21.0 + 5.0, 21.0 - 3.0]]])  # in edge coordinates (0..42)
    target = target_px / 21.0 - 1.0
    src = stnkit.warp_points(target, theta, "affine")
    torch.testing.assert_close(src, torch.zeros(1, 1, 2), atol=1e-5, rtol=0)
    # scale: 0.8 means one input unit (14 px) spans 11.2 output px
    unit = stnkit.warp_points(target + torch.tensor([11.2 / 21.0, 0]), theta, "affine")
    assert abs(float(unit.norm()) - 1.0) < 1e-4


def test_rts_moves_the_blob_inside_the_canvas():
    d = DISTORTIONS["rts"]
    x = blob_digits(200)
    out = d.apply(x, d.make_params(gen(), 200))
    mass = out.sum((1, 2, 3))
    # the 16-pixel blob is scaled by 0.7..1.2: area 16 * s^2, nothing lost off the canvas
    s = d.make_params(gen(), 200)["scale"]
    torch.testing.assert_close(mass, 16 * s**2, rtol=0.05, atol=0.3)


def test_homography_maps_the_four_points():
    g = gen()
    dst = CORNERS * 0.8 + torch.randn(10, 4, 2, generator=g) * 0.1
    h = homography_from_points(dst, CORNERS.expand(10, 4, 2))
    torch.testing.assert_close(stnkit.warp_points(dst, h, "projective"), CORNERS.expand(10, 4, 2), atol=1e-4, rtol=0)


def test_perspective_ranges_and_convexity():
    d = Perspective()
    p = d.make_params(gen(), 3000)
    assert p["scale"].min() >= 0.75 and p["scale"].max() <= 1.0
    assert abs(float(p["corner_noise"].std()) - 5.0) < 0.3
    assert convex(d.corners(p["scale"], p["corner_noise"])).all()
    fold = torch.tensor([[[-1.0, -1], [1, 1], [1, -1], [-1, 1]]])
    assert not convex(fold).any()


def test_elastic_control_points():
    d = Elastic()
    p = d.make_params(gen(), 4000)
    assert p["scale"].min() >= 0.75 and p["scale"].max() <= 1.0
    assert abs(float(p["point_noise"].std()) - 1.5) < 0.1
    zero = {"scale": torch.ones(1), "point_noise": torch.zeros(1, 16, 2)}
    x = torch.rand(1, 1, 28, 28)
    torch.testing.assert_close(d.apply(x, zero), x, atol=1e-5, rtol=0)  # no noise, scale 1: identity


def test_crop_and_paste_match_slicing():
    imgs = torch.rand(5, 28, 28)
    which, top, left = torch.tensor([4, 0, 2]), torch.tensor([0, 22, 3]), torch.tensor([5, 1, 22])
    got = crop(imgs, which, top, left, 6)
    for i in range(3):
        assert torch.equal(got[i], imgs[which[i], top[i]:top[i] + 6, left[i]:left[i] + 6])
    canvas = torch.rand(3, 60, 60) * 0.5
    before = canvas.clone()
    patches = torch.rand(3, 6, 6)
    paste(canvas, patches, top, left)
    outside = torch.ones(3, 60, 60, dtype=torch.bool)
    for i in range(3):
        t, l_ = int(top[i]), int(left[i])
        assert torch.equal(canvas[i, t:t + 6, l_:l_ + 6], torch.maximum(before[i, t:t + 6, l_:l_ + 6], patches[i]))
        outside[i, t:t + 6, l_:l_ + 6] = False
    assert torch.equal(canvas[outside], before[outside])  # and nothing outside the window changed


def test_tc_places_the_digit_and_six_patches():
    d = TranslateClutter()
    pool = torch.zeros(10, 28, 28)  # clutter from empty digits: only the digit shows
    x = torch.rand(50, 1, 28, 28)
    p = d.make_params(gen(), 50, len(pool))
    out = d.apply(x, p, pool)
    assert out.shape == (50, 1, 60, 60)
    for i in range(50):
        t, l_ = int(p["top"][i]), int(p["left"][i])
        assert torch.equal(out[i, 0, t:t + 28, l_:l_ + 28], x[i, 0])
        assert float(out[i].sum()) == pytest.approx(float(x[i].sum()), rel=1e-5)
    ones = torch.ones(10, 28, 28)
    cl = d.apply(torch.zeros(50, 1, 28, 28), p, ones)
    assert (cl.sum((1, 2, 3)) <= 6 * 36).all() and (cl.sum((1, 2, 3)) >= 36).all()
    assert p["clutter_index"].shape == (50, 6)


def test_unknown_rts_settings_do_not_leave_the_canvas():
    d = RotateScaleTranslate(max_angle=0.0, scale=(1.0, 1.0), canvas=60, translate=True)
    p = d.make_params(gen(), 1000)
    assert (p["centre"].abs() <= 16 + 1e-6).all() and p["centre"].abs().max() > 15
