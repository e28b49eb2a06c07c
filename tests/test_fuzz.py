"""Property-based fuzzing (hypothesis) of `stnkit.warp`, `grid`, `warp_points`, `invert` and
`SpatialTransformer`: over shapes, dtypes, every registered family (and user TPS targets),
modes, padding, align_corners, fill and extreme parameters, every call either returns values
that are all finite or raises a ValueError that names what was wrong (docs/api.md, "Bad input
and extreme parameters"). The default profile is small and derandomised; `-m slow` runs a
longer random search."""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import stnkit
from stnkit import transforms as T
from stnkit.functional.matrix import OUTSIDE, PROJECTIVE_EPS

FAMILIES = tuple(T.names())
DENSE = ("flow", "flow3d")
DIM = {name: T.get(name).dim for name in FAMILIES}
FLOATS = (torch.float32, torch.float64)
HALVES = (torch.float16, torch.bfloat16)
WRONG = (torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64)
EXTREMES = (0.0, 1e-30, -1e-30, 1e-12, 1e6, -1e6, 1e15, 1e30, -1e30)  # finite, within +-1e30
NONFINITE = (math.nan, math.inf, -math.inf)
MODES = ("nearest", "bilinear", "bicubic")
PADDINGS = ("zeros", "border", "reflection")

FAST = settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

# A clear message names the argument or quantity that was wrong ...
_WHAT = re.compile(
    r"params|points|\bx\b|output_size|batch|mode|padding_mode|fill|transform|targets|control point|"
    r"invert|determinant|scale|h33|dtype|finite|flow|tps|features|init|bound|reg\b"
)
# ... and what came (a shape, a number, a name).
_WHICH = re.compile(r"\d|'|torch\.\w+")


def _clear(err: ValueError, *fragments: str) -> str:
    msg = str(err)
    assert msg and _WHAT.search(msg) and _WHICH.search(msg), f"unclear error: {msg!r}"
    for frag in fragments:
        assert re.search(frag, msg), f"{frag!r} not in {msg!r}"
    return msg


def _outcome(fn, *fragments):
    """fn() -> its tensor, all finite; or None after a clear ValueError. Anything else fails."""
    try:
        out = fn()
    except ValueError as e:
        _clear(e, *fragments)
        return None
    assert isinstance(out, torch.Tensor)
    assert bool(torch.isfinite(out).all()), f"non-finite output: {out}"
    return out


def _must_raise(fn, *fragments):
    with pytest.raises(ValueError) as info:
        fn()
    return _clear(info.value, *fragments)


# ----------------------------------------------------------------------------- strategies

moderate = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, width=32)


def _values(draw, n: int, kind: str) -> list[float]:
    """n numbers. kind: "moderate" (|v| <= 2), "extreme" (moderate or from EXTREMES) or
    "nonfinite" (extreme with at least one NaN or +-Inf)."""
    if kind == "moderate":
        return draw(st.lists(moderate, min_size=n, max_size=n))
    vals = draw(st.lists(st.one_of(moderate, st.sampled_from(EXTREMES)), min_size=n, max_size=n))
    if kind == "nonfinite" and n:
        for i in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)):
            vals[i] = draw(st.sampled_from(NONFINITE))
    return vals


