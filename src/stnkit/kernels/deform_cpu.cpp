// Deformable convolution on the CPU: the bilinear im2col, its transpose (col2im) and the
// offset/mask gradients, with torchvision's semantics (see stnkit/functional/deform.py).
//
// Built on first use by stnkit/kernels/deform_cpu.py with the system C++ compiler and loaded
// with ctypes: a plain C ABI, no torch headers (seconds to compile, independent of torch's ABI).
// Every call does the work units [u0, u1) of one chunk; Python runs ranges in threads.
//
// Layouts. The image is channels-last with one extra zero pixel per item: xcl (B, H W + 1, C);
// a corner outside the image reads that pixel. A chunk is batch items [b0, b0 + nb) and output
// rows [r0, r0 + nr), n = nr * Wo positions. Its columns are cols (nb, groups, n, K, Cg), so
// that each weight group's (n, K Cg) block meets the weight in one GEMM, and the channels of a
// tap are contiguous (the inner loops run over channels). Its tap table, per (item, position,
// offset group, tap): a Tap, 4 corner pixel indices and 12 weights: the bilinear weights w,
// and ay, ax, the derivatives of the sample with respect to y and x. A corner outside the image
// points at the zero pixel with all weights 0; a tap at or beyond one pixel outside has every
// weight 0 (it reads 0, and passes no gradient to its offset).
//
// geo (int64[18]): C, H, W, G, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, b0, r0, groups, nc
// (nc: channel blocks per item in col2im, whose units are (item, block)).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

struct Geo {
  int64_t C, H, W, G, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, b0, r0, groups, nc;
  int64_t K, L, P, Cg, CG;  // taps, output positions, pixels per item (the zero pixel last), channels per group and per offset group
};

Geo read(const int64_t* g) {
  Geo r{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15], g[16], g[17],
        0, 0, 0, 0, 0};
  r.K = r.kh * r.kw, r.L = r.Ho * r.Wo, r.P = r.H * r.W + 1, r.Cg = r.C / r.groups, r.CG = r.C / r.G;
  return r;
}

// One tap's corners (pixel indices) and weights: bilinear w, and d/dy, d/dx of the sample.
// One cache line for float (64 bytes): a kernel reads a tap's entry in one go.
template <typename T>
struct Tap {
  int32_t idx[4];
  T w[4], ay[4], ax[4];
};

// A run of channels [c0, c1) within one offset group and one weight group q.
struct Run {
  int64_t c0, c1, q;
};

// The runs of channels [lo, hi) in each offset group, split where the weight group changes.
struct Runs {
  std::vector<Run> runs;
  std::vector<int64_t> start;  // runs of og: [start[og], start[og + 1])
  Runs(const Geo& g, int64_t lo, int64_t hi) : start(g.G + 1, 0) {
    for (int64_t og = 0; og < g.G; ++og) {
      start[og] = int64_t(runs.size());
      int64_t c = std::max(lo, og * g.CG);
      const int64_t end = std::min(hi, (og + 1) * g.CG);
      while (c < end) {
        const int64_t q = c / g.Cg, e = std::min(end, (q + 1) * g.Cg);
        runs.push_back(Run{c, e, q});
        c = e;
      }
    }
    start[g.G] = int64_t(runs.size());
  }
  const Run* begin(int64_t og) const { return runs.data() + start[og]; }
  const Run* end(int64_t og) const { return runs.data() + start[og + 1]; }
};

