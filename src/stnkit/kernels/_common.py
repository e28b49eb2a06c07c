"""Device functions shared by the fused warp kernels: the output pixel's normalised coordinate,
and `F.grid_sample`'s source-index rules (unnormalise, then border clip or reflection), each
with its derivative, exactly as PyTorch's `grid_sampler_compute_source_index_set_grad`.

Modes and paddings are compile-time ints: MODE 0 nearest, 1 bilinear; PAD 0 zeros, 1 border,
2 reflection.
"""
import triton
import triton.language as tl

NEAREST, BILINEAR = 0, 1
ZEROS, BORDER, REFLECTION = 0, 1, 2
MODES = {"nearest": NEAREST, "bilinear": BILINEAR}
PADDINGS = {"zeros": ZEROS, "border": BORDER, "reflection": REFLECTION}


@triton.jit
def out_coord(k, n, ALIGN: tl.constexpr):
    """Normalised centre of output pixel k (float tensor) of n along one axis, as `coords.axis`."""
    if ALIGN:
        return tl.where(n > 1, (k * 2.0) / tl.maximum(n - 1, 1) - 1.0, 0.0 * k)  # in k's dtype
    return tl.where(n > 1, (2.0 * k + 1.0) / n - 1.0, 0.0 * k)


@triton.jit
def _clip(c, n):
    """Clip to [0, n - 1] -> (value, d value / d c): the borders count as outside (grad 0)."""
    hi = (n - 1) * 1.0
    g = tl.where((c <= 0.0) | (c >= hi), 0.0, 1.0)
    return tl.minimum(tl.maximum(c, 0.0), hi), g


@triton.jit
def _reflect(c, twice_low, twice_high):
    """Reflect c into [twice_low / 2, twice_high / 2] -> (value, d value / d c)."""
    lo = twice_low * 0.5
    span = (twice_high - twice_low) * 0.5
    safe = tl.where(span > 0, span, 1.0)
    c = c - lo
    sign = tl.where(c < 0, -1.0, 1.0)
    c = tl.abs(c)
    flips = tl.floor(c / safe)
    extra = c - flips * safe
    even = (flips - 2.0 * tl.floor(flips * 0.5)) == 0.0
    out = tl.where(even, extra + lo, safe - extra + lo)
    g = tl.where(even, sign, -sign)
    return tl.where(span > 0, out, 0.0 * c), tl.where(span > 0, g, 0.0 * c)


@triton.jit
def source_index(c, n, ALIGN: tl.constexpr, PAD: tl.constexpr):
    """Normalised source coordinate c on an input axis of n pixels -> (pixel coordinate,
    d pixel / d c), padding applied as `F.grid_sample` does."""
    if ALIGN:
        scale = (n - 1) * 0.5
        p = (c + 1.0) * scale
    else:
        scale = n * 0.5
        p = ((c + 1.0) * n - 1.0) * 0.5
    g = scale + 0.0 * c
    if PAD == 1:
        p, gc = _clip(p, n)
        g = g * gc
    elif PAD == 2:
        if ALIGN:
            p, gr = _reflect(p, 0.0, 2.0 * (n - 1))
        else:
            p, gr = _reflect(p, -1.0, 2.0 * n - 1.0)
        p, gc = _clip(p, n)
        g = g * gr * gc
    return p, g


@triton.jit
def round_half_even(p):
    """nearbyint: the nearest integer, ties to even (as `F.grid_sample`'s nearest mode)."""
    r = tl.floor(p + 0.5)
    tie = (r - p) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def tap(p, k, n):
    """Integer tap index p (a float holding an integer) -> (clamped int index, inside [0, n))."""
    inside = (p >= 0.0) & (p <= (n - 1) * 1.0)
    return tl.minimum(tl.maximum(p, 0.0), (n - 1) * 1.0).to(tl.int32), inside & k


@triton.jit
def axis_taps(i, live, n):
    """Along one axis: the two taps around pixel coordinate i (clamped), whether each is inside,
    and their linear weights."""
    f = tl.floor(i)
    w1 = i - f
    i0, k0 = tap(f, live, n)
    i1, k1 = tap(f + 1.0, live, n)
    return i0, i1, k0, k1, 1.0 - w1, w1
