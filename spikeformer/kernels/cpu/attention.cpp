// Spike attention on tokens: out = (Q K^T V) * scale for every head. Q, K, V: [M, N, C] (M = T * B, N tokens), head
// h being channels h*d .. h*d+d-1 (d = C / H), so no head transposes are made. Each head's Q, K, V are loaded into
// fp32 [N, d] buffers (in cache) and multiplied with small GEMMs, K^T V first (Q K^T first for heads with few tokens,
// see few_tokens). A GEMM whose left operand is mostly
// zeros (spikes) lists each row's nonzeros and adds only their rows of the right operand, in the same order and with
// the same multiply-adds as the dense GEMM, which would add exact zeros for the rest: both give the same bits (for
// finite values: a zero times an infinite or NaN entry of the other operand is skipped, not NaN). For 0/1
// spikes every product and sum is a small integer, exact in fp32 with or without fused multiply-adds, so out has the
// values of any association order bit for bit; out is fp32, so that sums beyond bf16's 256 stay exact. Backward
// recomputes K^T V (or Q K^T); its gradients equal the reference's up to fp32 summation order.

#ifdef __AVX__
#include <immintrin.h>
#endif

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

// Bit i set where p[i] (i < n <= 8) is nonzero (or NaN).
inline uint32_t nz8(const float* p, int64_t n) {
#ifdef __AVX__
  if (n == 8)
    return static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
#endif
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m |= static_cast<uint32_t>(!(p[i] == 0.0f)) << i;
  return m;
}

// c[m][0:D] = madd(A(m, p), b[p][0:D], c[m][0:D]) over the nonzero A(m, p) in ascending p, c starting at zero:
// small_gemm's sums in small_gemm's order, less its additions of exact zeros, so the same values. The nonzeros are
// found 8 at a time along A's contiguous direction: a row of A (ap == 1) or a row of A^T (am == 1).
template <int D>
void listed_gemm(int64_t rows, int64_t P, const float* a, int64_t am, int64_t ap, const float* b, float* c) {
  for (int64_t i = 0; i < rows * D; ++i) c[i] = 0.0f;
  if (ap == 1) {  // row by row: the nonzeros of row m pick rows of b
    for (int64_t m = 0; m < rows; ++m) {
      const float* am_ = a + m * am;
      float* __restrict cm = c + m * D;
      for (int64_t p0 = 0; p0 < P; p0 += 8) {
        for (uint32_t bits = nz8(am_ + p0, P - p0 < 8 ? P - p0 : 8); bits; bits &= bits - 1) {
          const int64_t p = p0 + __builtin_ctz(bits);
          const float ar = am_[p];
          const float* __restrict bp = b + p * D;
#pragma omp simd
          for (int j = 0; j < D; ++j) cm[j] = madd(ar, bp[j], cm[j]);
        }
      }
    }
  } else {  // am == 1, token by token: the nonzeros of row p of A^T add row p of b into their rows of c
    for (int64_t p = 0; p < P; ++p) {
      const float* ap_ = a + p * ap;
      const float* __restrict bp = b + p * D;
      for (int64_t m0 = 0; m0 < rows; m0 += 8) {
        for (uint32_t bits = nz8(ap_ + m0, rows - m0 < 8 ? rows - m0 : 8); bits; bits &= bits - 1) {
          const int64_t m = m0 + __builtin_ctz(bits);
          const float ar = ap_[m];
          float* __restrict cm = c + m * D;
#pragma omp simd
          for (int j = 0; j < D; ++j) cm[j] = madd(ar, bp[j], cm[j]);
        }
      }
    }
  }
}

// The largest share of nonzeros in A at which listed_gemm beat small_gemm (AVX2,
// benchmarks/bench_attention_products.py): d = 64 up to at least 45 % (small_gemm's 4 x 64 accumulators spill),
// d = 32 below 7 %, d = 16 never (all zeros aside). Spiking Q, K and V fire at about 3 % in a Spikformer or QKFormer
// at its initial weights (BatchNorm statistics of a batch).
constexpr float listed_max_density(int D) { return D >= 64 ? 0.5f : (D >= 32 ? 0.07f : 0.0f); }

// How the products with a spike operand are chosen: by its density, or always one way (tests, benchmarks).
enum Products { AUTO = 0, DENSE = 1, LISTED = 2 };

