// Deformable convolution on the CPU: the bilinear im2col, and its transpose fused with the
// offset/mask gradients, with torchvision's semantics (see stnkit/functional/deform.py).
//
// Built on first use by stnkit/kernels/deform_cpu.py with the system C++ compiler and loaded
// with ctypes: a plain C ABI, no torch headers (seconds to compile, independent of torch's ABI).
// Every call does all the work units of one chunk, on up to `threads` threads: OpenMP's, which
// are torch's own where torch uses GNU OpenMP (the loader gives this library the libgomp.so.1
// already in the process, so the threads that just ran torch's GEMM, and spin waiting for more,
// run these loops too); std::threads where the compiler has no OpenMP.
//
// Layouts. A chunk is nb batch items and output rows [r0, r0 + nr), n = nr * Wo positions; every
// pointer a kernel gets starts at the chunk's first item. Its image is channels-last with one
// extra zero pixel per item: xcl (nb, H W + 1, C); a corner outside the image reads that pixel.
// Its columns are cols (nb, groups, n, K, Cg), so that each weight group's (n, K Cg) block meets
// the weight in one GEMM, and the channels of a tap are contiguous (the inner loops run over
// channels).
//
// Where the taps sample is never stored: each work unit computes it for a block of NJ positions
// at a time (Taps below, vectorised over positions, in a scratch of about 20 KB per offset
// group that stays in cache) and uses it at once. A corner outside the image points at the zero
// pixel with all weights 0; a tap at or beyond one pixel outside has every weight 0 (it reads 0,
// and passes no gradient to its offset).
//
// geo (int64[18]): C, H, W, G, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, r0, groups, ns, nb
// (ns: slices of each item's positions in the backward, whose units are (item, slice); nb: the
// chunk's items).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#else
#include <atomic>
#include <thread>
#endif

namespace {

constexpr int64_t NJ = 32;  // positions per block of taps
constexpr int64_t GRAIN = 1 << 16;  // the least work (multiply-adds) worth a thread

// Every unit u in [0, units) (each about `work` multiply-adds) on up to `threads` threads, with
// at least GRAIN of work each. make() is called once on each thread and returns the function
// that does unit u with that thread's scratch. Units are handed out in small pieces, so that a
// thread the OS pauses (a shared machine) does not hold the others up.
template <typename F>
void parallel(int64_t units, int64_t work, int64_t threads, F&& make) {
  const int64_t n = std::max<int64_t>(1, std::min({threads, units, units * work / GRAIN}));
  const int64_t piece = std::max<int64_t>(1, units / (4 * n));
#ifdef _OPENMP
#pragma omp parallel num_threads(int(n))
  {
    auto run = make();
#pragma omp for schedule(dynamic, piece)
    for (int64_t u = 0; u < units; ++u) run(u);
  }
#else
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    auto run = make();
    for (int64_t u0; (u0 = next.fetch_add(piece)) < units;)
      for (int64_t u = u0; u < std::min(units, u0 + piece); ++u) run(u);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
#endif
}

struct Geo {
  int64_t C, H, W, G, kh, kw, Ho, Wo, sh, sw, ph, pw, dh, dw, r0, groups, ns, nb;
  int64_t K, L, P, Cg, CG;  // taps, output positions, pixels per item (the zero pixel last), channels per group and per offset group
};

Geo read(const int64_t* g) {
  Geo r{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15], g[16], g[17],
        0, 0, 0, 0, 0};
  r.K = r.kh * r.kw, r.L = r.Ho * r.Wo, r.P = r.H * r.W + 1, r.Cg = r.C / r.groups, r.CG = r.C / r.G;
  return r;
}

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

