// The pooled statistics and the gating of MA-SNN's multi-dimensional attention (layers/masnn.py), over N blocks of
// channels-last frames [N, P, C] (N = T * B frames of P = H * W pixels and C channels). Three operations, each with
// its backward, each one pass over the frames:
//
//   stats: S[n, c] = sum_p x[n, p, c],  M[n, c] = max_p x[n, p, c] (I: the first p of the maximum)
//   pool:  A[n, p] = sum_c x * w[n, c], X[n, p] = max_c x * w[n, c] (J: the first c of the maximum)
//   apply: y[n, p, c] = relu(x * w[n, c] * s[n, p])
//
// x, y and the frame gradients are fp32 or bf16 (computed in fp32); the statistics, weights and their gradients are
// fp32. The products are PyTorch's, in its order ((x * w) * s); the sums run in another order than PyTorch's.

#include "common.h"

namespace {

constexpr int LANES = 16;

// f(l, c) for c = 0 .. C-1 with lane l = c % LANES: whole rows of LANES as one vector loop, then the tail. A reduction
// over c kept in per-lane partials (the caller's arrays of LANES) vectorises without reassociating a float sum.
template <typename F>
inline void for_lanes(int64_t C, F&& f) {
  int64_t c0 = 0;
  for (; c0 + LANES <= C; c0 += LANES) {
#pragma omp simd
    for (int l = 0; l < LANES; ++l) f(l, c0 + l);
  }
  for (int l = 0; c0 + l < C; ++l) f(l, c0 + l);
}

template <typename X>
void stats_fwd(int64_t N, int64_t P, int64_t C, const X* x, float* S, float* M, int32_t* I, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    float* __restrict s = S + n * C;
    float* __restrict m = M + n * C;
    int32_t* __restrict a = I + n * C;
    for (int64_t c = 0; c < C; ++c) {
      s[c] = 0.0f;
      m[c] = -INFINITY;
      a[c] = 0;
    }
    for (int64_t p = 0; p < P; ++p) {
      const X* __restrict xp = x + (n * P + p) * C;
      const int32_t pi = static_cast<int32_t>(p);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float v = ld(xp, c);
        const bool take = (v > m[c]) || (v != v && m[c] == m[c]);  // the first maximum; a NaN wins
        s[c] += v;
        m[c] = take ? v : m[c];
        a[c] = take ? pi : a[c];
      }
    }
  }
}

// gx[n, p, c] = gS[n, c] + (p == I[n, c] ? gM[n, c] : 0)
template <typename X>
void stats_bwd(int64_t N, int64_t P, int64_t C, const float* gS, const float* gM, const int32_t* I, X* gx,
               int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const float* __restrict gs = gS + n * C;
    const float* __restrict gm = gM + n * C;
    const int32_t* __restrict a = I + n * C;
    for (int64_t p = 0; p < P; ++p) {
      X* __restrict g = gx + (n * P + p) * C;
      const int32_t pi = static_cast<int32_t>(p);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) st(g, c, gs[c] + (a[c] == pi ? gm[c] : 0.0f));
    }
  }
}

// A[n, p] = sum_c x * w, X[n, p] = max_c x * w with J its first c; the sum and maximum over c run in LANES lanes
template <typename X>
void pool_fwd(int64_t N, int64_t P, int64_t C, const X* x, const float* w, float* A, float* Mx, int32_t* J,
              int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const float* __restrict wn = w + n * C;
    for (int64_t p = 0; p < P; ++p) {
      const X* __restrict xp = x + (n * P + p) * C;
      float acc[LANES], best[LANES];
      int32_t arg[LANES];
      for (int l = 0; l < LANES; ++l) {
        acc[l] = 0.0f;
        best[l] = -INFINITY;
        arg[l] = 0;
      }
      for_lanes(C, [&](int l, int64_t c) {
        const float y = ld(xp, c) * wn[c];
        const bool take = (y > best[l]) || (y != y && best[l] == best[l]);
        acc[l] += y;
        best[l] = take ? y : best[l];
        arg[l] = take ? static_cast<int32_t>(c) : arg[l];
      });
      float sum = 0.0f, b = -INFINITY;
      int32_t a = 0;
      for (int l = 0; l < LANES && l < C; ++l) {
        sum += acc[l];
        const bool take = (best[l] > b) || (best[l] == b && arg[l] < a) || (best[l] != best[l] && b == b);
        b = take ? best[l] : b;
        a = take ? arg[l] : a;
      }
      A[n * P + p] = sum;
      Mx[n * P + p] = b;
      J[n * P + p] = a;
    }
  }
}

// With k = gA[n, p] + (c == J[n, p] ? gX[n, p] : 0): gx[n, p, c] = k * w[n, c], gw[n, c] = sum_p k * x[n, p, c]
template <typename X>
void pool_bwd(int64_t N, int64_t P, int64_t C, const X* x, const float* w, const float* gA, const float* gX,
              const int32_t* J, X* gx, float* gw, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const float* __restrict wn = w + n * C;
    float* __restrict gwn = gw + n * C;
    for (int64_t c = 0; c < C; ++c) gwn[c] = 0.0f;
    for (int64_t p = 0; p < P; ++p) {
      const X* __restrict xp = x + (n * P + p) * C;
      X* __restrict g = gx + (n * P + p) * C;
      const float ga = gA[n * P + p], gm = gX[n * P + p];
      const int64_t j = J[n * P + p];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float k = c == j ? ga + gm : ga;
        st(g, c, k * wn[c]);
        gwn[c] += k * ld(xp, c);
      }
    }
  }
}

inline float relu(float v) { return v > 0.0f ? v : (v != v ? v : 0.0f); }