// c = A b (as small_gemm) by listed_gemm when A, with nnz nonzeros, is sparse enough (or as mode says)
template <int D>
inline void gemm(int64_t rows, int64_t P, const float* a, int64_t am, int64_t ap, const float* b, float* c,
                 int64_t nnz, int mode) {
  const bool listed = mode == LISTED || (mode == AUTO && static_cast<float>(nnz) <=
                                                              listed_max_density(D) * static_cast<float>(rows * P));
  if (listed && (ap == 1 || am == 1))
    listed_gemm<D>(rows, P, a, am, ap, b, c);
  else
    small_gemm<D>(rows, P, a, am, ap, b, c);
}

// one head's [N, d] channels into dst; returns how many are nonzero
template <typename X>
inline int64_t load_head(int64_t N, int64_t C, int64_t d, const X* src, float* dst) {
  int64_t nnz = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) {
      const float val = ld(src + n * C, j);
      dst[n * d + j] = val;
      nnz += val != 0.0f;
    }
  return nnz;
}

// Requests into cache the N rows of one head's d channels (C apart) of a task to come. A task reads its head's rows
// at a stride of C channels, which the hardware prefetchers did not follow: half of the backward's samples were its
// first loads of the q, k and v rows (Spikformer 4-384, bf16, Intel Xeon). With the next task's rows requested,
// [4, 32, 64, 384] bf16 spikes at 10-15 %: forward 5.7 -> 3.8 ms, backward 13.5 -> 9.2 ms. The two call sites are
// written out: the same requests through one shared helper function measured 1.4-1.7x slower there (forward 6-7 ms).
template <typename T>
inline void prefetch_head(int64_t N, int64_t C, int64_t d, const T* src, bool write = false) {
  const int64_t bytes = d * static_cast<int64_t>(sizeof(T));
  for (int64_t n = 0; n < N; ++n) {
    const char* row = reinterpret_cast<const char*>(src + n * C);
    for (int64_t b = 0; b < bytes; b += 64) {
      if (write) __builtin_prefetch(row + b, 1, 3);
      else __builtin_prefetch(row + b, 0, 3);
    }
  }
}

template <typename X>
inline void store_head(int64_t N, int64_t C, int64_t d, const float* src, X* dst) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) st(dst + n * C, j, src[n * d + j]);
}

// One head's Q, K, V (at offset off of the [M, N, C] tokens) in fp32 [N, D] buffers, how many of each are nonzero,
// and K^T V [D, D].
struct Head {
  std::vector<float> q, k, v, kv;
  int64_t nq = 0, nk = 0, nv = 0;
  Head(int64_t N, int64_t D) : q(N * D), k(N * D), v(N * D), kv(D * D) {}
};

template <typename X, int D>
inline void load_head_kv(int64_t N, int64_t C, int64_t off, const X* q, const X* k, const X* v, Head& h, int mode) {
  h.nq = load_head(N, C, D, q + off, h.q.data());
  h.nk = load_head(N, C, D, k + off, h.k.data());
  h.nv = load_head(N, C, D, v + off, h.v.data());
  gemm<D>(D, N, h.k.data(), 1, D, h.v.data(), h.kv.data(), h.nk, mode);
}

inline void transpose_sq(int64_t d, const float* a, float* at) {
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) at[j * d + i] = a[i * d + j];
}

// one head's [N, D] result times scale into its channels of the fp32 output rows (C floats apart)
template <int D>
inline void store_scaled(int64_t N, int64_t C, const float* o, float scale, float* out) {
  for (int64_t n = 0; n < N; ++n) {
    float* __restrict orow = out + n * C;
#pragma omp simd
    for (int j = 0; j < D; ++j) orow[j] = o[n * D + j] * scale;
  }
}

// Heads with few tokens (2 N <= d: QKFormer's last stage at 32x32 has 4 tokens of d = 64) go through the [N, N]
// matrix S = Q K^T instead: (Q K^T) V costs 2 N^2 d multiply-adds where Q (K^T V) costs 2 N d^2, and the backward
// 5 N^2 d against 5 N d^2. For 0/1 spikes the forward's values are the same small integers (exact in any order);
// the gradients differ from the K^T V order's by fp32 summation order only.
inline bool few_tokens(int64_t N, int D) { return 2 * N <= D; }