// Where the taps of a block of positions sample, structure of arrays: entry e = t * NJ + j for
// tap t = og * K + k of position j of the block. Per entry: the 4 corners' pixel indices, the
// bilinear weights w, their derivatives ay, ax with respect to y and x, and the mask value m.
template <typename T>
struct Taps {
  int64_t M;  // entries: G K NJ
  std::vector<int32_t> idx;  // (4, M)
  std::vector<T> w, ay, ax;  // (4, M) each
  std::vector<T> m;  // (M,)
  std::vector<T> by, bx;  // (NJ,): the kernel's origin in the image at each position
  explicit Taps(const Geo& g) : M(g.G * g.K * NJ), idx(4 * M), w(4 * M), ay(4 * M), ax(4 * M), m(M), by(NJ), bx(NJ) {}

  // The taps of positions [pos0, pos0 + nj) of item b (pos: index into the item's Ho Wo); the
  // derivatives ay, ax only if `grads` (the forward does not read them).
  template <bool grads>
  void fill(const T* __restrict offset, const T* __restrict mask, const Geo& g, int64_t b, int64_t pos0, int64_t nj) {
    for (int64_t j = 0; j < nj; ++j) {
      const int64_t pos = pos0 + j;
      by[j] = T((pos / g.Wo) * g.sh - g.ph), bx[j] = T((pos % g.Wo) * g.sw - g.pw);
    }
    const int32_t H = int32_t(g.H), W = int32_t(g.W), zero = int32_t(g.H * g.W);
    const T Hf = T(g.H), Wf = T(g.W), Hf1 = Hf + 1, Wf1 = Wf + 1, qnan = std::numeric_limits<T>::quiet_NaN();
    for (int64_t og = 0; og < g.G; ++og) {
      for (int64_t k = 0, i = 0; i < g.kh; ++i) for (int64_t jj = 0; jj < g.kw; ++jj, ++k) {
        const T* __restrict oy = offset + ((b * g.G + og) * 2 * g.K + 2 * k) * g.L + pos0;
        const T* __restrict ox = oy + g.L;
        const T* __restrict mk = mask ? mask + ((b * g.G + og) * g.K + k) * g.L + pos0 : nullptr;
        const T iy = T(i * g.dh), ix = T(jj * g.dw);
        const int64_t e0 = (og * g.K + k) * NJ;
        int32_t* __restrict id = idx.data() + e0;
        T *__restrict w_ = w.data() + e0, *__restrict ay_ = ay.data() + e0, *__restrict ax_ = ax.data() + e0;
        const T* __restrict by_ = by.data();
        const T* __restrict bx_ = bx.data();
        // Branch-free and written so that the compiler vectorises it over positions (no floor,
        // min or max calls: they are not vectorised without fast-math). Clamping to [-2, H + 1]
        // changes nothing inside, keeps the integer conversion defined for any float (inf,
        // 1e30) outside, and makes the truncation a floor. A NaN position makes every weight
        // NaN, as in torchvision: the output says so.
#pragma omp simd
        for (int64_t j = 0; j < nj; ++j) {
          const T y = by_[j] + iy + oy[j], x = bx_[j] + ix + ox[j];
          const T in = T((y > T(-1)) & (y < Hf) & (x > T(-1)) & (x < Wf));
          const T nan = (y == y) & (x == x) ? T(0) : qnan;
          T yc = y >= T(-2) ? y : T(-2), xc = x >= T(-2) ? x : T(-2);  // NaN -> -2
          yc = yc <= Hf1 ? yc : Hf1, xc = xc <= Wf1 ? xc : Wf1;
          const int32_t y0 = int32_t(yc + T(2)) - 2, x0 = int32_t(xc + T(2)) - 2;
          const T ly = yc - T(y0), lx = xc - T(x0), hy = T(1) - ly, hx = T(1) - lx;
          // Inside, y0 is in [-1, H - 1]: the top row is valid if y0 >= 0, the bottom one if y0 < H - 1.
          const T t = in * T(y0 >= 0), bo = in * T(y0 < H - 1), l = T(x0 >= 0), r = T(x0 < W - 1);
          const T o0 = t * l, o1 = t * r, o2 = bo * l, o3 = bo * r;
          const int32_t base = y0 * W + x0;
          id[j] = o0 != T(0) ? base : zero, id[M + j] = o1 != T(0) ? base + 1 : zero;
          id[2 * M + j] = o2 != T(0) ? base + W : zero, id[3 * M + j] = o3 != T(0) ? base + W + 1 : zero;
          w_[j] = o0 * hy * hx + nan, w_[M + j] = o1 * hy * lx + nan;
          w_[2 * M + j] = o2 * ly * hx + nan, w_[3 * M + j] = o3 * ly * lx + nan;
          if constexpr (grads) {
            ay_[j] = -o0 * hx + nan, ay_[M + j] = -o1 * lx + nan, ay_[2 * M + j] = o2 * hx + nan, ay_[3 * M + j] = o3 * lx + nan;
            ax_[j] = -o0 * hy + nan, ax_[M + j] = o1 * hy + nan, ax_[2 * M + j] = -o2 * ly + nan, ax_[3 * M + j] = o3 * ly + nan;
          }
        }
        T* __restrict m_ = m.data() + e0;
        for (int64_t j = 0; j < nj; ++j) m_[j] = mk ? mk[j] : T(1);
      }
    }
  }
};

