"""What the figures show, read from matplotlib's artists before saving: the region drawn on the
input is where the transformer sampled (checked by hand for known transforms), titles, class
labels (right and wrong), one colour and legend entry per transformer, the deformed grid and
flow arrows, true boxes with their IoU, dataset labels, and the PNG's size."""
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from PIL import Image

import stnkit
from stnkit.app.figures import flow_figure, prediction_figure, region_on_input, sample_figure, transformer_figure
from stnkit.app.plots import RIGHT, WRONG, colour, save_figure
from stnkit.data import make_dataset
from stnkit.models import create_model, transformers


def fixed(st, params):
    """Make st predict `params` whatever its input."""
    params = torch.as_tensor(params, dtype=torch.float32)
    with torch.no_grad():
        st.regression.weight.zero_()
        st.regression.bias.copy_(st.bounds.raw(params) if st.bounds is not None else params)


def attention_model(s=0.5, tx=0.25, ty=-0.5):
    model = create_model("st-cnn-affine", in_shape=(1, 40, 40))
    st = model.transformers[0]
    fixed(st, [s, 0, tx, 0, s, ty])  # scale s, shift (tx, ty)
    return model, st


def ax(fig, gid):
    found = [a for a in fig.axes if a.get_gid() == gid]
    assert len(found) == 1, [a.get_gid() for a in fig.axes]
    return found[0]


def lines(a, gid):
    return [ln for ln in a.get_lines() if ln.get_gid() == gid]