template <typename X>
void apply_fwd(int64_t N, int64_t P, int64_t C, const X* x, const float* w, const float* s, X* y, int nthreads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t p = 0; p < P; ++p) {
      const float* __restrict wn = w + n * C;
      const X* __restrict xp = x + (n * P + p) * C;
      X* __restrict yp = y + (n * P + p) * C;
      const float sp = s[n * P + p];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) st(yp, c, relu(ld(xp, c) * wn[c] * sp));
    }
  }
}

// y = relu((x * w) * s): with t = g * [y > 0] * s, gx = t * w, gw[n, c] = sum_p t * x and
// gs[n, p] = sum_c (g * [y > 0]) * (x * w)
template <typename X>
void apply_bwd(int64_t N, int64_t P, int64_t C, const X* x, const float* w, const float* s, const X* gy, X* gx,
               float* gw, float* gs, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t n = 0; n < N; ++n) {
    const float* __restrict wn = w + n * C;
    float* __restrict gwn = gw + n * C;
    for (int64_t c = 0; c < C; ++c) gwn[c] = 0.0f;
    for (int64_t p = 0; p < P; ++p) {
      const X* __restrict xp = x + (n * P + p) * C;
      const X* __restrict gp = gy + (n * P + p) * C;
      X* __restrict g = gx + (n * P + p) * C;
      const float sp = s[n * P + p];
      float acc[LANES];
      for (int l = 0; l < LANES; ++l) acc[l] = 0.0f;
      for_lanes(C, [&](int l, int64_t c) {
        const float v = ld(xp, c), xw = v * wn[c];
        const float gv = xw * sp > 0.0f ? ld(gp, c) : 0.0f;
        const float t = gv * sp;
        st(g, c, t * wn[c]);
        gwn[c] += t * v;
        acc[l] += gv * xw;
      });
      float sum = 0.0f;
      for (int l = 0; l < LANES; ++l) sum += acc[l];
      gs[n * P + p] = sum;
    }
  }
}

}  // namespace

extern "C" {

// x: [N, P, C] (x_bf16 ? bf16 : float); S, M: [N, C] float; I: [N, C] int32
void sf_gate_stats_fwd(int64_t N, int64_t P, int64_t C, const void* x, int x_bf16, float* S, float* M, int32_t* I,
                       int nthreads) {
  if (x_bf16)
    stats_fwd<bf16>(N, P, C, static_cast<const bf16*>(x), S, M, I, nthreads);
  else
    stats_fwd<float>(N, P, C, static_cast<const float*>(x), S, M, I, nthreads);
}

// gS, gM: [N, C] float; gx: [N, P, C] (written whole)
void sf_gate_stats_bwd(int64_t N, int64_t P, int64_t C, const float* gS, const float* gM, const int32_t* I, void* gx,
                       int gx_bf16, int nthreads) {
  if (gx_bf16)
    stats_bwd<bf16>(N, P, C, gS, gM, I, static_cast<bf16*>(gx), nthreads);
  else
    stats_bwd<float>(N, P, C, gS, gM, I, static_cast<float*>(gx), nthreads);
}

// x: [N, P, C]; w: [N, C] float; A, Mx: [N, P] float; J: [N, P] int32
void sf_gate_pool_fwd(int64_t N, int64_t P, int64_t C, const void* x, int x_bf16, const float* w, float* A, float* Mx,
                      int32_t* J, int nthreads) {
  if (x_bf16)
    pool_fwd<bf16>(N, P, C, static_cast<const bf16*>(x), w, A, Mx, J, nthreads);
  else
    pool_fwd<float>(N, P, C, static_cast<const float*>(x), w, A, Mx, J, nthreads);
}

// gA, gX: [N, P] float; gx: [N, P, C] in x's dtype (written whole); gw: [N, C] float (written whole)
void sf_gate_pool_bwd(int64_t N, int64_t P, int64_t C, const void* x, int x_bf16, const float* w, const float* gA,
                      const float* gX, const int32_t* J, void* gx, float* gw, int nthreads) {
  if (x_bf16)
    pool_bwd<bf16>(N, P, C, static_cast<const bf16*>(x), w, gA, gX, J, static_cast<bf16*>(gx), gw, nthreads);
  else
    pool_bwd<float>(N, P, C, static_cast<const float*>(x), w, gA, gX, J, static_cast<float*>(gx), gw, nthreads);
}

// x, y: [N, P, C] of one dtype; w: [N, C], s: [N, P] float
void sf_gate_apply_fwd(int64_t N, int64_t P, int64_t C, const void* x, int x_bf16, const float* w, const float* s,
                       void* y, int nthreads) {
  if (x_bf16)
    apply_fwd<bf16>(N, P, C, static_cast<const bf16*>(x), w, s, static_cast<bf16*>(y), nthreads);
  else
    apply_fwd<float>(N, P, C, static_cast<const float*>(x), w, s, static_cast<float*>(y), nthreads);
}

// x, gy, gx: [N, P, C] of one dtype; gw: [N, C], gs: [N, P] float (written whole)
void sf_gate_apply_bwd(int64_t N, int64_t P, int64_t C, const void* x, int x_bf16, const float* w, const float* s,
                       const void* gy, void* gx, float* gw, float* gs, int nthreads) {
  if (x_bf16)
    apply_bwd<bf16>(N, P, C, static_cast<const bf16*>(x), w, s, static_cast<const bf16*>(gy), static_cast<bf16*>(gx),
                    gw, gs, nthreads);
  else
    apply_bwd<float>(N, P, C, static_cast<const float*>(x), w, s, static_cast<const float*>(gy),
                     static_cast<float*>(gx), gw, gs, nthreads);
}

}  // extern "C"
