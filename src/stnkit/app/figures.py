"""What the transformers learned, as in the paper's Figure 3: each input with the region every
spatial transformer sampled drawn on it (one colour per transformer; for projective and TPS
warps the deformed sampling grid inside it), then each transformer's output; the true and
predicted class under every input, or for co-localisation the true box and the IoU.

Every function returns a matplotlib Figure (plots.save_figure writes it); nothing is drawn by
hand, so the figure's artists can be inspected."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data import make_dataset
from ..data.base import NO_DIGIT
from ..functional.coords import to_pixels
from ..layers import SpatialTransformer
from ..models import transformers
from ..warp import warp_points
from .plots import RIGHT, WRONG, box_patch, colour, image_axes, new_figure, to_rgb

class NoTransformer(ValueError):
    """The model has no spatial transformer to show."""


PANEL = 1.25  # inches per panel height
CURVED = ("projective", "tps")  # families whose sampling grid is drawn inside the region


def outline(n: int = 64) -> torch.Tensor:
    """Points along the border of the output frame, normalised: (4n, 2)."""
    t = torch.linspace(-1, 1, n)
    one = torch.ones(n)
    return torch.cat([torch.stack([t, -one], 1), torch.stack([one, t], 1),
                      torch.stack([-t, one], 1), torch.stack([-one, -t], 1)])


def grid_lines(k: int = 7, n: int = 32) -> torch.Tensor:
    """k lines of constant x and k of constant y across the output frame, normalised: (2k, n, 2)."""
    t, c = torch.linspace(-1, 1, n), torch.linspace(-1, 1, k + 2)[1:-1]
    vertical = torch.stack([c[:, None].expand(k, n), t.expand(k, n)], -1)
    return torch.cat([vertical, vertical.flip(-1)])


def record_transformers(model: nn.Module, x: torch.Tensor):
    """Run model on x without gradients; -> (its output, [(st, its input, its output, the params it
    used)] for every transformer call, in call order)."""
    calls, hooks = [], []
    for st in transformers(model):
        hooks.append(st.register_forward_hook(lambda m, a, out: calls.append((m, a[0], out, m.last_params.cpu()))))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y, calls


def to_input_pixels(st: SpatialTransformer, params: torch.Tensor, pts: torch.Tensor, size_hw) -> torch.Tensor:
    """Normalised output points (N, 2) -> where st samples them in its input, in pixel-edge
    units (0..W, 0..H: edges lie half a pixel before centres): (B, N, 2)."""
    src = warp_points(pts.to(params.dtype), params, st.transform, align_corners=st.align_corners)
    return to_pixels(src, size_hw, align_corners=st.align_corners) + 0.5


def region_on_input(st: SpatialTransformer, params: torch.Tensor, size_hw, n: int = 64) -> torch.Tensor:
    """Where the border of st's output lies in its input, in input pixel edges: (B, 4n, 2)."""
    return to_input_pixels(st, params, outline(n), size_hw)


def label_text(v: torch.Tensor) -> str:
    """A class () or a digit sequence (L,) as text: "7", or "123" (no-digit positions left out)."""
    if v.dim() == 0:
        return str(int(v))
    return "".join(str(d) for d in v.tolist() if d != NO_DIGIT) or "none"


def _classes(logits: torch.Tensor, y: torch.Tensor | None):
    """(true, predicted) strings per example, or None when the model does not classify y."""
    if y is None or not torch.is_tensor(logits) or logits.dim() != y.dim() + 1 or logits.shape[:-1] != y.shape:
        return None
    pred = logits.argmax(-1)
    return [(label_text(t), label_text(p)) for t, p in zip(y.cpu(), pred.cpu())]


def _drawn(calls, x: torch.Tensor):
    """The transformer calls the figure shows: those that warp the input itself (their region is
    drawn) and those whose output is image-like (1-3 channels). -> [(k, st, on_input, out)]."""
    shown = []
    for k, (st, inp, out, _) in enumerate(calls):
        on_input = inp is x and st.transform.dim == 2
        if on_input or out.shape[1] in (1, 2, 3):
            shown.append((k, st, on_input, out if out.shape[1] in (1, 2, 3) else None))
    return shown


