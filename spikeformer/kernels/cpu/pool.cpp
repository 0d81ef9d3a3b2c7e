// Max-pooling 3x3, stride 2, padding 1 over channels-last frames [N, H, W, C] (Spikformer's stem). The same
// results as PyTorch's channels-last kernel: the first maximum in row-major window order wins (NaN beats all), and
// backward adds the gradients of the outputs in row-major output order, rounding after each addition in the
// tensor's dtype. The argmax is stored as its offset in the 3x3 window (one byte instead of PyTorch's int64).

#include "common.h"

namespace {

// Calls f(k, ih, iw) for the positions of the window at (h0, w0) that lie inside the H x W frame, in row-major
// order; k = kh * 3 + kw is the position's offset in the 3x3 window.
template <typename F>
inline void for_window(int64_t h0, int64_t w0, int64_t H, int64_t W, F&& f) {
  for (int64_t kh = 0; kh < 3; ++kh) {
    const int64_t ih = h0 + kh;
    if (ih < 0 || ih >= H) continue;
    for (int64_t kw = 0; kw < 3; ++kw) {
      const int64_t iw = w0 + kw;
      if (iw >= 0 && iw < W) f(static_cast<uint8_t>(kh * 3 + kw), ih, iw);
    }
  }
}

template <typename X>
void pool_fwd(int64_t N, int64_t H, int64_t W, int64_t C, const X* x, X* y, uint8_t* idx, int nthreads) {
  const int64_t Ho = (H - 1) / 2 + 1, Wo = (W - 1) / 2 + 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t oh = 0; oh < Ho; ++oh) {
      std::vector<float> best(C);
      std::vector<uint8_t> arg(C);
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t h0 = 2 * oh - 1, w0 = 2 * ow - 1;
        for (int64_t c = 0; c < C; ++c) {
          best[c] = -INFINITY;
          arg[c] = static_cast<uint8_t>((h0 < 0 ? 3 : 0) + (w0 < 0 ? 1 : 0));  // the first valid position
        }
        for_window(h0, w0, H, W, [&](uint8_t k, int64_t ih, int64_t iw) {
          const X* xp = x + ((n * H + ih) * W + iw) * C;
          float* __restrict b = best.data();
          uint8_t* __restrict a = arg.data();
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float v = ld(xp, c);
            const bool take = (v > b[c]) || (v != v);
            b[c] = take ? v : b[c];
            a[c] = take ? k : a[c];
          }
        });
        const int64_t o = ((n * Ho + oh) * Wo + ow) * C;
        for (int64_t c = 0; c < C; ++c) {
          st(y, o + c, best[c]);
          if (idx) idx[o + c] = arg[c];
        }
      }
    }
  }
}

template <typename X>
void pool_bwd(int64_t N, int64_t H, int64_t W, int64_t C, const X* gy, const uint8_t* idx, X* gx, int nthreads) {
  const int64_t Ho = (H - 1) / 2 + 1, Wo = (W - 1) / 2 + 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    X* g = gx + n * H * W * C;
    std::memset(static_cast<void*>(g), 0, sizeof(X) * H * W * C);
    for (int64_t oh = 0; oh < Ho; ++oh) {
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t o = ((n * Ho + oh) * Wo + ow) * C;
        const int64_t h0 = 2 * oh - 1, w0 = 2 * ow - 1;
        const X* __restrict gyo = gy + o;
        const uint8_t* __restrict io = idx + o;
        // one vector pass per window position: adding +0 where the argmax is elsewhere leaves the (never -0)
        // gradient unchanged, so the sums and their rounding are those of a scatter in output order
        for_window(h0, w0, H, W, [&](uint8_t k, int64_t ih, int64_t iw) {
          X* __restrict gp = g + (ih * W + iw) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float add = io[c] == k ? ld(gyo, c) : 0.0f;
            st(gp, c, ld(gp, c) + add);
          }
        });
      }
    }
  }
}

}  // namespace

extern "C" {

// x: [N, H, W, C] (x_bf16 ? bf16 : float), y: [N, Ho, Wo, C] of the same dtype, idx: [N, Ho, Wo, C] bytes or null.
void sf_maxpool_fwd(int64_t N, int64_t H, int64_t W, int64_t C, const void* x, int x_bf16, void* y, uint8_t* idx,
                    int nthreads) {
  if (x_bf16)
    pool_fwd<bf16>(N, H, W, C, static_cast<const bf16*>(x), static_cast<bf16*>(y), idx, nthreads);
  else
    pool_fwd<float>(N, H, W, C, static_cast<const float*>(x), static_cast<float*>(y), idx, nthreads);
}

// gy: [N, Ho, Wo, C], idx from sf_maxpool_fwd, gx: [N, H, W, C] (written whole).
void sf_maxpool_bwd(int64_t N, int64_t H, int64_t W, int64_t C, const void* gy, int bf16_, const uint8_t* idx,
                    void* gx, int nthreads) {
  if (bf16_)
    pool_bwd<bf16>(N, H, W, C, static_cast<const bf16*>(gy), idx, static_cast<bf16*>(gx), nthreads);
  else
    pool_bwd<float>(N, H, W, C, static_cast<const float*>(gy), idx, static_cast<float*>(gx), nthreads);
}

}  // extern "C"