@st.composite
def params_for(draw, family, B: int, size, dtype, kind: str = "moderate"):
    """(B, P) params (or a family's matrix form, or a flow field of `size`) of `kind`."""
    fam = T.get(family)
    if isinstance(fam, T.Flow):
        n = B * math.prod(size) * fam.dim
        vals = _values(draw, n, kind) if n <= 64 or kind == "moderate" else _values(draw, 64, kind) * (n // 64 + 1)
        return torch.tensor(vals[:n], dtype=torch.float64).reshape(B, *size, fam.dim).to(dtype)
    if isinstance(fam, T.TPS) and fam._fixed_k:
        k = draw(st.sampled_from((4, 9, 16)))
        ident = T.TPS(grid_size=math.isqrt(k)).identity_params(dtype=torch.float64)
    else:
        ident = fam.identity_params(dtype=torch.float64)
    P = ident.numel()
    if kind == "moderate":
        noise = torch.tensor(_values(draw, B * P, "moderate"), dtype=torch.float64).reshape(B, P)
        p = ident + noise * draw(st.sampled_from((0.0, 0.05, 0.3, 1.0)))
    else:
        p = torch.tensor(_values(draw, B * P, kind), dtype=torch.float64).reshape(B, P)
        keep = torch.tensor(draw(st.lists(st.booleans(), min_size=B * P, max_size=B * P)), dtype=torch.bool)
        p = torch.where(keep.reshape(B, P), ident.expand(B, P), p)
    if isinstance(fam, T.Projective) and B and draw(st.booleans()):
        p[:, 6:] = torch.tensor(draw(st.sampled_from(_HORIZONS)), dtype=torch.float64)
    if isinstance(fam, T.Projective) and B and draw(st.booleans()):
        p[:, [0, 1, 3, 4]] = torch.tensor(draw(st.sampled_from(_SINGULAR)), dtype=torch.float64)
    if kind == "nonfinite" and B:  # at least one non-finite value, whatever else was set
        p[draw(st.integers(0, B - 1)), draw(st.integers(0, P - 1))] = draw(st.sampled_from(NONFINITE))
    return _matrix_form(draw, fam, p, kind).to(dtype)


# perspective rows (h31, h32): none, through the image, along its edge x = -1 (w = 0 exactly on
# the left edge with align_corners=True), nearly at infinity, all behind
_HORIZONS = ((0.0, 0.0), (1.5, 0.0), (0.2, -1.7), (1.0, 0.0), (0.0, -1.0), (1e-7, 1e-7), (5.0, 5.0), (1e6, -1e6))
# linear parts (h11, h12, h21, h22): singular, rank one, nearly singular
_SINGULAR = ((0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0), (1.0, 1e-7, 1e-7, 1e-14), (1e-30, 0.0, 0.0, 1e-30))


def _matrix_form(draw, fam, p, kind):
    """Sometimes give params in a family's matrix layout: affine (B, d, d + 1), projective
    (B, 3, 3) with any h33 (tiny or 0 unless kind is "moderate"), tps (B, K, 2)."""
    if not draw(st.booleans()):
        return p
    B = p.shape[0]
    if isinstance(fam, T.Affine):
        return p.reshape(B, fam.dim, fam.dim + 1)
    if isinstance(fam, T.Projective):
        h33 = draw(st.sampled_from((1.0, 2.0, -0.5) + (() if kind == "moderate" else (1e-13, 0.0))))
        return torch.cat([p * h33, torch.full((B, 1), h33, dtype=p.dtype)], 1).reshape(B, 3, 3)
    if isinstance(fam, T.TPS):
        return p.reshape(B, p.shape[1] // 2, 2)
    return p


def _family(draw, dims=(2, 3)):
    """A registered family name, or a user TPS instance (targets that may coincide)."""
    name = draw(st.sampled_from([n for n in FAMILIES if DIM[n] in dims]))
    if name == "tps" and draw(st.integers(0, 3)) == 0:
        return _user_tps(draw)
    return name


def _user_tps(draw):
    k = draw(st.integers(3, 7))
    pts = draw(st.lists(st.tuples(moderate, moderate), min_size=k, max_size=k))
    if draw(st.booleans()):  # coincident, nearly coincident or collinear targets
        how = draw(st.sampled_from(("same", "near", "line")))
        if how == "same":
            pts[1] = pts[0]
        elif how == "near":
            pts[1] = (pts[0][0] + 1e-7, pts[0][1])
        else:
            pts = [(t, 0.5 * t) for t, _ in pts]
    targets = torch.tensor(pts, dtype=torch.float64)
    reg = draw(st.sampled_from((0.0, 0.0, 1e-3)))
    try:
        return T.TPS(targets=targets, reg=reg)
    except ValueError as e:
        _clear(e, "TPS|tps|target|control point")
        assume(False)  # the bad targets were refused clearly: nothing left to fuzz


def _size(draw, dim, lo=1, hi=4):
    return tuple(draw(st.integers(lo, hi)) for _ in range(dim))


def _fill(draw, C):
    return draw(st.one_of(
        st.none(),
        moderate,
        st.sampled_from((0, 1, -3, 1e6, 1e30, -1e30)),
        st.lists(moderate, min_size=C, max_size=C).map(lambda v: torch.tensor(v)),
    ))


# ----------------------------------------------------------------------------- grid


def _grid_case(data, kind, dtypes=FLOATS):
    family = _family(data.draw)
    fam = T.get(family)
    d = fam.dim
    size = _size(data.draw, d)
    B = data.draw(st.integers(0, 3))
    dtype = data.draw(st.sampled_from(dtypes))
    p = data.draw(params_for(family, B, size, dtype, kind))
    ac = data.draw(st.booleans())
    return family, fam, size, B, p, ac


@FAST
@given(st.data())
def test_grid_extreme_finite_params_give_finite_grids(data):
    family, fam, size, B, p, ac = _grid_case(data, "extreme")
    g = _outcome(lambda: stnkit.grid(p, family, size, ac))
    if g is not None:
        assert g.shape == (B, *size, fam.dim) and g.dtype == p.dtype


@FAST
@given(st.data())
def test_grid_nonfinite_params_raise(data):
    family, fam, size, B, p, ac = _grid_case(data, "nonfinite")
    assume(B > 0)
    _must_raise(lambda: stnkit.grid(p, family, size, ac), "finite")


@FAST
@given(st.data())
def test_grid_half_precision_and_wrong_dtypes(data):
    family, fam, size, B, p, ac = _grid_case(data, data.draw(st.sampled_from(("moderate", "extreme"))), HALVES)
    g = _outcome(lambda: stnkit.grid(p, family, size, ac))
    if g is not None:
        assert g.dtype == p.dtype
    bad = data.draw(st.sampled_from(WRONG))
    _must_raise(lambda: stnkit.grid(p.to(bad), family, size, ac), "params", "float", str(bad).split(".")[-1])


# ----------------------------------------------------------------------------- warp


def _warp_case(data, kind, x_dtypes=FLOATS + HALVES, p_dtypes=FLOATS):
    family = _family(data.draw)
    fam = T.get(family)
    d = fam.dim
    B = data.draw(st.integers(0, 3))
    C = data.draw(st.integers(1, 3))
    in_size = _size(data.draw, d, 1, 5 if d == 2 else 3)
    if isinstance(fam, T.Flow):
        out_size = _size(data.draw, d, 1, 4 if d == 2 else 3)
        output_size = data.draw(st.sampled_from((None, out_size)))
    else:
        out_size = _size(data.draw, d, 1, 4 if d == 2 else 3)
        output_size = data.draw(st.sampled_from((None, out_size, out_size[0], list(out_size))))
        if output_size is None:
            out_size = in_size
        elif isinstance(output_size, int):
            out_size = (output_size,) * d
    x_dtype = data.draw(st.sampled_from(x_dtypes))
    x = torch.tensor(data.draw(st.lists(moderate, min_size=1, max_size=1)) * (B * C * math.prod(in_size)))
    x = (x.reshape(B, C, *in_size) + torch.linspace(-1, 1, B * C * math.prod(in_size)).reshape(B, C, *in_size)).to(x_dtype)
    p = data.draw(params_for(family, B, out_size, data.draw(st.sampled_from(p_dtypes)), kind))
    kw = dict(
        mode=data.draw(st.sampled_from(MODES if d == 2 else MODES[:2])),
        padding_mode=data.draw(st.sampled_from(PADDINGS)),
        align_corners=data.draw(st.booleans()),
        fill=_fill(data.draw, C),
    )
    return family, fam, x, p, output_size, out_size, kw


@FAST
@given(st.data())
def test_warp_extreme_finite_params_give_finite_outputs(data):
    family, fam, x, p, output_size, out_size, kw = _warp_case(data, "extreme")
    fill = kw["fill"]
    fill_ok = fill is None or bool(torch.isfinite(torch.as_tensor(fill, dtype=torch.float64).to(x.dtype)).all())
    try:
        out = stnkit.warp(x, p, family, output_size, **kw)
    except ValueError as e:
        msg = _clear(e)
        # the only refusals: a fill that x's dtype cannot hold, a user TPS too ill-conditioned
        # for 1e30, a (B, 3, 3) homography with h33 (nearly) 0, or a homography beyond its
        # tighter limit (3e6 gain: about 1e25 in float32)
        assert not fill_ok or isinstance(family, T.TPS) or "h33" in msg or (
            family == "projective" and "magnitude" in msg), msg
        return
    assert fill_ok, f"fill {fill} accepted for {x.dtype}"
    assert out.shape == (x.shape[0], x.shape[1], *out_size) and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all()), out


@FAST
@given(st.data())
def test_warp_nonfinite_params_or_fill_raise(data):
    kind = data.draw(st.sampled_from(("nonfinite", "moderate")))
    family, fam, x, p, output_size, out_size, kw = _warp_case(data, kind, p_dtypes=FLOATS + HALVES)
    if not bool(torch.isfinite(p).all()) and x.shape[0] > 0:
        _must_raise(lambda: stnkit.warp(x, p, family, output_size, **kw), "params", "finite")
    bad_fill = data.draw(st.sampled_from(NONFINITE))
    per_channel = data.draw(st.booleans())
    if per_channel:
        bad_fill = torch.full((x.shape[1],), bad_fill)
    B = x.shape[0]
    p_ok = torch.zeros_like(p) if isinstance(fam, T.Flow) else T.get(family).identity_params(dtype=p.dtype).expand(B, -1)
    _must_raise(lambda: stnkit.warp(x, p_ok, family, output_size, **{**kw, "fill": bad_fill}), "fill", "finite")


@FAST
@given(st.data())
def test_warp_far_outside_reads_fill(data):
    """A huge translation or scale (finite) samples far outside: every pixel is `fill` exactly
    under padding "zeros" (a scale of 1e30 leaves the pixel at the centre where it is)."""
    d = data.draw(st.sampled_from((2, 3)))
    family = data.draw(st.sampled_from(("translation", "attention", "affine") if d == 2 else ("translation3d", "attention3d", "affine3d")))
    dtype = data.draw(st.sampled_from(FLOATS))
    t = data.draw(st.sampled_from((1e6, -1e6, 1e30, -1e30, 1e300 if dtype == torch.float64 else 1e8)))
    B, C = 2, data.draw(st.integers(1, 3))
    x = torch.rand(B, C, *_size(data.draw, d, 1, 4), dtype=dtype)
    p = T.identity(family, B, dtype=dtype)
    if family.startswith("affine"):
        p.view(B, d, d + 1)[:, :, d] = t  # the translation column
    else:
        p[:, -d:] = t
    fill = data.draw(st.one_of(st.none(), moderate, st.just(torch.arange(C, dtype=torch.float32))))
    mode = data.draw(st.sampled_from(MODES if d == 2 else MODES[:2]))
    ac = data.draw(st.booleans())
    # with align_corners=True an axis of one pixel reads that pixel wherever it samples (as in
    # F.grid_sample): only if every axis is 1 pixel, nothing is outside
    assume(not (ac and all(n == 1 for n in x.shape[2:])))
    out = stnkit.warp(x, p, family, mode=mode, fill=fill, align_corners=ac)
    want = torch.zeros(1, C, *([1] * d), dtype=dtype) if fill is None else torch.as_tensor(fill, dtype=dtype).reshape(1, -1, *([1] * d))
    torch.testing.assert_close(out, want.expand_as(out), rtol=1e-6, atol=1e-6)


@FAST
@given(st.data())
def test_params_too_large_for_the_sampler_raise(data):
    """Finite params beyond finfo(dtype).max * 1e-7 / (a small per-family gain) would make
    coordinates that overflow inside F.grid_sample: every function refuses them, naming the
    magnitude; up to 1e30 (float32) they work."""
    family = _family(data.draw, dims=(2, 3))
    fam = T.get(family)
    d = fam.dim
    dtype = data.draw(st.sampled_from(FLOATS))
    huge = data.draw(st.sampled_from((1e33, 3e38) if dtype == torch.float32 else (1e303, 1.7e308)))
    B = 2
    p = data.draw(params_for(family, B, (3,) * d, torch.float64)).to(dtype)
    p = p if isinstance(fam, T.Flow) else fam.canonical(p).clone()  # flat: no h33 to divide by
    flat = p.view(B, -1)
    flat[data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, flat.shape[1] - 1))] = huge
    x = torch.rand(B, 1, *([3] * d), dtype=dtype)
    _must_raise(lambda: stnkit.warp(x, p, family), "params", "magnitude")
    _must_raise(lambda: stnkit.grid(p, family, (3,) * d), "params", "magnitude")
    if family not in DENSE:
        _must_raise(lambda: stnkit.warp_points(torch.zeros(1, d, dtype=dtype), p, family), "params", "magnitude")


