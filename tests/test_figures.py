"""What the transformer figures show: the region drawn on the input is where the transformer
sampled (checked against the attention box by hand), and the figure holds the input, the
outline in the transformer's colour and its output."""
import torch

from stnkit.app.figures import region_on_input, transformer_figure
from stnkit.app.plots import COLOURS
from stnkit.models import create_model


def attention_model(s=0.5, tx=0.25, ty=-0.5):
    model = create_model("st-cnn-affine", in_shape=(1, 40, 40))
    st = model.transformers[0]
    with torch.no_grad():  # a fixed affine: scale s, shift (tx, ty), whatever the input
        st.regression.weight.zero_()
        st.regression.bias.copy_(torch.tensor([s, 0, tx, 0, s, ty]))
    return model, st


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


def test_the_figure_draws_the_outline_in_the_transformers_colour_where_it_sampled():
    model, st = attention_model()
    x = torch.zeros(1, 1, 40, 40)
    fig = transformer_figure(model, x, ncol=1, scale=2)
    red = (fig == COLOURS[0]).all(-1)  # (H, W) pixels of transformer 1's colour
    ys, xs = red.nonzero(as_tuple=True)
    assert len(ys) > 0
    # the input panel starts after the 4-px pad, at 2x: x = 15 -> 34, x = 35 -> 74, y = 0 -> 4, y = 20 -> 44,
    # drawn 2 px thick
    cols = red[:, :80].sum(0)
    rows = red[:, :80].sum(1)
    assert cols[33:35].sum() >= 60 and cols[73:75].sum() >= 60
    assert rows[4] >= 40 and rows[43:45].sum() >= 60  # the top edge lies on the panel border: half clipped
    assert not red[4 + 6:4 + 38, 4 + 34:4 + 66].any()  # strictly inside the square: no outline
    assert not red[50:, :80].any()  # nor below it
