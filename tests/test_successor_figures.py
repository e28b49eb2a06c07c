"""Figures of the successors: a deformable layer's taps over the input, an IC-STN's steps."""
import numpy as np
import pytest
import torch

from stnkit.app import figures
from stnkit.app.successor_figures import deform_figure, deform_taps, steps_figure
from stnkit.models import create_model


def _collection(fig, gid):
    return next(c for ax in fig.axes for c in ax.collections if c.get_gid() == gid)


def test_taps_at_zero_offsets_are_the_regular_grid_and_a_bias_moves_them_all():
    m = create_model("dcn-cnn")
    layer = m[3]  # the deformable 7x7, 'same' padding
    inp = torch.rand(2, layer.in_channels, 14, 14)
    regular, moved, mask = deform_taps(layer, inp, (7, 7))
    assert regular[:, 0].min() == 4 and regular[:, 0].max() == 10 and regular[:, 1].min() == 4  # 7 - 3 .. 7 + 3
    torch.testing.assert_close(moved[0, 0], regular)
    with torch.no_grad():
        layer.offset_conv.bias.view(-1, 2)[:] = torch.tensor([1.0, -2.0])  # every tap: dy = 1, dx = -2
    _, moved, _ = deform_taps(layer, inp, (7, 7))
    torch.testing.assert_close(moved[1, 0], regular + torch.tensor([-2.0, 1.0]))
    assert torch.all(mask == 1)


def test_deform_figure_maps_the_layers_grid_onto_the_image_pixels():
    m = create_model("dcn-cnn-v2")
    x = torch.rand(3, 1, 28, 28)
    fig = deform_figure(m, x, title="t")
    pts = _collection(fig, "regular").get_offsets()
    # layer input 14 x 14 (after conv + 2x pool): centre pixel 7's taps 4..10 -> image edges (u + 0.5) * 2
    assert np.allclose(sorted(set(pts[:, 0].tolist())), [9, 11, 13, 15, 17, 19, 21])
    assert len(_collection(fig, "moved0").get_offsets()) == 49
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["regular grid", "learned"]
    with pytest.raises(ValueError, match="no deformable convolution"):
        deform_figure(create_model("cnn"), x)


def test_steps_figure_draws_one_region_per_step():
    m = create_model("ic-stn-cnn-projective", steps=3)
    x = torch.rand(2, 1, 28, 28)
    fig = steps_figure(m, x)
    lines = [ln for ln in fig.axes[0].lines]
    assert [ln.get_gid() for ln in lines] == ["step1", "step2", "step3"]
    xy = lines[0].get_xydata()  # the identity: the whole image, 0..28 in pixel edges
    assert np.allclose([xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()], [0, 28, 0, 28], atol=1e-4)
    assert figures._successor(m) == "steps" and figures._successor(create_model("dcn-cnn")) == "deform"
    assert figures._successor(create_model("st-cnn-affine")) is None