// The channel loops, in blocks of V channels (one 64-byte vector register) and a remainder: a
// fixed-length inner loop vectorises without the peeling and tails that cost more than the
// arithmetic at the channel counts of a convolution.
template <typename T>
constexpr int64_t V = 64 / sizeof(T);

// o[c] = w0 a0[c] + w1 a1[c] + w2 a2[c] + w3 a3[c], c < C: a bilinear sample of C channels.
template <typename T>
inline void lerp4(T* __restrict o, const T* __restrict a0, const T* __restrict a1, const T* __restrict a2,
                  const T* __restrict a3, T w0, T w1, T w2, T w3, int64_t C) {
  int64_t c = 0;
  for (; c + V<T> <= C; c += V<T>) {
#pragma omp simd
    for (int64_t v = c; v < c + V<T>; ++v) o[v] = w0 * a0[v] + w1 * a1[v] + w2 * a2[v] + w3 * a3[v];
  }
  for (; c < C; ++c) o[c] = w0 * a0[c] + w1 * a1[c] + w2 * a2[c] + w3 * a3[c];
}

// gi[c] += wi s[c] (the sample's gradient s spread to its 4 corners), and d[i M + e] += sum_c s[c]
// ai[c] (its dot product with each corner's channels, into entry e of d (4, M)), c < C. The g
// pointers may meet only at the zero pixel, whose value is never read.
template <typename T>
inline void spread4(const T* __restrict s, const T* __restrict a0, const T* __restrict a1, const T* __restrict a2,
                    const T* __restrict a3, T* g0, T* g1, T* g2, T* g3, T w0, T w1, T w2, T w3, int64_t C, T* d,
                    int64_t M, int64_t e) {
  T d0 = 0, d1 = 0, d2 = 0, d3 = 0;
  int64_t c = 0;
  if (C >= V<T>) {
    T e0[V<T>] = {}, e1[V<T>] = {}, e2[V<T>] = {}, e3[V<T>] = {};
    for (; c + V<T> <= C; c += V<T>) {
#pragma omp simd
      for (int64_t v = 0; v < V<T>; ++v) {
        const T x = s[c + v];
        e0[v] += x * a0[c + v], e1[v] += x * a1[c + v], e2[v] += x * a2[c + v], e3[v] += x * a3[c + v];
        g0[c + v] += w0 * x, g1[c + v] += w1 * x, g2[c + v] += w2 * x, g3[c + v] += w3 * x;
      }
    }
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t v = 0; v < V<T>; ++v) d0 += e0[v], d1 += e1[v], d2 += e2[v], d3 += e3[v];
  }
  for (; c < C; ++c) {
    const T x = s[c];
    d0 += x * a0[c], d1 += x * a1[c], d2 += x * a2[c], d3 += x * a3[c];
    g0[c] += w0 * x, g1[c] += w1 * x, g2[c] += w2 * x, g3[c] += w3 * x;
  }
  d[e] += d0, d[M + e] += d1, d[2 * M + e] += d2, d[3 * M + e] += d3;
}

