"""Normalised <-> pixel coordinates agree with where grid_sample reads, for both align_corners."""
import pytest
import torch
import torch.nn.functional as F

import stnkit
from stnkit.functional.coords import axis, box_to_normalised, box_to_pixels, identity_grid


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_axis_matches_affine_grid(n, align_corners):
    g = F.affine_grid(torch.eye(2, 3)[None], (1, 1, 3, n), align_corners=align_corners)
    torch.testing.assert_close(axis(n, align_corners), g[0, 0, :, 0])


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_round_trip_and_centres(align_corners):
    size = (5, 8)  # H, W
    centres = identity_grid(size, align_corners)  # (H, W, 2)
    pix = stnkit.to_pixels(centres, size, align_corners)
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(8.0), indexing="ij")
    torch.testing.assert_close(pix, torch.stack([xs, ys], -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(stnkit.to_normalised(pix, size, align_corners), centres, atol=1e-6, rtol=0)


@pytest.mark.parametrize("align_corners", [False, True])
def test_sampling_at_a_pixel_reads_that_pixel(align_corners):
    x = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(1, 1, 4, 6, 3)  # D=4, H=6, W=3
    p = torch.tensor([[2.0, 5.0, 1.0]])  # (x, y, z) pixel
    g = stnkit.to_normalised(p, (4, 6, 3), align_corners).view(1, 1, 1, 1, 3)
    v = F.grid_sample(x, g, align_corners=align_corners)
    assert float(v) == pytest.approx(float(x[0, 0, 1, 5, 2]), abs=1e-4)


def test_wrong_point_width_raises():
    with pytest.raises(ValueError, match="last axis must be 2"):
        stnkit.to_pixels(torch.zeros(4, 3), (5, 5))


def test_boxes_in_pixel_edges_by_hand():
    # the whole image, its left half, and the first pixel of an 84-wide, 42-high image
    norm = torch.tensor([[-1.0, -1, 1, 1], [-1, -1, 0, 1], [-1, -1, -1 + 2 / 84, -1 + 2 / 42]])
    px = box_to_pixels(norm, (42, 84))
    torch.testing.assert_close(px, torch.tensor([[0.0, 0, 84, 42], [0, 0, 42, 42], [0, 0, 1, 1]]))
    torch.testing.assert_close(box_to_normalised(px, (42, 84)), norm)
    # a 28-px crop whose normalised centre is (0.5, -0.5) on an 84 canvas: x from 49 to 77, y from 7 to 35
    s, t = 1 / 3, torch.tensor([[0.5, -0.5]])
    torch.testing.assert_close(box_to_pixels(torch.cat([t - s, t + s], 1), (84, 84)), torch.tensor([[49.0, 7, 77, 35]]))