def _draw_region(ax, st, params, size_hw, c: int, channels: int, lw: float = 1.6) -> None:
    """The region st sampled (and its deformed grid for curved families) on every channel panel."""
    H, W = size_hw
    border = region_on_input(st, params[None], size_hw)[0]
    curved = st.transform.name in CURVED
    lines = to_input_pixels(st, params[None], grid_lines().reshape(-1, 2), size_hw)[0].reshape(-1, 32, 2) if curved else []
    for ch in range(channels):  # the same region on every channel panel
        dx = ch * W
        ax.plot(border[:, 0] + dx, border[:, 1], color=colour(c), lw=lw, gid=f"region{c}")
        for ln in lines:
            ax.plot(ln[:, 0] + dx, ln[:, 1], color=colour(c), lw=0.6, alpha=0.7, gid=f"grid{c}")


def _iou(a, b) -> float:
    from ..train.coloc import iou

    return float(iou(a[None], b[None])[0])


def transformer_figure(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                       boxes: torch.Tensor | None = None, ncol: int | None = None, title: str | None = None):
    """x: (B, C, H, W) (or (B, C, D, H, W)) model inputs -> a matplotlib Figure: per example the
    input with the region every transformer sampled, then each transformer's output.

    y: (B,) or (B, L) true classes: the true and predicted class under each input (wrong ones in
    red and marked). boxes: (B, 4) true boxes (x0, y0, x1, y1) in pixels (co-localisation):
    drawn dashed, with the IoU of the first transformer's region."""
    if x.shape[0] == 0:
        raise ValueError("transformer_figure needs at least one input, got a batch of 0")
    model.eval()
    logits, calls = record_transformers(model, x)
    shown = _drawn(calls, x)
    if not shown:
        raise NoTransformer("this model has no spatial transformer to show")
    B, C, H, W = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    classes = _classes(logits, y)
    inputs, outs = to_rgb(x), [(k, to_rgb(out)) for k, _, _, out in shown if out is not None]
    ncol = ncol or min(B, 4)
    nrow = math.ceil(B / ncol)
    ratios = [inputs.shape[2] / H] + [o.shape[2] / o.shape[1] for _, o in outs]
    several = sum(on_input for _, _, on_input, _ in shown) > 1  # regions drawn on the input
    legend = len(shown) > 1 or boxes is not None
    fig = new_figure(ncol * (sum(ratios) * PANEL + 0.3),
                     nrow * (PANEL + 0.45) + 0.55 + 0.25 * bool(title) + 0.25 * legend)
    gap = 0.2  # between examples, in panel heights
    cells = fig.add_gridspec(nrow, ncol * (len(ratios) + 1) - 1, width_ratios=(ratios + [gap]) * (ncol - 1) + ratios)
    for b in range(B):
        r, c0 = b // ncol, (b % ncol) * (len(ratios) + 1)
        first_row = r == 0
        ax = fig.add_subplot(cells[r, c0], gid=f"input{b}")
        image_axes(ax, inputs[b], ("input and the regions\nthe STs sampled" if several else
                                   "input and the region\nthe ST sampled") if first_row else None)
        for k, st, on_input, _ in shown:
            if on_input:
                _draw_region(ax, st, st_params(calls, k)[b], (H, W), k, C if C != 3 else 1)
        if classes is not None:
            true, pred = classes[b]
            ok = true == pred
            ax.set_xlabel(f"true {true} · predicted {pred}" + ("" if ok else "\n(wrong)"), fontsize=7,
                          color=RIGHT if ok else WRONG)
        if boxes is not None:
            _draw_box(ax, boxes[b], shown, calls, b, (H, W))
        for j, (k, img) in enumerate(outs):
            oax = fig.add_subplot(cells[r, c0 + 1 + j], gid=f"output{b}.{k}")
            image_axes(oax, img[b], (f"ST {k + 1} output" if len(shown) > 1 else "ST output") if first_row else None)
            for side in oax.spines.values():
                side.set_edgecolor(colour(k))
                side.set_linewidth(2)
    _legend(fig, shown, boxes is not None)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def st_params(calls, k: int) -> torch.Tensor:
    """The parameters transformer call k used: (B, P) (or its field)."""
    return calls[k][3]


def _draw_box(ax, box, shown, calls, b: int, size_hw) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    box_patch(ax, box, "white", "true box", lw=1.2)
    k, st = next((k, st) for k, st, on_input, _ in shown if on_input)
    pts = region_on_input(st, st_params(calls, k)[b:b + 1], size_hw)[0]
    region = torch.cat([pts.amin(0), pts.amax(0)])
    v = _iou(region, torch.tensor([x0, y0, x1, y1]))
    ax.set_xlabel(f"IoU {v:.2f}", fontsize=7, color=RIGHT if v > 0.5 else WRONG)