// s[i * N + j] = a_i . b_j for the rows a_i, b_j of D floats
template <int D>
inline void row_dots(int64_t N, const float* a, const float* b, float* s) {
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const float* __restrict ai = a + i * D;
      const float* __restrict bj = b + j * D;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int d = 0; d < D; ++d) acc += ai[d] * bj[d];
      s[i * N + j] = acc;
    }
}

// c_i = sum_j A(i, j) b_j for i, j < N, with A(i, j) = a[i * ai + j * aj]; b, c rows of D floats
template <int D>
inline void row_combine(int64_t N, const float* a, int64_t ai, int64_t aj, const float* b, float* c) {
  for (int64_t i = 0; i < N; ++i) {
    float acc[D];
    for (int d = 0; d < D; ++d) acc[d] = 0.0f;
    for (int64_t j = 0; j < N; ++j) {
      const float w = a[i * ai + j * aj];
      const float* __restrict bj = b + j * D;
#pragma omp simd
      for (int d = 0; d < D; ++d) acc[d] = madd(w, bj[d], acc[d]);
    }
    for (int d = 0; d < D; ++d) c[i * D + d] = acc[d];
  }
}

// One head's Q, K, V (at offset off of the [M, N, C] tokens) in fp32 [N, D] buffers and S = Q K^T [N, N].
struct FewHead {
  std::vector<float> q, k, v, S;
  FewHead(int64_t N, int64_t D) : q(N * D), k(N * D), v(N * D), S(N * N) {}
  template <typename X, int D>
  void load(int64_t N, int64_t C, int64_t off, const X* qs, const X* ks, const X* vs) {
    load_head(N, C, D, qs + off, q.data());
    load_head(N, C, D, ks + off, k.data());
    load_head(N, C, D, vs + off, v.data());
    row_dots<D>(N, q.data(), k.data(), S.data());
  }
};

template <typename X, int D>
void attn_fwd_few(int64_t M, int64_t N, int64_t C, int64_t H, const X* q, const X* k, const X* v, float scale,
                  float* out, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * H > 1)
  {
    FewHead h(N, D);
    std::vector<float> o(N * D);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < M * H; ++task) {
      const int64_t off = (task / H) * N * C + (task % H) * D;
      h.load<X, D>(N, C, off, q, k, v);
      row_combine<D>(N, h.S.data(), N, 1, h.v.data(), o.data());      // S V
      store_scaled<D>(N, C, o.data(), scale, out + off);
    }
  }
}

template <typename X, int D>
void attn_bwd_few(int64_t M, int64_t N, int64_t C, int64_t H, const X* q, const X* k, const X* v, float scale,
                  const float* go, X* gq, X* gk, X* gv, int nthreads) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * H > 1)
  {
    FewHead h(N, D);
    std::vector<float> g(N * D), r(N * D), dS(N * N);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < M * H; ++task) {
      const int64_t off = (task / H) * N * C + (task % H) * D;
      h.load<X, D>(N, C, off, q, k, v);
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < D; ++j) g[n * D + j] = go[off + n * C + j] * scale;  // dL/d(S V)
      row_dots<D>(N, g.data(), h.v.data(), dS.data());                 // dS = G V^T
      row_combine<D>(N, h.S.data(), 1, N, g.data(), r.data());         // dV = S^T G
      store_head(N, C, D, r.data(), gv + off);
      row_combine<D>(N, dS.data(), N, 1, h.k.data(), r.data());        // dQ = dS K
      store_head(N, C, D, r.data(), gq + off);
      row_combine<D>(N, dS.data(), 1, N, h.q.data(), r.data());        // dK = dS^T Q
      store_head(N, C, D, r.data(), gk + off);
    }
  }
}

