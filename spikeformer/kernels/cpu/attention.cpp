// Spike attention on tokens: out = (Q K^T V) * scale for every head. Q, K, V: [M, N, C] (M = T * B, N tokens), head
// h being channels h*d .. h*d+d-1 (d = C / H), so no head transposes are made. Each head's Q, K, V are loaded into
// fp32 [N, d] buffers (in cache) and multiplied with register-blocked small GEMMs, K^T V first. For 0/1 spikes every
// product and sum is a small integer, exact in fp32 with or without fused multiply-adds, so out has the values of
// any association order bit for bit; out is fp32, so that sums beyond bf16's 256 stay exact. Backward recomputes
// K^T V; its gradients equal the reference's up to fp32 summation order.

#include "common.h"

namespace {

// c[m][0:D] = sum_p A(m, p) * b[p][0:D] for m < rows, p < P, with A(m, p) = a[m * am + p * ap]; b, c rows of D.
template <int D>
void small_gemm(int64_t rows, int64_t P, const float* a, int64_t am, int64_t ap, const float* b, float* c) {
  constexpr int R = 4;
  for (int64_t m0 = 0; m0 < rows; m0 += R) {
    float acc[R][D];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < D; ++j) acc[r][j] = 0.0f;
    const int64_t mb = rows - m0 < R ? rows - m0 : R;
    for (int64_t p = 0; p < P; ++p) {
      const float* __restrict br = b + p * D;
      for (int r = 0; r < R; ++r) {
        const float ar = r < mb ? a[(m0 + r) * am + p * ap] : 0.0f;
#pragma omp simd
        for (int j = 0; j < D; ++j) acc[r][j] = madd(ar, br[j], acc[r][j]);
      }
    }
    for (int64_t r = 0; r < mb; ++r)
      for (int j = 0; j < D; ++j) c[(m0 + r) * D + j] = acc[r][j];
  }
}

template <typename X>
inline void load_head(int64_t N, int64_t C, int64_t d, const X* src, float* dst) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) dst[n * d + j] = ld(src + n * C, j);
}

template <typename X>
inline void store_head(int64_t N, int64_t C, int64_t d, const float* src, X* dst) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) st(dst + n * C, j, src[n * d + j]);
}

// one head's Q, K, V (at offset off of the [M, N, C] tokens) into fp32 [N, D] buffers, and K^T V [D, D]
template <typename X, int D>
inline void load_head_kv(int64_t N, int64_t C, int64_t off, const X* q, const X* k, const X* v, float* qh, float* kh,
                         float* vh, float* kv) {
  load_head(N, C, D, q + off, qh);
  load_head(N, C, D, k + off, kh);
  load_head(N, C, D, v + off, vh);
  small_gemm<D>(D, N, kh, 1, D, vh, kv);
}

inline void transpose_sq(int64_t d, const float* a, float* at) {
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) at[j * d + i] = a[i * d + j];
}

template <typename X, int D>
void attn_fwd(int64_t M, int64_t N, int64_t C, int64_t H, const X* q, const X* k, const X* v, float scale,
              float* out, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * H > 1)
  {
    std::vector<float> qh(N * D), kh(N * D), vh(N * D), kv(D * D), o(N * D);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < M * H; ++task) {
      const int64_t off = (task / H) * N * C + (task % H) * D;
      load_head_kv<X, D>(N, C, off, q, k, v, qh.data(), kh.data(), vh.data(), kv.data());
      small_gemm<D>(N, D, qh.data(), D, 1, kv.data(), o.data());  // Q (K^T V)
      for (int64_t n = 0; n < N; ++n) {
        float* __restrict orow = out + off + n * C;
#pragma omp simd
        for (int j = 0; j < D; ++j) orow[j] = o[n * D + j] * scale;
      }
    }
  }
}

// go: dL/dout [M, N, C] fp32; gq, gk, gv: [M, N, C] of the inputs' dtype (written whole).
template <typename X, int D>
void attn_bwd(int64_t M, int64_t N, int64_t C, int64_t H, const X* q, const X* k, const X* v, float scale,
              const float* go, X* gq, X* gk, X* gv, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * H > 1)
  {
    std::vector<float> qh(N * D), kh(N * D), vh(N * D), g(N * D), r(N * D), kv(D * D), t(D * D), dkv(D * D);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < M * H; ++task) {
      const int64_t off = (task / H) * N * C + (task % H) * D;
      load_head_kv<X, D>(N, C, off, q, k, v, qh.data(), kh.data(), vh.data(), kv.data());
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < D; ++j) g[n * D + j] = go[off + n * C + j] * scale;  // dL/d(Q K^T V)
      transpose_sq(D, kv.data(), t.data());
      small_gemm<D>(N, D, g.data(), D, 1, t.data(), r.data());     // dQ = G (K^T V)^T
      store_head(N, C, D, r.data(), gq + off);
      small_gemm<D>(D, N, qh.data(), 1, D, g.data(), dkv.data());  // d(K^T V) = Q^T G
      transpose_sq(D, dkv.data(), t.data());
      small_gemm<D>(N, D, vh.data(), D, 1, t.data(), r.data());    // dK = V d(K^T V)^T
      store_head(N, C, D, r.data(), gk + off);
      small_gemm<D>(N, D, kh.data(), D, 1, dkv.data(), r.data());  // dV = K d(K^T V)
      store_head(N, C, D, r.data(), gv + off);
    }
  }
}

// head dims with a compiled kernel (the models' 16, 32, 64); others take the PyTorch path
template <typename F>
inline bool with_head_dim(int64_t d, F&& f) {
  switch (d) {
    case 16: f(std::integral_constant<int, 16>()); return true;
    case 32: f(std::integral_constant<int, 32>()); return true;
    case 64: f(std::integral_constant<int, 64>()); return true;
    default: return false;
  }
}

}  // namespace

extern "C" {

// Spike attention (see attn_fwd): q, k, v [M, N, C] of dtype x_bf16 ? bf16 : float, out [M, N, C] float; head dim
// C / H. Returns 0 (nothing written) if the head dim has no compiled kernel, else 1.
int sf_attn_fwd(int64_t M, int64_t N, int64_t C, int64_t H, const void* q, const void* k, const void* v, int x_bf16,
                float scale, float* out, int nthreads) {
  return with_head_dim(C / H, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    if (x_bf16)
      attn_fwd<bf16, D>(M, N, C, H, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                        static_cast<const bf16*>(v), scale, out, nthreads);
    else
      attn_fwd<float, D>(M, N, C, H, static_cast<const float*>(q), static_cast<const float*>(k),
                         static_cast<const float*>(v), scale, out, nthreads);
  });
}

// go [M, N, C] float; gq, gk, gv [M, N, C] of the inputs' dtype. Returns as sf_attn_fwd.
int sf_attn_bwd(int64_t M, int64_t N, int64_t C, int64_t H, const void* q, const void* k, const void* v, int x_bf16,
                float scale, const float* go, void* gq, void* gk, void* gv, int nthreads) {
  return with_head_dim(C / H, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    if (x_bf16)
      attn_bwd<bf16, D>(M, N, C, H, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                        static_cast<const bf16*>(v), scale, go, static_cast<bf16*>(gq), static_cast<bf16*>(gk),
                        static_cast<bf16*>(gv), nthreads);
    else
      attn_bwd<float, D>(M, N, C, H, static_cast<const float*>(q), static_cast<const float*>(k),
                         static_cast<const float*>(v), scale, go, static_cast<float*>(gq), static_cast<float*>(gk),
                         static_cast<float*>(gv), nthreads);
  });
}

}  // extern "C"