BAD_CASES = ("x_rank", "p_count", "p_rank", "batch", "size", "x_dtype", "mode", "x_empty", "fill")


@pytest.mark.parametrize("case", BAD_CASES)
@settings(FAST, max_examples=20)
@given(data=st.data())
def test_warp_bad_shapes_raise_clearly(case, data):
    """Wrong ranks, wrong parameter counts, mismatched batches, empty sizes, wrong dtypes."""
    family = _family(data.draw)
    fam = T.get(family)
    d = fam.dim
    B = data.draw(st.integers(1, 3))
    x = torch.rand(B, 2, *([3] * d))
    p = data.draw(params_for(family, B, (3,) * d, torch.float32))
    if case == "x_rank":
        xr = x.reshape(B, 2, -1) if data.draw(st.booleans()) else x[..., None]
        _must_raise(lambda: stnkit.warp(xr, p, family), r"\bx\b", re.escape(str(tuple(xr.shape))))
    elif case == "p_count":
        if isinstance(fam, T.Flow):
            pw = torch.zeros(B, *([3] * d), d + 1)
        else:
            flat = fam.canonical(p)
            n = data.draw(st.sampled_from((1, 5, 7, 13, flat.shape[1] + 2)))
            assume(n != flat.shape[1] and not (isinstance(fam, T.TPS) and fam._fixed_k and n in (8, 18, 32)))
            pw = torch.zeros(B, n)
        _must_raise(lambda: stnkit.warp(x, pw, family), "params", re.escape(str(tuple(pw.shape))))
    elif case == "p_rank":
        pw = data.draw(st.sampled_from((torch.zeros(()), torch.zeros(6), torch.zeros(B, 1, 1, 6), torch.zeros(B, 2, 2, 2, 2, 2))))
        _must_raise(lambda: stnkit.warp(x, pw, family), "params", re.escape(str(tuple(pw.shape))))
    elif case == "batch":
        other = data.draw(st.integers(0, 4).filter(lambda n: n != B))
        pw = data.draw(params_for(family, other, (3,) * d, torch.float32)) if other else p[:0]
        _must_raise(lambda: stnkit.warp(x, pw, family), "batch", str(B), str(other))
    elif case == "size":
        bad = data.draw(st.sampled_from((0, -1, (0,) * d, (3,) * (d + 1), (2.5,) * d, True, "big", (3,) * (d - 1) + (0,))))
        if isinstance(fam, T.Flow):
            bad = (4,) * d  # the field is 3 on every axis
        _must_raise(lambda: stnkit.warp(x, p, family, bad), "output_size|size")
    elif case == "x_dtype":
        bad = data.draw(st.sampled_from(WRONG))
        _must_raise(lambda: stnkit.warp(x.to(bad), p, family), r"\bx\b", str(bad).split(".")[-1])
    elif case == "mode":
        mode = data.draw(st.sampled_from(("area", "linear", "Bilinear", "cubic" if d == 3 else "trilinear")))
        _must_raise(lambda: stnkit.warp(x, p, family, mode=mode), "mode", mode)
    elif case == "x_empty":
        shape = list(x.shape)
        axis = data.draw(st.integers(1, d + 1))
        shape[axis] = 0
        xe = torch.zeros(shape)
        size = (3,) * d if isinstance(fam, T.Flow) else data.draw(st.sampled_from((None, (2,) * d)))
        if axis == 1:  # no channels: an empty output
            assert stnkit.warp(xe, p, family, size).shape == (B, 0, *(size or (3,) * d))
        else:  # no pixels
            _must_raise(lambda: stnkit.warp(xe, p, family, size), r"\bx\b", re.escape(str(tuple(shape))))
    else:
        bad = data.draw(st.sampled_from((torch.zeros(3), torch.zeros(2, 2), "grey", [0.1, 0.2])))
        _must_raise(lambda: stnkit.warp(x, p, family, fill=bad), "fill")