template <typename X, int D>
void attn_fwd(int64_t M, int64_t N, int64_t C, int64_t H, const X* q, const X* k, const X* v, float scale,
              float* out, int mode, int nthreads) {
  if (few_tokens(N, D)) return attn_fwd_few<X, D>(M, N, C, H, q, k, v, scale, out, nthreads);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * H > 1)
  {
    Head h(N, D);
    std::vector<float> o(N * D);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < M * H; ++task) {
      const int64_t off = (task / H) * N * C + (task % H) * D;
      if (task + 1 < M * H) {
        const int64_t next = ((task + 1) / H) * N * C + ((task + 1) % H) * D;
        prefetch_head(N, C, D, q + next);
        prefetch_head(N, C, D, k + next);
        prefetch_head(N, C, D, v + next);
        prefetch_head(N, C, D, out + next, true);  // its rows for writing: 4.8 -> 3.9 ms
      }
      load_head_kv<X, D>(N, C, off, q, k, v, h, mode);
      gemm<D>(N, D, h.q.data(), D, 1, h.kv.data(), o.data(), h.nq, mode);  // Q (K^T V)
      store_scaled<D>(N, C, o.data(), scale, out + off);
    }
  }
}

// go: dL/dout [M, N, C] fp32; gq, gk, gv: [M, N, C] of the inputs' dtype (written whole).
template <typename X, int D>
void attn_bwd(int64_t M, int64_t N, int64_t C, int64_t H, const X* q, const X* k, const X* v, float scale,
              const float* go, X* gq, X* gk, X* gv, int mode, int nthreads) {
  if (few_tokens(N, D)) return attn_bwd_few<X, D>(M, N, C, H, q, k, v, scale, go, gq, gk, gv, nthreads);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && M * H > 1)
  {
    Head h(N, D);
    std::vector<float> g(N * D), r(N * D), t(D * D), dkv(D * D);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < M * H; ++task) {
      const int64_t off = (task / H) * N * C + (task % H) * D;
      if (task + 1 < M * H) {
        const int64_t next = ((task + 1) / H) * N * C + ((task + 1) % H) * D;
        prefetch_head(N, C, D, q + next);
        prefetch_head(N, C, D, k + next);
        prefetch_head(N, C, D, v + next);
        prefetch_head(N, C, D, go + next);  // (prefetching gq, gk, gv for writing: 1.1-1.2x slower)
      }
      load_head_kv<X, D>(N, C, off, q, k, v, h, mode);
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < D; ++j) g[n * D + j] = go[off + n * C + j] * scale;  // dL/d(Q K^T V)
      transpose_sq(D, h.kv.data(), t.data());
      small_gemm<D>(N, D, g.data(), D, 1, t.data(), r.data());                     // dQ = G (K^T V)^T
      store_head(N, C, D, r.data(), gq + off);
      gemm<D>(D, N, h.q.data(), 1, D, g.data(), dkv.data(), h.nq, mode);          // d(K^T V) = Q^T G
      transpose_sq(D, dkv.data(), t.data());
      gemm<D>(N, D, h.v.data(), D, 1, t.data(), r.data(), h.nv, mode);            // dK = V d(K^T V)^T
      store_head(N, C, D, r.data(), gk + off);
      gemm<D>(N, D, h.k.data(), D, 1, dkv.data(), r.data(), h.nk, mode);          // dV = K d(K^T V)
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
                float scale, float* out, int mode, int nthreads) {
  return with_head_dim(C / H, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    if (x_bf16)
      attn_fwd<bf16, D>(M, N, C, H, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                        static_cast<const bf16*>(v), scale, out, mode, nthreads);
    else
      attn_fwd<float, D>(M, N, C, H, static_cast<const float*>(q), static_cast<const float*>(k),
                         static_cast<const float*>(v), scale, out, mode, nthreads);
  });
}

// go [M, N, C] float; gq, gk, gv [M, N, C] of the inputs' dtype. Returns as sf_attn_fwd.
int sf_attn_bwd(int64_t M, int64_t N, int64_t C, int64_t H, const void* q, const void* k, const void* v, int x_bf16,
                float scale, const float* go, void* gq, void* gk, void* gv, int mode, int nthreads) {
  return with_head_dim(C / H, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    if (x_bf16)
      attn_bwd<bf16, D>(M, N, C, H, static_cast<const bf16*>(q), static_cast<const bf16*>(k),
                        static_cast<const bf16*>(v), scale, go, static_cast<bf16*>(gq), static_cast<bf16*>(gk),
                        static_cast<bf16*>(gv), mode, nthreads);
    else
      attn_bwd<float, D>(M, N, C, H, static_cast<const float*>(q), static_cast<const float*>(k),
                         static_cast<const float*>(v), scale, go, static_cast<float*>(gq), static_cast<float*>(gk),
                         static_cast<float*>(gv), mode, nthreads);
  });
}

}  // extern "C"