// Units: (item, position). offset: the whole (B, 2 G K, Ho, Wo) tensor.
template <typename T>
void taps(const T* __restrict offset, const int64_t* gp, int64_t nr, int64_t u0, int64_t u1,
          Tap<T>* __restrict tab) {
  const Geo g = read(gp);
  const int64_t K = g.K, L = g.L, n = nr * g.Wo, zero = g.H * g.W;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t bi = u / n, p = u % n, ho = g.r0 + p / g.Wo, wo = p % g.Wo;
    for (int64_t og = 0; og < g.G; ++og) {
      const T* oy = offset + ((g.b0 + bi) * g.G + og) * 2 * K * L + ho * g.Wo + wo;
      for (int64_t k = 0, i = 0; i < g.kh; ++i) for (int64_t j = 0; j < g.kw; ++j, ++k) {
        const T y = T(ho * g.sh - g.ph + i * g.dh) + oy[2 * k * L];
        const T x = T(wo * g.sw - g.pw + j * g.dw) + oy[(2 * k + 1) * L];
        const int64_t t = (u * g.G + og) * K + k;
        // Branch-free (random offsets make branches unpredictable). Clamping changes nothing
        // inside, and keeps the integer conversion defined for any float (inf, 1e30) outside.
        // A NaN position makes every weight NaN, as in torchvision: the output says so.
        const bool in = y > T(-1) && y < T(g.H) && x > T(-1) && x < T(g.W), num = y == y && x == x;
        const T nan = num ? T(0) : std::numeric_limits<T>::quiet_NaN();
        const T yc = num ? std::min(std::max(y, T(-2)), T(g.H + 1)) : T(-2);
        const T xc = num ? std::min(std::max(x, T(-2)), T(g.W + 1)) : T(-2);
        const T yf = std::floor(yc), xf = std::floor(xc);
        const int64_t y0 = int64_t(yf), x0 = int64_t(xf);
        const T ly = yc - yf, lx = xc - xf, hy = T(1) - ly, hx = T(1) - lx;
        // Inside, y0 is in [-1, H - 1]: the top row is valid if y0 >= 0, the bottom one if y0 < H - 1.
        const bool vy[2] = {in && y0 >= 0, in && y0 < g.H - 1}, vx[2] = {in && x0 >= 0, in && x0 < g.W - 1};
        const T bw[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
        const T by[4] = {-hx, -lx, hx, lx};
        const T bx[4] = {-hy, hy, -ly, ly};
        Tap<T>& e = tab[t];
        for (int c = 0; c < 4; ++c) {
          const bool v = vy[c >> 1] && vx[c & 1];
          const T on = T(v);
          e.idx[c] = v ? int32_t((y0 + (c >> 1)) * g.W + x0 + (c & 1)) : int32_t(zero);
          e.w[c] = on * bw[c] + nan, e.ay[c] = on * by[c] + nan, e.ax[c] = on * bx[c] + nan;
        }
      }
    }
  }
}

// The mask value of tap k of offset group og at position p of item bi (1 without a mask).
template <typename T>
T mask_at(const T* mask, const Geo& g, int64_t bi, int64_t og, int64_t k, int64_t p) {
  return mask ? mask[(((g.b0 + bi) * g.G + og) * g.K + k) * g.L + g.r0 * g.Wo + p] : T(1);
}

// Units: (item, position). cols = mask * bilinear sample. mask: whole tensor or null.
template <typename T>
void im2col(const T* __restrict xcl, const T* __restrict mask, const int64_t* gp, int64_t nr,
            int64_t u0, int64_t u1, const Tap<T>* __restrict tab, T* __restrict cols) {
  const Geo g = read(gp);
  const int64_t K = g.K, n = nr * g.Wo, C = g.C;
  const Runs runs(g, 0, C);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t bi = u / n, p = u % n;
    const T* img = xcl + (g.b0 + bi) * g.P * C;
    for (int64_t og = 0; og < g.G; ++og) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t t = (u * g.G + og) * K + k;
        const T m = mask_at(mask, g, bi, og, k, p);
        const Tap<T>& e = tab[t];
        const T w0 = m * e.w[0], w1 = m * e.w[1], w2 = m * e.w[2], w3 = m * e.w[3];
        const T *a0 = img + e.idx[0] * C, *a1 = img + e.idx[1] * C, *a2 = img + e.idx[2] * C, *a3 = img + e.idx[3] * C;
        for (const Run* r = runs.begin(og); r != runs.end(og); ++r) {
          T* o = cols + (((bi * g.groups + r->q) * n + p) * K + k) * g.Cg - r->q * g.Cg;  // o[c]: channel c
#pragma omp simd
          for (int64_t c = r->c0; c < r->c1; ++c) o[c] = w0 * a0[c] + w1 * a1[c] + w2 * a2[c] + w3 * a3[c];
        }
      }
    }
  }
}

// Units: (item, channel block). gxcl (B, H W + 1, C) += the columns' gradient spread back to the
// taps' corners. A unit owns its item's channels [c0, c1): no two threads write one address.
template <typename T>
void col2im(const T* __restrict gcols, const T* __restrict mask, const int64_t* gp, int64_t nr,
            int64_t u0, int64_t u1, const Tap<T>* __restrict tab, T* __restrict gxcl) {
  const Geo g = read(gp);
  const int64_t K = g.K, n = nr * g.Wo, C = g.C;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t bi = u / g.nc, cb = u % g.nc, lo = C * cb / g.nc, hi = C * (cb + 1) / g.nc;
    const Runs runs(g, lo, hi);
    T* img = gxcl + (g.b0 + bi) * g.P * C;
    for (int64_t p = 0; p < n; ++p) {
      for (int64_t og = lo / g.CG; og < g.G && og * g.CG < hi; ++og) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t t = ((bi * n + p) * g.G + og) * K + k;
          const T m = mask_at(mask, g, bi, og, k, p);
          const Tap<T>& e = tab[t];
          const T w0 = m * e.w[0], w1 = m * e.w[1], w2 = m * e.w[2], w3 = m * e.w[3];
          T *a0 = img + e.idx[0] * C, *a1 = img + e.idx[1] * C, *a2 = img + e.idx[2] * C, *a3 = img + e.idx[3] * C;
          for (const Run* r = runs.begin(og); r != runs.end(og); ++r) {
            const T* gc = gcols + (((bi * g.groups + r->q) * n + p) * K + k) * g.Cg - r->q * g.Cg;
            // Distinct corners are distinct pixels; only the zero pixel (weight 0) may repeat.
#pragma omp simd
            for (int64_t c = r->c0; c < r->c1; ++c) {
              a0[c] += w0 * gc[c], a1[c] += w1 * gc[c], a2[c] += w2 * gc[c], a3[c] += w3 * gc[c];
            }
          }
        }
      }
    }
  }
}