# ----------------------------------------------------------------------------- warp_points


@FAST
@given(st.data())
def test_warp_points_extreme_params(data):
    family = _family(data.draw)
    fam = T.get(family)
    d = fam.dim
    B = data.draw(st.integers(0, 3))
    N = data.draw(st.integers(0, 5))
    dtype = data.draw(st.sampled_from(FLOATS))
    kind = data.draw(st.sampled_from(("moderate", "extreme")))
    p = data.draw(params_for(family, B, (3,) * d, dtype, kind))
    spread = data.draw(st.sampled_from((1.0, 1.0, 10.0, 1e6)))
    pts = torch.tensor(data.draw(st.lists(moderate, min_size=N * d, max_size=N * d)), dtype=dtype).reshape(N, d) * spread
    if data.draw(st.booleans()):
        pts = pts.expand(B, N, d)
    out = _outcome(lambda: stnkit.warp_points(pts, p, family, align_corners=data.draw(st.booleans())))
    if out is None:
        return
    assert out.shape == (B, N, d) and out.dtype == dtype
    if isinstance(fam, T.Projective) and B and N:
        # behind the horizon (w <= PROJECTIVE_EPS): the sentinel OUTSIDE on every axis
        H = fam.canonical(p).double()
        q = pts.double().expand(B, N, d)
        w = H[:, None, 6] * q[..., 0] + H[:, None, 7] * q[..., 1] + 1
        behind = w < PROJECTIVE_EPS * 0.5
        assert (out[behind] == OUTSIDE).all()