// Units: (item, block of NJ positions). cols = mask * bilinear sample. mask: whole tensor or null.
template <typename T>
void im2col(const T* __restrict xcl, const T* __restrict offset, const T* __restrict mask, const int64_t* gp,
            int64_t nr, int64_t threads, T* __restrict cols) {
  const Geo g = read(gp);
  const int64_t K = g.K, n = nr * g.Wo, C = g.C, blocks = (n + NJ - 1) / NJ;
  const Runs runs(g, 0, C);
  parallel(g.nb * blocks, 4 * C * K * NJ, threads, [&] {
    return [&, tp = Taps<T>(g)](int64_t u) mutable {
      const int64_t M = tp.M;
      const int32_t* id = tp.idx.data();
      const T *w = tp.w.data(), *mk = tp.m.data();
      const int64_t b = u / blocks, p0 = (u % blocks) * NJ, nj = std::min(NJ, n - p0);
      tp.template fill<false>(offset, mask, g, b, g.r0 * g.Wo + p0, nj);
      const T* img = xcl + b * g.P * C;
      for (int64_t og = 0; og < g.G; ++og) {
        for (const Run* r = runs.begin(og); r != runs.end(og); ++r) {
          const T* im = img + r->c0;
          for (int64_t j = 0; j < nj; ++j) {
            T* o = cols + (((b * g.groups + r->q) * n + p0 + j) * K) * g.Cg + r->c0 - r->q * g.Cg;  // tap 0, channel c0
            for (int64_t k = 0; k < K; ++k, o += g.Cg) {
              const int64_t e = (og * K + k) * NJ + j;
              const T m = mk[e];
              lerp4<T>(o, im + id[e] * C, im + id[M + e] * C, im + id[2 * M + e] * C, im + id[3 * M + e] * C,
                       m * w[e], m * w[M + e], m * w[2 * M + e], m * w[3 * M + e], r->c1 - r->c0);
            }
          }
        }
      }
    };
  });
}