def test_region_on_input_is_the_sampled_square_in_pixel_edges():
    model, st = attention_model()
    model(torch.rand(2, 1, 40, 40))
    pts = region_on_input(st, st.last_params, (40, 40))  # (B, P, 2)
    # x from (0.25 - 0.5 + 1) * 20 = 15 to (0.25 + 0.5 + 1) * 20 = 35; y from 0 to 20
    lo, hi = pts.amin(1), pts.amax(1)
    torch.testing.assert_close(lo, torch.tensor([[15.0, 0.0]] * 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([[35.0, 20.0]] * 2), atol=1e-4, rtol=0)
    on_edge = ((pts - lo[:, None]).abs().min(-1).values < 1e-4) | ((pts - hi[:, None]).abs().min(-1).values < 1e-4)
    assert on_edge.all()  # every point lies on the square's border


def test_the_figure_draws_the_region_the_transformer_sampled_with_titles_and_classes(tmp_path):
    model, st = attention_model()
    x = torch.rand(3, 1, 40, 40)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.stack([pred[0], (pred[1] + 1) % 10, pred[2]])  # the second one wrong
    fig = transformer_figure(model, x, y, ncol=2)
    inp = ax(fig, "input0")
    assert inp.get_title() == "input and the region\nthe ST sampled"
    assert ax(fig, "output0.0").get_title() == "ST output"
    assert ax(fig, "input1").get_title() == inp.get_title() and ax(fig, "input2").get_title() == ""  # first row only
    assert ax(fig, "input1").get_xlim() == (0, 40) and ax(fig, "input1").get_ylim() == (40, 0)
    (region,) = lines(inp, "region0")
    xy = region.get_xydata()
    np.testing.assert_allclose(xy.min(0), [15, 0], atol=1e-4)
    np.testing.assert_allclose(xy.max(0), [35, 20], atol=1e-4)
    assert to_hex(region.get_color()) == to_hex(colour(0))
    assert not lines(inp, "grid0")  # an affine map: no curved grid
    assert inp.get_xlabel() == f"true {int(y[0])} · predicted {int(pred[0])}"
    assert to_hex(inp.xaxis.label.get_color()) == to_hex(RIGHT)
    wrong = ax(fig, "input1")
    assert wrong.get_xlabel() == f"true {int(y[1])} · predicted {int(pred[1])}\n(wrong)"
    assert to_hex(wrong.xaxis.label.get_color()) == to_hex(WRONG)
    assert not fig.legends  # one transformer: its colour needs no legend
    path = save_figure(fig, tmp_path / "f.png")
    w, h = fig.get_size_inches() * fig.dpi
    assert Image.open(path).size == (round(w), round(h))


def test_an_identity_transformer_draws_the_whole_inputs_border():
    model = create_model("st-cnn-affine", in_shape=(1, 28, 28))  # initialised to the identity
    fig = transformer_figure(model, torch.rand(2, 1, 28, 28))
    xy = lines(ax(fig, "input1"), "region0")[0].get_xydata()
    np.testing.assert_allclose(xy.min(0), [0, 0], atol=1e-4)
    np.testing.assert_allclose(xy.max(0), [28, 28], atol=1e-4)
    assert ax(fig, "input0").get_xlabel() == ""  # no classes given: none written


def test_several_transformers_get_their_own_colour_legend_and_curved_grid():
    model = create_model("2xst-fcn-projective", in_shape=(1, 42, 42))
    a, b = transformers(model)
    fixed(a, [0.5, 0, 0, 0, 0.5, 0, 0.3, 0])  # a homography with a perspective term
    x = torch.rand(2, 1, 42, 42)
    fig = transformer_figure(model, x)
    inp = ax(fig, "input0")
    assert [to_hex(ln.get_color()) for ln in lines(inp, "region0") + lines(inp, "region1")] == \
           [to_hex(colour(0)), to_hex(colour(1))]
    assert len(lines(inp, "grid0")) == 14 and len(lines(inp, "grid1")) == 14  # 7 lines each way
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ST 1 (projective)", "ST 2 (projective)"]
    assert ax(fig, "output0.0").get_title() == "ST 1 output" and ax(fig, "output0.1").get_title() == "ST 2 output"
    # the grid is where the map sends the output's grid lines: for ST 2 (the identity) straight lines
    # at x = (c + 1) * 21 for c = -0.75, ..., 0.75
    xs = sorted(float(ln.get_xdata().mean()) for ln in lines(inp, "grid1")[:7])
    np.testing.assert_allclose(xs, [(c + 1) * 21 for c in np.linspace(-1, 1, 9)[1:-1]], atol=1e-4)


def test_a_tps_grid_bends_with_its_control_points():
    model = create_model("st-cnn-tps", in_shape=(1, 28, 28))
    st = model.transformers[0]
    with torch.no_grad():
        st.regression.bias.add_(torch.randn_like(st.regression.bias) * 0.1)
    fig = transformer_figure(model, torch.rand(1, 1, 28, 28))
    grid = lines(ax(fig, "input0"), "grid0")
    assert len(grid) == 14
    bend = max(np.ptp(ln.get_xdata()) for ln in grid[:7])  # a vertical line of the output, in the input
    assert bend > 0.05  # not straight


def test_a_flow_figure_draws_its_offsets_as_arrows_in_pixels_and_their_length():
    field = torch.zeros(16, 16, 2)
    field[..., 0] = 0.25  # every point samples 0.25 to the right: 2 pixels of 16
    field[:8, :, 1] = -0.5  # the top half also 4 pixels up
    x = torch.rand(1, 16, 16)
    fig = flow_figure(x, field, arrows=4)
    (arrows,) = [c for c in ax(fig, "input").collections if c.get_gid() == "offsets"]
    np.testing.assert_allclose(arrows.U, 2.0, atol=1e-4)
    np.testing.assert_allclose(sorted(arrows.V), [-4.0] * 8 + [0.0] * 8, atol=1e-4)  # rows 0, 5 | 10, 15
    np.testing.assert_allclose(arrows.X[:4], [0.5, 5.5, 10.5, 15.5], atol=1e-4)  # from pixel centres
    length = ax(fig, "magnitude").get_images()[0].get_array()
    np.testing.assert_allclose(length[0, 0], 20 ** 0.5, atol=1e-4)
    np.testing.assert_allclose(length[-1, -1], 2.0, atol=1e-4)
    out = ax(fig, "output").get_images()[0].get_array()[..., 0]
    np.testing.assert_allclose(out, stnkit.warp(x[None], field[None], "flow")[0, 0].clamp(0, 1).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="one 2D field"):
        flow_figure(x, field[None])


def test_two_channel_inputs_get_the_region_on_each_channel():
    model = create_model("st-fcn-affine", in_shape=(2, 20, 20))
    fixed(model.transformers[0], [0.5, 0, 0, 0, 0.5, 0])
    fig = transformer_figure(model, torch.rand(1, 2, 20, 20))
    first, second = lines(ax(fig, "input0"), "region0")
    np.testing.assert_allclose(first.get_xydata().min(0), [5, 5], atol=1e-4)
    np.testing.assert_allclose(second.get_xydata().min(0), [25, 5], atol=1e-4)  # the second channel, 20 px on


def test_colocalisation_draws_the_true_box_and_the_iou():
    model = create_model("coloc-attention")
    fixed(model.transformers[0], [1 / 3, 0.0, 0.0])  # the centre 28 x 28 square of the 84 x 84 canvas
    boxes = torch.tensor([[28.0, 28.0, 56.0, 56.0], [42.0, 28.0, 70.0, 56.0]])
    fig = transformer_figure(model, torch.rand(2, 1, 84, 84), boxes=boxes)
    (box,) = [p for p in ax(fig, "input1").patches if p.get_gid() == "true box"]
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (42, 28, 28, 28)
    assert ax(fig, "input0").get_xlabel() == "IoU 1.00"
    assert ax(fig, "input1").get_xlabel() == f"IoU {14 * 28 / (2 * 28 * 28 - 14 * 28):.2f}"  # half overlapping
    assert to_hex(ax(fig, "input1").xaxis.label.get_color()) == to_hex(WRONG)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["ST 1 (attention)", "true box (white, dashed)"]


def test_volumes_are_shown_by_their_maximum_over_depth():
    model = create_model("3d-st-cnn-affine")
    x = torch.rand(2, *model.in_shape)
    fig = transformer_figure(model, x)
    img = ax(fig, "input0").get_images()[0].get_array()
    np.testing.assert_allclose(img[..., 0], x[0, 0].amax(0).numpy(), atol=1e-6)
    assert not lines(ax(fig, "input0"), "region0")  # a 3D region is not drawn on a projection


def test_a_model_without_transformers_is_refused():
    with pytest.raises(ValueError, match="no spatial transformer"):
        transformer_figure(create_model("cnn", in_shape=(1, 28, 28)), torch.rand(1, 1, 28, 28))


def test_sample_figure_writes_each_label_on_its_tile_and_the_boxes():
    fig, labels = sample_figure("coloc", 6, ncol=3)
    batch = make_dataset("coloc", "test").sample(6, seed=0)
    assert torch.equal(labels, batch.y)
    for i in range(6):
        a = ax(fig, f"sample{i}")
        assert a.get_title() == f"label {int(labels[i])}"
        (box,) = a.patches
        x0, y0, x1, y1 = batch.box[i].tolist()
        assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (x0, y0, x1 - x0, y1 - y0)
    seq, labels = sample_figure("seq64", 2)
    assert labels.dim() == 2 and ax(seq, "sample1").get_title() == "label " + "".join(
        str(d) for d in labels[1].tolist() if d != 10)  # 10: no digit at that position
    assert (labels[1] == 10).any() or (labels[0] == 10).any()


def test_prediction_figure_shows_input_output_and_top_classes_in_order():
    x, out = torch.rand(1, 28, 28), torch.rand(1, 21, 21)
    fig = prediction_figure(x, [out], [(7, 0.8), (1, 0.15), (9, 0.05)], False, "seven.png")
    assert ax(fig, "input").get_title() == "input" and ax(fig, "output0").get_title() == "ST output"
    # the 21 x 21 output fills a panel as tall as the input's
    a, b = ax(fig, "input").get_position(), ax(fig, "output0").get_position()
    assert abs(a.height - b.height) < 1e-6
    bars = ax(fig, "classes")
    assert [t.get_text() for t in bars.get_yticklabels()] == ["7", "1", "9"]
    assert [round(p.get_width(), 3) for p in bars.patches] == [0.8, 0.15, 0.05]
    assert bars.get_title() == "top 3 classes"


def test_the_how_to_read_sentences_name_what_each_figure_draws():
    from stnkit.app.figures import HOW_TO_READ

    classes, boxes = HOW_TO_READ["classes"], HOW_TO_READ["boxes"]
    assert "one colour per transformer" in classes and "deformed sampling grid" in classes
    assert "the true and the predicted class, wrong ones in red" in classes
    assert "true box (white, dashed)" in boxes and "IoU" in boxes and "0.5" in boxes


def test_asking_for_no_examples_is_a_clear_error(tmp_path, capsys):
    from stnkit.app.cli import main

    with pytest.raises(ValueError, match="at least one input"):
        transformer_figure(attention_model()[0], torch.rand(0, 1, 40, 40))
    for n in ("0", "-3"):
        assert main(["data", "show", "rts", "-n", n, "--out", str(tmp_path / "x.png")]) == 2
        assert capsys.readouterr().err == f"stnkit: error: the number of examples to show (-n) must be at least 1, got {n}\n"
    assert not (tmp_path / "x.png").exists()