@FAST
@given(st.data())
def test_warp_points_nonfinite_and_bad_input_raise(data):
    family = _family(data.draw)
    fam = T.get(family)
    d = fam.dim
    B = data.draw(st.integers(1, 3))
    p = data.draw(params_for(family, B, (3,) * d, torch.float32, "nonfinite"))
    pts = torch.rand(B, 4, d)
    _must_raise(lambda: stnkit.warp_points(pts, p, family), "params", "finite")
    p = data.draw(params_for(family, B, (3,) * d, torch.float32))
    bad = pts.clone()
    bad[data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, 3)), 0] = data.draw(st.sampled_from(NONFINITE))
    _must_raise(lambda: stnkit.warp_points(bad, p, family), "points", "finite")
    case = data.draw(st.sampled_from(("last", "rank", "batch", "dtype")))
    if case == "last":
        pw = torch.rand(B, 4, 5 - d)
    elif case == "rank":
        pw = data.draw(st.sampled_from((torch.rand(d), torch.rand(1, B, 4, d))))
    elif case == "batch":
        pw = torch.rand(B + 1, 4, d)
    else:
        pw = pts.to(data.draw(st.sampled_from(WRONG)))
    _must_raise(lambda: stnkit.warp_points(pw, p, family), "points")


# ----------------------------------------------------------------------------- invert