def _legend(fig, shown, boxes: bool) -> None:
    """One entry per transformer shown (its colour and family) when several are, plus the true box."""
    from matplotlib.lines import Line2D

    handles = []
    if len(shown) > 1 or boxes:
        handles = [Line2D([], [], color=colour(k), lw=2, label=f"ST {k + 1} ({st.transform.name})")
                   for k, st, _, _ in shown]
    if boxes:
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1.2, label="true box (white, dashed)"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, ncol=len(handles), frameon=False)


def sample_figure(name: str, n: int = 32, split: str = "test", seed: int = 0, ncol: int = 8, **dataset_kwargs):
    """Samples of a dataset for `stnkit data show` -> (a Figure of n tiles, each titled with its
    label, co-localisation boxes drawn dashed; the labels (n,) or (n, L))."""
    _check_count(n)
    ds = make_dataset(name, split, **dataset_kwargs)
    batch = ds.sample(n, seed=seed)
    tiles = to_rgb(batch.x)
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    aspect = tiles.shape[2] / tiles.shape[1]
    fig = new_figure(ncol * (aspect * 1.1 + 0.1), nrow * 1.35 + 0.4)
    for i in range(n):
        ax = fig.add_subplot(nrow, ncol, i + 1, gid=f"sample{i}")
        label = batch.y[i]
        image_axes(ax, tiles[i], "label " + label_text(label))
        if batch.box is not None:
            box_patch(ax, batch.box[i], colour(0), "box")
    fig.suptitle(f"{n} {split} samples of {name!r}" + (", the digit's box dashed" if batch.box is not None else ""),
                 fontsize=9)
    return fig, batch.y


HOW_TO_READ = {  # one sentence per figure kind, for reports and `stnkit show`
    "classes": "Each input is shown with the outline of the region its spatial transformer sampled (one colour per "
               "transformer; for projective and TPS warps the deformed sampling grid inside it), then what the "
               "transformer passed on; under each input the true and the predicted class, wrong ones in red: a "
               "transformer that learned its job draws its outline around the digit and outputs it upright and "
               "centred whatever the distortion.",
    "boxes": "Each canvas is shown with the square its attention transformer cropped (solid) and the digit's true "
             "box (white, dashed), then the crop; the IoU of the two is under each canvas (green above 0.5, the "
             "paper's hit threshold): a transformer that learned to co-localise puts its square on the digit.",
    "deform": "Each input is shown with the taps of one output pixel of the first deformable layer: hollow grey "
              "squares where a plain convolution would read (the regular kh x kw grid, dilated), filled dots where "
              "the learned offsets moved them (darker: a smaller v2 mask, i.e. a tap that counts less), both in "
              "input pixels; a layer that learned to follow the digit pulls its taps onto the strokes.",
    "steps": "Each input is shown with the region the inverse-compositional transformer sampled after each of its "
             "steps (light to dark: step 1 to the last), then the final output: each step re-reads the original "
             "image, so the region should tighten onto the digit step by step.",
}


def _check_count(n) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of examples to show (-n) must be at least 1, got {n}")


def _successor(model: nn.Module) -> str | None:
    """"deform" for a model with a deformable convolution, "steps" for one with an
    inverse-compositional transformer, None otherwise."""
    from ..deform import DeformConv2d
    from ..layers import CompositionalTransformer

    kinds = {type(m) for m in model.modules()}
    return "deform" if DeformConv2d in kinds else "steps" if CompositionalTransformer in kinds else None


def run_figure(run_dir, n: int = 12, seed: int = 0, ncol: int | None = None):
    """The transformer figure of a trained run on n of its test examples -> (Figure, which of
    HOW_TO_READ explains it): true classes under a classifier, true boxes for co-localisation."""
    from ..train.objectives import objective_for
    from ..train.runs import load_run

    _check_count(n)
    cfg, model, test = load_run(run_dir)
    batch = test.sample(n, seed=seed)
    what = f"{cfg.model} on {cfg.experiment}: {n} test examples"
    kind = _successor(model)
    if kind is not None:  # a deformable CNN or an IC-STN: their own figures
        from . import successor_figures as S

        draw = S.deform_figure if kind == "deform" else S.steps_figure
        return draw(model, batch.x, ncol=ncol, title=what), kind
    boxes = None if objective_for(cfg).classifies else batch.box
    fig = transformer_figure(model, batch.x, None if boxes is not None else batch.y, boxes, ncol=ncol, title=what)
    return fig, "boxes" if boxes is not None else "classes"