// Units: (item, slice of its positions), ns slices per item. Given the columns' gradient gcols
// (d/d(masked columns)):
//  - the image gradient: gcols spread back to the taps' corners, added to image `slot` of gx
//    (P C numbers each), slot = the item when ns == 1 (gx is (nb, H W + 1, C) like xcl), else
//    the unit (gx is one image per unit, which Python adds up): no two threads write one address;
//  - the offset gradient (dy, dx) and the mask gradient of every tap, into goff (nb, 2 G K, Ho, Wo)
//    and gmask (nb, G K, Ho, Wo) or null: sums over the offset group's channels of gcols times
//    d(sample)/d(y, x), and times the unmasked sample.
template <typename T>
void col2im_coords(const T* __restrict xcl, const T* __restrict gcols, const T* __restrict offset,
                   const T* __restrict mask, const int64_t* gp, int64_t nr, int64_t threads,
                   T* __restrict gx, T* __restrict goff, T* __restrict gmask) {
  const Geo g = read(gp);
  const int64_t K = g.K, L = g.L, n = nr * g.Wo, C = g.C, ns = g.ns;
  const Runs runs(g, 0, C);
  parallel(g.nb * ns, 8 * C * K * n / ns, threads, [&] {
    // dots (4, M): gcols . each corner's channels, summed over the offset group's runs
    return [&, tp = Taps<T>(g), dots = std::vector<T>(4 * g.G * g.K * NJ)](int64_t u) mutable {
      const int64_t M = tp.M;
      const int32_t* id = tp.idx.data();
      const T *w = tp.w.data(), *ay = tp.ay.data(), *ax = tp.ax.data(), *mk = tp.m.data();
      T* d = dots.data();
      const int64_t b = u / ns, sl = u % ns;
      const T* img = xcl + b * g.P * C;
      T* gimg = gx + (ns == 1 ? b : u) * g.P * C;
      for (int64_t p0 = n * sl / ns, end = n * (sl + 1) / ns; p0 < end; p0 += NJ) {
        const int64_t nj = std::min(NJ, end - p0), pos0 = g.r0 * g.Wo + p0;
        tp.template fill<true>(offset, mask, g, b, pos0, nj);
        std::fill(dots.begin(), dots.end(), T(0));
        for (int64_t og = 0; og < g.G; ++og) {
          for (const Run* r = runs.begin(og); r != runs.end(og); ++r) {
            const T* im = img + r->c0;
            T* gi = gimg + r->c0;
            for (int64_t j = 0; j < nj; ++j) {
              const T* s = gcols + (((b * g.groups + r->q) * n + p0 + j) * K) * g.Cg + r->c0 - r->q * g.Cg;
              for (int64_t k = 0; k < K; ++k, s += g.Cg) {
                const int64_t e = (og * K + k) * NJ + j;
                const int64_t i0 = id[e] * C, i1 = id[M + e] * C, i2 = id[2 * M + e] * C, i3 = id[3 * M + e] * C;
                const T m = mk[e];
                spread4<T>(s, im + i0, im + i1, im + i2, im + i3, gi + i0, gi + i1, gi + i2, gi + i3,
                           m * w[e], m * w[M + e], m * w[2 * M + e], m * w[3 * M + e], r->c1 - r->c0, d, M, e);
              }
            }
          }
          for (int64_t k = 0; k < K; ++k) {  // the tap's sums: sample (sv), y (sy) and x (sx)
            const int64_t e0 = (og * K + k) * NJ;
            T* go = goff + ((b * g.G + og) * 2 * K + 2 * k) * L + pos0;
            T* gm = gmask ? gmask + ((b * g.G + og) * K + k) * L + pos0 : nullptr;
            for (int64_t j = 0, e = e0; j < nj; ++j, ++e) {
              const T d0 = d[e], d1 = d[M + e], d2 = d[2 * M + e], d3 = d[3 * M + e];
              const T sy = ay[e] * d0 + ay[M + e] * d1 + ay[2 * M + e] * d2 + ay[3 * M + e] * d3;
              const T sx = ax[e] * d0 + ax[M + e] * d1 + ax[2 * M + e] * d2 + ax[3 * M + e] * d3;
              go[j] = mk[e] * sy, go[L + j] = mk[e] * sx;
              if (gm) gm[j] = w[e] * d0 + w[M + e] * d1 + w[2 * M + e] * d2 + w[3 * M + e] * d3;
            }
          }
        }
      }
    };
  });
}

}  // namespace

#define STNKIT_EXPORT(T, S)                                                                                       \
  extern "C" void stnkit_dcn_im2col_##S(const T* x, const T* o, const T* m, const int64_t* g, int64_t nr,       \
                                        int64_t threads, T* cols) {                                             \
    im2col<T>(x, o, m, g, nr, threads, cols);                                                                   \
  }                                                                                                               \
  extern "C" void stnkit_dcn_col2im_coords_##S(const T* x, const T* gc, const T* o, const T* m, const int64_t* g, \
                                               int64_t nr, int64_t threads, T* gx, T* go, T* gm) {              \
    col2im_coords<T>(x, gc, o, m, g, nr, threads, gx, go, gm);                                                  \
  }

STNKIT_EXPORT(float, f32)
STNKIT_EXPORT(double, f64)

extern "C" int stnkit_dcn_abi() { return 5; }
#ifdef _OPENMP
extern "C" int stnkit_dcn_openmp() { return 1; }
#else
extern "C" int stnkit_dcn_openmp() { return 0; }
#endif