@FAST
@given(st.data())
def test_invert_extreme_params(data):
    family = _family(data.draw)
    fam = T.get(family)
    B = data.draw(st.integers(0, 3))
    dtype = data.draw(st.sampled_from(FLOATS + HALVES))
    kind = data.draw(st.sampled_from(("moderate", "extreme", "nonfinite")))
    p = data.draw(params_for(family, B, (3,) * fam.dim, dtype, kind))
    if not fam.has_inverse:
        _must_raise(lambda: stnkit.invert(p, family), "inverse|finite")
        return
    if kind == "nonfinite" and B:
        _must_raise(lambda: stnkit.invert(p, family), "params", "finite")
        return
    inv = _outcome(lambda: stnkit.invert(p, family), "invert|inverse|h33|finite|magnitude")  # 1e6 is inf in float16
    if inv is not None:
        assert inv.shape == fam.canonical(p).shape and inv.dtype == p.dtype


# ----------------------------------------------------------------------------- SpatialTransformer


class _Loc(torch.nn.Module):
    def __init__(self, in_features, weight_scale, bias):
        super().__init__()
        self.fc = torch.nn.Linear(in_features, 4)
        with torch.no_grad():
            self.fc.weight.mul_(weight_scale)
            self.fc.bias.fill_(bias)
        self.out_features = 4

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