def prediction_figure(x: torch.Tensor, warped: list[torch.Tensor], top: list[tuple[int, float]], sequence: bool,
                      name: str):
    """One image for `stnkit predict`: x (C, H, W) the model's input, warped [(C', H', W')] each
    transformer's output (shown at the input's height, so a 21x21 crop is as large as the input),
    top [(class, probability)] -> a Figure: input | outputs | the top classes as bars (a sequence
    model: its best class per position)."""
    panels = [to_rgb(x[None])[0]] + [to_rgb(w[None])[0] for w in warped]
    ratios = [p.shape[1] / p.shape[0] for p in panels] + [1.6]
    fig = new_figure(sum(ratios) * 2.0 + 0.4, 2.6)
    cells = fig.add_gridspec(1, len(ratios), width_ratios=ratios)
    for j, img in enumerate(panels):
        ax = fig.add_subplot(cells[0, j], gid="input" if j == 0 else f"output{j - 1}")
        image_axes(ax, img, "input" if j == 0 else (f"ST {j} output" if len(warped) > 1 else "ST output"), fontsize=9)
        if j:
            for side in ax.spines.values():
                side.set_edgecolor(colour(j - 1))
                side.set_linewidth(2)
    bars = fig.add_subplot(cells[0, -1], gid="classes")
    labels = [f"position {i + 1}: {c}" if sequence else str(c) for i, (c, _) in enumerate(top)]
    probs = [p for _, p in top]
    bars.barh(range(len(top)), probs, color=[RIGHT] + ["0.6"] * (len(top) - 1))
    bars.set_yticks(range(len(top)), labels, fontsize=8)
    bars.invert_yaxis()  # the best on top
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability", fontsize=8)
    bars.set_title("best class per position" if sequence else f"top {len(top)} classes", fontsize=9)
    for i, p in enumerate(probs):
        bars.text(min(p + 0.02, 0.8), i, f"{p:.3f}", va="center", fontsize=8)
    fig.suptitle(name, fontsize=9)
    return fig


def flow_figure(x: torch.Tensor, flow: torch.Tensor, *, align_corners: bool = False, arrows: int = 12,
                title: str | None = None):
    """What a dense flow does: x (C, H, W) an image, flow (H', W', 2) its normalised displacement
    field (stnkit's `flow` params, as `stnkit.warp(x, flow, "flow")` takes them) -> a Figure:
    the input with the sampling offsets as arrows (from where each output point lies with no
    flow to where it samples, in input pixels, on an arrows x arrows grid), the warped output,
    and the displacement's length in input pixels as an image with a colour bar."""
    from ..functional.coords import identity_grid
    from ..warp import warp

    C, H, W = x.shape
    if flow.dim() != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be one 2D field (H', W', 2), got {tuple(flow.shape)}")
    Ho, Wo = flow.shape[:2]
    ident = identity_grid((Ho, Wo), align_corners, dtype=flow.dtype)  # (H', W', 2)
    start = to_pixels(ident, (H, W), align_corners) + 0.5
    disp = to_pixels(ident + flow, (H, W), align_corners) + 0.5 - start  # (H', W', 2) input pixels
    out = warp(x[None], flow[None], "flow", align_corners=align_corners)[0]
    fig = new_figure(3 * 2.4 * max(W / H, 1) + 0.8, 2.8)
    axes = [fig.add_subplot(1, 3, i + 1, gid=g) for i, g in enumerate(("input", "output", "magnitude"))]
    image_axes(axes[0], to_rgb(x[None])[0], "input and where each\noutput point samples", fontsize=9)
    iy = torch.linspace(0, Ho - 1, min(arrows, Ho)).round().long()
    ix = torch.linspace(0, Wo - 1, min(arrows, Wo)).round().long()
    s, d = start[iy][:, ix].reshape(-1, 2), disp[iy][:, ix].reshape(-1, 2)
    axes[0].quiver(s[:, 0], s[:, 1], d[:, 0], d[:, 1], color=colour(0), angles="xy", scale_units="xy", scale=1,
                   width=0.008, gid="offsets")
    image_axes(axes[1], to_rgb(out[None])[0], "warped output", fontsize=9)
    shown = axes[2].imshow(disp.norm(dim=-1).numpy(), cmap="viridis", extent=(0, Wo, Ho, 0))
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title("displacement (input pixels)", fontsize=9)
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