// Units: (item, position). The offset gradient (dy, dx) and the mask gradient of every tap:
// sums over the offset group's channels of the columns' gradient times d(sample)/d(y, x), and
// times the unmasked sample. goff: whole (B, 2 G K, Ho, Wo); gmask: whole (B, G K, Ho, Wo) or null.
template <typename T>
void coord_grads(const T* __restrict xcl, const T* __restrict gcols, const T* __restrict mask, const int64_t* gp,
                 int64_t nr, int64_t u0, int64_t u1, const Tap<T>* __restrict tab, T* __restrict goff,
                 T* __restrict gmask) {
  const Geo g = read(gp);
  const int64_t K = g.K, L = g.L, n = nr * g.Wo, C = g.C;
  const Runs runs(g, 0, C);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t bi = u / n, p = u % n, b = g.b0 + bi, pos = g.r0 * g.Wo + p;
    const T* img = xcl + b * g.P * C;
    for (int64_t og = 0; og < g.G; ++og) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t t = (u * g.G + og) * K + k;
        const Tap<T>& e = tab[t];
        const T *a0 = img + e.idx[0] * C, *a1 = img + e.idx[1] * C, *a2 = img + e.idx[2] * C, *a3 = img + e.idx[3] * C;
        T d0 = 0, d1 = 0, d2 = 0, d3 = 0;  // the columns' gradient . each corner's channels
        for (const Run* r = runs.begin(og); r != runs.end(og); ++r) {
          const T* gc = gcols + (((bi * g.groups + r->q) * n + p) * K + k) * g.Cg - r->q * g.Cg;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
          for (int64_t c = r->c0; c < r->c1; ++c) d0 += gc[c] * a0[c], d1 += gc[c] * a1[c], d2 += gc[c] * a2[c], d3 += gc[c] * a3[c];
        }
        const T sv = e.w[0] * d0 + e.w[1] * d1 + e.w[2] * d2 + e.w[3] * d3;
        const T sy = e.ay[0] * d0 + e.ay[1] * d1 + e.ay[2] * d2 + e.ay[3] * d3;
        const T sx = e.ax[0] * d0 + e.ax[1] * d1 + e.ax[2] * d2 + e.ax[3] * d3;
        const T m = mask_at(mask, g, bi, og, k, p);
        T* go = goff + ((b * g.G + og) * 2 * K + 2 * k) * L + pos;
        go[0] = m * sy, go[L] = m * sx;
        if (gmask) gmask[((b * g.G + og) * K + k) * L + pos] = sv;
      }
    }
  }
}

}  // namespace

#define STNKIT_EXPORT(T, S)                                                                               \
  extern "C" void stnkit_dcn_taps_##S(const T* o, const int64_t* g, int64_t nr, int64_t u0,   \
                                      int64_t u1, Tap<T>* t) { taps<T>(o, g, nr, u0, u1, t); } \
  extern "C" void stnkit_dcn_im2col_##S(const T* x, const T* m, const int64_t* g, int64_t nr, \
                                        int64_t u0, int64_t u1, const Tap<T>* t, T* cols) {  \
    im2col<T>(x, m, g, nr, u0, u1, t, cols);                                                       \
  }                                                                                                       \
  extern "C" void stnkit_dcn_col2im_##S(const T* gc, const T* m, const int64_t* g, int64_t nr, \
                                        int64_t u0, int64_t u1, const Tap<T>* t, T* gx) {    \
    col2im<T>(gc, m, g, nr, u0, u1, t, gx);                                                        \
  }                                                                                                       \
  extern "C" void stnkit_dcn_coord_grads_##S(const T* x, const T* gc, const T* m, const int64_t* g,       \
                                             int64_t nr, int64_t u0, int64_t u1,             \
                                             const Tap<T>* t, T* go, T* gm) {               \
    coord_grads<T>(x, gc, m, g, nr, u0, u1, t, go, gm);                                            \
  }

STNKIT_EXPORT(float, f32)
STNKIT_EXPORT(double, f64)

extern "C" int stnkit_dcn_abi() { return 3; }
extern "C" int64_t stnkit_dcn_tap_bytes_f32() { return sizeof(Tap<float>); }
extern "C" int64_t stnkit_dcn_tap_bytes_f64() { return sizeof(Tap<double>); }