@FAST
@given(st.data())
def test_spatial_transformer(data):
    family = data.draw(st.sampled_from(FAMILIES))
    fam = T.get(family)
    d = fam.dim
    B, C = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    in_size = _size(data.draw, d, 2, 4)
    x = torch.randn(B, C, *in_size)
    kw = dict(
        output_size=data.draw(st.sampled_from((None, 2, (3,) * d, (0,) * d))),
        mode=data.draw(st.sampled_from(MODES if d == 2 else MODES[:2])),
        padding_mode=data.draw(st.sampled_from(PADDINGS)),
        align_corners=data.draw(st.booleans()),
        fill=_fill(data.draw, C),
    )
    if data.draw(st.booleans()) and family not in DENSE:
        group = data.draw(st.sampled_from(sorted(fam.groups)))
        kw["bounds"] = {group: data.draw(st.sampled_from(((-2.0, 2.0), (0.5, 1.5), (2.0, 1.0), (-math.inf, 1.0))))}
    try:
        st_mod = stnkit.SpatialTransformer(_Loc(C * math.prod(in_size), 1.0, 0.0), family, **kw)
    except ValueError as e:
        _clear(e)
        return
    scale = data.draw(st.sampled_from((0.0, 1.0, 1e6, 1e30, 1e36, math.nan, math.inf)))
    with torch.no_grad():
        st_mod.regression.weight.normal_().mul_(scale)
    try:
        out = st_mod(x)
    except stnkit.LocalisationDiverged as e:  # NaN, Inf or far too large predictions: named, not hidden
        theta = st_mod.last_params
        far = (~torch.isfinite(theta)).any(1) | (theta.abs() > 1e24).any(1)  # projective: ~1e25
        assert e.items and far[e.items].all() and "diverged" in str(e), (e, theta)
        return
    except ValueError as e:  # e.g. an output size of 0
        _clear(e)
        return
    assert bool(torch.isfinite(out).all()), f"non-finite output: {out}"
    fill = kw["fill"]
    if scale <= 1.0 and (fill is None or bool((torch.as_tensor(fill).abs() <= 2).all())):
        out.sum().backward()
        for name, q in st_mod.named_parameters():
            assert q.grad is None or bool(torch.isfinite(q.grad).all()), name


# ----------------------------------------------------------------------------- TPS targets


@FAST
@given(st.data())
def test_tps_targets_and_coincident_points(data):
    """User targets that coincide (or are collinear) are refused at construction; coincident
    *source* points (params) are a legal, degenerate warp with finite output."""
    tps = _user_tps(data.draw)
    B = data.draw(st.integers(1, 2))
    src = torch.tensor(data.draw(st.lists(st.tuples(moderate, moderate), min_size=1, max_size=1)), dtype=torch.float64)
    p = src.expand(B, tps.K, 2).reshape(B, -1).clone()  # every control point at one source point
    if data.draw(st.booleans()):
        p = p + data.draw(params_for(tps, B, (3, 3), torch.float64, "moderate")).reshape(B, -1)
    g = _outcome(lambda: stnkit.grid(p, tps, (3, 4)))
    if g is not None:
        _outcome(lambda: stnkit.warp(torch.rand(B, 1, 4, 4, dtype=torch.float64), p, tps, mode="bicubic"))


# ----------------------------------------------------------------------------- gradients


@FAST
@given(st.data())
def test_gradients_finite_for_moderate_params(data):
    family, fam, x, p, output_size, out_size, kw = _warp_case(data, "moderate", x_dtypes=FLOATS)
    assume(x.shape[0] > 0)
    x, p = x.detach().requires_grad_(), p.detach().requires_grad_()
    out = stnkit.warp(x, p, family, output_size, **kw)
    assert bool(torch.isfinite(out).all())
    gx, gp = torch.autograd.grad(out.sum(), (x, p))
    assert bool(torch.isfinite(gx).all()) and bool(torch.isfinite(gp).all()), (gx, gp)
    if family not in DENSE:
        pts = torch.rand(5, fam.dim, dtype=p.dtype) * 2 - 1
        gp2, = torch.autograd.grad(stnkit.warp_points(pts, p, family).sum(), (p,))
        assert bool(torch.isfinite(gp2).all())


# ----------------------------------------------------------------------------- longer search


_TESTS = [
    test_grid_extreme_finite_params_give_finite_grids,
    test_params_too_large_for_the_sampler_raise,
    test_grid_nonfinite_params_raise,
    test_warp_extreme_finite_params_give_finite_outputs,
    test_warp_nonfinite_params_or_fill_raise,
    test_warp_points_extreme_params,
    test_invert_extreme_params,
    test_spatial_transformer,
    test_gradients_finite_for_moderate_params,
]


@pytest.mark.slow
@pytest.mark.parametrize("test", _TESTS, ids=lambda t: t.__name__)
def test_slow_exhaustive(test):
    SLOW(given(st.data())(test.hypothesis.inner_test))()


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CASES)
def test_slow_bad_shapes(case):
    SLOW(given(data=st.data())(test_warp_bad_shapes_raise_clearly.hypothesis.inner_test))(case=case)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("family,shape", [("flow", (1, 0, 4, 2)), ("flow", (2, 3, 0, 2)), ("flow3d", (1, 2, 0, 4, 3))])
def test_empty_flow_field_raises_for_every_function(family, shape, align_corners):
    """A field with a spatial size of 0 was a ZeroDivisionError (align_corners=False), an empty
    result (True) or a grid_sample RuntimeError (warp_points): it is a ValueError everywhere."""
    field = torch.zeros(shape)
    d = len(shape) - 2
    x = torch.rand(shape[0], 1, *([4] * d))
    pts = torch.zeros(shape[0], 3, d)
    for call in (
        lambda: stnkit.grid(field, family, None, align_corners=align_corners),
        lambda: stnkit.warp(x, field, family, align_corners=align_corners),
        lambda: stnkit.warp_points(pts, field, family, align_corners=align_corners),
    ):
        _must_raise(call, "at least one pixel", re.escape(str(shape)))
