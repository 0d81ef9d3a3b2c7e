// Multi-step integrate-and-fire forward and BPTT backward for CPU, one pass over [T, N] per call; the same with a
// BatchNorm folded into the neuron's input (sf_bn_*); a 3x3/2 max-pool on channels-last frames (sf_maxpool_*);
// spike attention on tokens (sf_attn_*).
//
// Built at first use by spikeformer/neurons/_native.py with the C++ compiler found on the machine and loaded with
// ctypes (plain C ABI, no PyTorch headers, so it compiles in about a second). OpenMP resolves to the runtime
// PyTorch has already loaded, so this shares PyTorch's thread pool.
//
// Numerics: the forward performs the same float operations, in the same order and with the same rounding, as the
// pure-PyTorch kernel in _kernels.py (and the reference loop in functional.py). It is compiled with
// -ffp-contract=off so no multiply-add is fused: spikes and the final membrane are bit-identical. The backward
// computes the same expressions; the exponential of the sigmoid surrogate is a polynomial (relative error about
// 2e-7), so gradients agree within fp32 rounding, not bit for bit.
//
// Layout: every tensor is contiguous [T, N] (N = everything after time); the membrane state is float32; the
// input x, the spikes and dL/dx are float32 or bfloat16 (bf16: upper 16 bits of a float32, round to nearest even).
// Work is split over blocks of BLOCK neurons; each block runs all T steps with its membrane in L1 cache.
// Backward takes the forward's input, not its membrane: each block first re-runs the forward recursion into a
// [T, BLOCK] buffer that stays in cache (the same bits as the forward), then runs BPTT in reverse time. Autograd
// therefore keeps one [T, N] tensor per layer in the input's dtype, and no membrane is ever written to memory.

#include <cmath>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t BLOCK = 1024;

typedef uint16_t bf16;

inline float bf2f(bf16 b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 f2bf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (f != f) return 0x7FC0;
  uint32_t bias = ((u >> 16) & 1u) + 0x7FFFu;  // round to nearest, ties to even (as PyTorch)
  return static_cast<bf16>((u + bias) >> 16);
}

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const bf16* p, int64_t i) { return bf2f(p[i]); }
inline void st(float* p, int64_t i, float v) { p[i] = v; }
inline void st(bf16* p, int64_t i, float v) { p[i] = f2bf(v); }
// v rounded to the precision of the pointer's dtype (what storing and reloading it gives)
inline float rnd(const float*, float v) { return v; }
inline float rnd(const bf16*, float v) { return bf2f(f2bf(v)); }

// a * b + c, fused where the CPU has FMA (the build is per CPU). Used by the surrogate's exponential (backward) and
// the attention products (exact either way for spikes); the neuron forward keeps PyTorch's separate roundings.
inline float madd(float a, float b, float c) {
#ifdef __FMA__
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// exp(x) for the sigmoid surrogate: Cody-Waite range reduction and a degree-6 polynomial; branch-free so the
// loops vectorise. Relative error about 2e-7 on the range used (|x| <= 87).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
  // round to nearest integer: adding and subtracting 1.5 * 2^23 (exact without fast-math, vectorises everywhere)
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = madd(p, r, 1.3981999507e-3f);
  p = madd(p, r, 8.3334519073e-3f);
  p = madd(p, r, 4.1665795894e-2f);
  p = madd(p, r, 1.6666665459e-1f);
  p = madd(p, r, 5.0000001201e-1f);
  float y = madd(p * r, r, r) + 1.0f;
  int32_t e = static_cast<int32_t>(n) + 127;
  uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}


// ---------------------------------------------------------------------------------------------------------------
// Spike attention on tokens: out = (Q K^T V) * scale for every head. Q, K, V: [M, N, C] (M = T * B, N tokens), head
// h being channels h*d .. h*d+d-1 (d = C / H), so no head transposes are made. Each head's Q, K, V are loaded into
// fp32 [N, d] buffers (in cache) and multiplied with register-blocked small GEMMs, K^T V first. For 0/1 spikes every
// product and sum is a small integer, exact in fp32 with or without fused multiply-adds, so out has the values of
// any association order bit for bit; out is fp32, so that sums beyond bf16's 256 stay exact. Backward recomputes
// K^T V; its gradients equal the reference's up to fp32 summation order.

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

// The static settings of one call. Keep in sync with _native.Params.
struct SfParams {
  int64_t T, N;
  int32_t charge;     // 0 IF; 1 LIF (x - v) * rate + v; 2 LIF (x - (v - vr)) / tau + v; 3 same with * k;
                      // 4 LIF v - (v - vr) / tau + x; 5 same with * k
  int32_t hard;       // 1: hard reset to vr, 0: soft reset (subtract v_threshold)
  int32_t detach;     // detach_reset
  int32_t surrogate;  // 1 sigmoid, 2 atan
  int32_t nthreads;
  int32_t vr_zero;    // vr == 0: the charge skips the (v - vr) subtraction, as the PyTorch kernel does
  float vth, vr, tau, rate, alpha;
  float keep, in_gain;  // backward: dH[t+1]/dV[t] and dH[t]/dX[t]
  float vinit;          // the initial membrane of every neuron when v0 is null (the resting state)
};

}  // extern "C"

namespace {

inline float charge(const SfParams& p, float x, float v) {
  float h;
  switch (p.charge) {
    case 0:
      return v + x;
    case 1:
      h = x - v;
      h = h * p.rate;
      return h + v;
    case 2:
      h = x - (p.vr_zero ? v : v - p.vr);
      h = h / p.tau;
      return h + v;
    case 3:
      h = x - (p.vr_zero ? v : v - p.vr);
      h = h * p.rate;
      return h + v;
    case 4:
      h = p.vr_zero ? v : v - p.vr;
      h = h / p.tau;
      h = v - h;
      return h + x;
    default:
      h = p.vr_zero ? v : v - p.vr;
      h = h * p.rate;
      h = v - h;
      return h + x;
  }
}

// The recursion for neurons [n0, n0 + m) over all T, membrane v[m] in and out. Writes H[t] to h (row stride
// h_stride) and the spikes to s (row stride N) when they are not null. With AFF the input of neuron i is first
// mapped to x * sc[i] + sh[i], rounded to X's precision (a BatchNorm with its per-channel scale and shift; the
// rounding is that of a BatchNorm output stored in X, so the recursion sees what an unfused BN -> LIF sees).
template <typename X, int CHARGE, bool AFF>
void run_block(const SfParams& p, const X* x, int64_t n0, int64_t m, float* v, float* h, int64_t h_stride, X* s,
               const float* sc, const float* sh) {
  SfParams q = p;
  q.charge = CHARGE;
  const float vth = p.vth, vr = p.vr;
  const bool hard = p.hard != 0;
  for (int64_t t = 0; t < p.T; ++t) {
    const X* xt = x + t * p.N + n0;
    float* ht = h ? h + t * h_stride : nullptr;
    X* stt = s ? s + t * p.N + n0 : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      float xin = ld(xt, i);
      if (AFF) xin = rnd(xt, xin * sc[i] + sh[i]);
      float hv = charge(q, xin, v[i]);
      if (ht) ht[i] = hv;
      const bool fire = hv >= vth;
      if (stt) st(stt, i, fire ? 1.0f : 0.0f);
      v[i] = fire ? (hard ? vr : hv - vth) : hv;
    }
  }
}

template <typename X, bool AFF = false>
void run_block_any(const SfParams& p, const X* x, int64_t n0, int64_t m, float* v, float* h, int64_t h_stride,
                   X* s, const float* sc = nullptr, const float* sh = nullptr) {
  switch (p.charge) {
    case 0: run_block<X, 0, AFF>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 1: run_block<X, 1, AFF>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 2: run_block<X, 2, AFF>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 3: run_block<X, 3, AFF>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 4: run_block<X, 4, AFF>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    default: run_block<X, 5, AFF>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
  }
}

// One forward block: neurons [n0, n1) over all T.
template <typename X>
void fwd_block(const SfParams& p, const X* x, X* s, const float* v0, float* v_last, int64_t n0, int64_t n1) {
  float v[BLOCK];
  const int64_t m = n1 - n0;
  for (int64_t i = 0; i < m; ++i) v[i] = v0 ? v0[n0 + i] : p.vinit;
  run_block_any<X>(p, x, n0, m, v, nullptr, 0, s);
  if (v_last)
    for (int64_t i = 0; i < m; ++i) v_last[n0 + i] = v[i];
}

template <typename X>
void fwd_all(const SfParams& p, const X* x, X* s, const float* v0, float* v_last) {
  const int64_t nblocks = (p.N + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(p.nthreads) if (nblocks > 1 && p.nthreads > 1)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t n0 = b * BLOCK;
    const int64_t n1 = n0 + BLOCK < p.N ? n0 + BLOCK : p.N;
    fwd_block<X>(p, x, s, v0, v_last, n0, n1);
  }
}

template <int KIND>
inline float surrogate_grad(float alpha, float z) {
  if (KIND == 1) {  // Sigmoid: alpha * s * (1 - s), s = sigmoid(alpha z)
    float sg = 1.0f / (1.0f + exp_approx(-alpha * z));
    return alpha * sg * (1.0f - sg);
  }
  // ATan: alpha / 2 / (1 + (pi / 2 * alpha * z)^2)
  float u = 1.5707963267948966f * alpha * z;
  return alpha * 0.5f / (1.0f + u * u);
}

// dL/dH at one site; the template flags make the inner loops branch-free so they vectorise.
template <int KIND, bool HARD, bool DETACH>
inline float grad_h(float hv, float gs, float gv, float vth, float vr, float alpha) {
  const float sg = surrogate_grad<KIND>(alpha, hv - vth);
  float dvdh;
  if (HARD) {
    const float below = hv < vth ? 1.0f : 0.0f;
    dvdh = DETACH ? below : below + (vr - hv) * sg;
  } else {
    dvdh = DETACH ? 1.0f : 1.0f - vth * sg;
  }
  return gs * sg + gv * dvdh;
}

// Backward of one block: dL/dH[t] = dL/dS[t] sg(H[t] - vth) + dL/dV[t] dV[t]/dH[t], dL/dV[t-1] = keep dL/dH[t],
// dL/dX[t] = in_gain dL/dH[t]. With WANT_K (PLIF) also sum_t dL/dH[t] dH[t]/dk.
template <typename X, typename G, int KIND, bool HARD, bool DETACH, bool WANT_K>
double bwd_block(const SfParams& p, const X* x, const G* __restrict gs, const float* gv_last, X* __restrict gx,
                 float* gv0, const float* v0, int64_t n0, int64_t n1) {
  float gv[BLOCK];
  float acc[BLOCK];
  float v[BLOCK];
  float vstart[BLOCK];  // V[-1] of this block
  const int64_t m = n1 - n0;
  // H of this block for all T, recomputed from x (bit-identical to the forward's): [T, BLOCK], cache-resident
  thread_local std::vector<float> hbuf;
  if (hbuf.size() < static_cast<size_t>(p.T * BLOCK)) hbuf.resize(p.T * BLOCK);
  float* h = hbuf.data();
  for (int64_t i = 0; i < m; ++i) vstart[i] = v[i] = v0 ? v0[n0 + i] : p.vinit;
  run_block_any<X>(p, x, n0, m, v, h, BLOCK, nullptr);
  for (int64_t i = 0; i < m; ++i) {
    gv[i] = gv_last ? gv_last[n0 + i] : 0.0f;
    acc[i] = 0.0f;
  }
  const float vth = p.vth, vr = p.vr, alpha = p.alpha, keep = p.keep, gain = p.in_gain, k = p.rate;
  const bool decay = p.charge == 3;
  const int64_t N = p.N;
  for (int64_t t = p.T - 1; t >= 0; --t) {
    const int64_t base = t * N + n0;
    const float* __restrict ht = h + t * BLOCK;
    const G* __restrict gst = gs + base;
    X* __restrict gxt = gx + base;
    if (!WANT_K) {
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) {
        const float g = grad_h<KIND, HARD, DETACH>(ht[i], ld(gst, i), gv[i], vth, vr, alpha);
        st(gxt, i, g * gain);
        gv[i] = g * keep;
      }
    } else {
      // dH[t]/dk = (H[t] - V[t-1]) / k (decay_input) or -(V[t-1] - vr); V[t-1] = reset(H[t-1]), V[-1] = v0
      const float* __restrict hp = t > 0 ? h + (t - 1) * BLOCK : vstart;
      const bool first = t == 0;
#pragma omp simd
      for (int64_t i = 0; i < m; ++i) {
        const float hv = ht[i];
        const float g = grad_h<KIND, HARD, DETACH>(hv, ld(gst, i), gv[i], vth, vr, alpha);
        st(gxt, i, g * gain);
        const float q = hp[i];
        const float vp = first ? q : (q >= vth ? (HARD ? vr : q - vth) : q);
        const float dhdk = decay ? (hv - vp) / k : -(vp - vr);
        acc[i] += g * dhdk;
        gv[i] = g * keep;
      }
    }
  }
  double total = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    if (gv0) gv0[n0 + i] = gv[i];
    total += acc[i];
  }
  return total;
}

template <typename X, typename G, int KIND, bool HARD, bool DETACH, bool WANT_K>
double bwd_all(const SfParams& p, const X* x, const G* gs, const float* gv_last, X* gx, float* gv0,
               const float* v0) {
  const int64_t nblocks = (p.N + BLOCK - 1) / BLOCK;
  double total = 0.0;
#pragma omp parallel for schedule(static) num_threads(p.nthreads) if (nblocks > 1 && p.nthreads > 1) \
    reduction(+ : total)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t n0 = b * BLOCK;
    const int64_t n1 = n0 + BLOCK < p.N ? n0 + BLOCK : p.N;
    total += bwd_block<X, G, KIND, HARD, DETACH, WANT_K>(p, x, gs, gv_last, gx, gv0, v0, n0, n1);
  }
  return total;
}

template <typename X, typename G, int KIND, bool HARD, bool DETACH>
double bwd_k(const SfParams& p, const X* x, const G* gs, const float* gv_last, X* gx, float* gv0, const float* v0,
             int want_k) {
  return want_k ? bwd_all<X, G, KIND, HARD, DETACH, true>(p, x, gs, gv_last, gx, gv0, v0)
                : bwd_all<X, G, KIND, HARD, DETACH, false>(p, x, gs, gv_last, gx, gv0, v0);
}

template <typename X, typename G, int KIND>
double bwd_reset(const SfParams& p, const X* x, const G* gs, const float* gv_last, X* gx, float* gv0,
                 const float* v0, int want_k) {
  if (p.hard)
    return p.detach ? bwd_k<X, G, KIND, true, true>(p, x, gs, gv_last, gx, gv0, v0, want_k)
                    : bwd_k<X, G, KIND, true, false>(p, x, gs, gv_last, gx, gv0, v0, want_k);
  return p.detach ? bwd_k<X, G, KIND, false, true>(p, x, gs, gv_last, gx, gv0, v0, want_k)
                  : bwd_k<X, G, KIND, false, false>(p, x, gs, gv_last, gx, gv0, v0, want_k);
}

template <typename X, typename G>
double bwd_dispatch(const SfParams& p, const void* x, const void* gs, const float* gv_last, void* gx, float* gv0,
                    const float* v0, int want_k) {
  const X* xx = static_cast<const X*>(x);
  const G* gg = static_cast<const G*>(gs);
  X* gxx = static_cast<X*>(gx);
  return p.surrogate == 1 ? bwd_reset<X, G, 1>(p, xx, gg, gv_last, gxx, gv0, v0, want_k)
                          : bwd_reset<X, G, 2>(p, xx, gg, gv_last, gxx, gv0, v0, want_k);
}

// ---------------------------------------------------------------------------------------------------------------
// BatchNorm (training statistics or running statistics) fused with the neuron recursion, for inputs whose channel
// is the innermost dimension: tokens [T, ..., C] or channels-last frames [T, B, H, W, C] in memory. The neuron
// index n of the [T, N] view has channel n % C. Forward: y = x * a[c] + b[c] (a = weight * invstd, b = bias -
// mean * a), rounded to x's dtype, then the recursion; y is never written. Backward: one pass per block recomputes
// H from x, runs BPTT, writes dL/dy (rounded to x's dtype, as an unfused BN would receive it) and adds up the
// per-channel sums BatchNorm's backward needs (sum dL/dy and sum dL/dy (x - mean)); a second pass turns dL/dy into
// dL/dx in place. Autograd keeps x alone.

// Per-channel arrays of the block [n0, n0 + m) of a [.., C] layout: out[i] = src[(n0 + i) % C].
inline void gather_channels(int64_t n0, int64_t m, int64_t C, const float* src, float* out) {
  int64_t c = n0 % C, i = 0;
  while (i < m) {
    const int64_t len = (m - i) < (C - c) ? (m - i) : (C - c);
    std::memcpy(out + i, src + c, sizeof(float) * len);
    i += len;
    c = 0;
  }
}

// acc[(n0 + i) % C] += v[i]
inline void scatter_add_channels(int64_t n0, int64_t m, int64_t C, const float* v, double* acc) {
  int64_t c = n0 % C, i = 0;
  while (i < m) {
    const int64_t len = (m - i) < (C - c) ? (m - i) : (C - c);
    double* __restrict a = acc + c;
    const float* __restrict s = v + i;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) a[j] += s[j];
    i += len;
    c = 0;
  }
}

// Mean and biased variance of every channel of x [R, C]: shifted sums (the shift is row 0, so the sums stay small
// and the variance does not cancel), float over chunks of 32 rows, double across chunks and threads.
template <typename X>
void channel_stats(int64_t R, int64_t C, const X* x, double* mean, double* var, int nthreads) {
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = ld(x, c);
  const int64_t nchunks = nthreads > 1 ? nthreads : 1;
  std::vector<double> S(nchunks * C, 0.0), Q(nchunks * C, 0.0);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t r0 = R * k / nchunks, r1 = R * (k + 1) / nchunks;
    std::vector<float> s(C), q(C);
    double* __restrict Sk = S.data() + k * C;
    double* __restrict Qk = Q.data() + k * C;
    const float* __restrict sh = shift.data();
    for (int64_t r = r0; r < r1; r += 32) {
      const int64_t re = r + 32 < r1 ? r + 32 : r1;
      float* __restrict sp = s.data();
      float* __restrict qp = q.data();
      for (int64_t c = 0; c < C; ++c) sp[c] = qp[c] = 0.0f;
      for (int64_t i = r; i < re; ++i) {
        const X* xr = x + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = ld(xr, c) - sh[c];
          sp[c] += d;
          qp[c] += d * d;
        }
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        Sk[c] += sp[c];
        Qk[c] += qp[c];
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0, q = 0.0;
    for (int64_t k = 0; k < nchunks; ++k) {
      s += S[k * C + c];
      q += Q[k * C + c];
    }
    const double m = s / static_cast<double>(R);
    const double v = q / static_cast<double>(R) - m * m;
    mean[c] = shift[c] + m;
    var[c] = v > 0.0 ? v : 0.0;
  }
}

template <typename X>
void bn_fwd_all(const SfParams& p, int64_t C, const float* a, const float* b, const X* x, X* s) {
  const int64_t nblocks = (p.N + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(p.nthreads) if (nblocks > 1 && p.nthreads > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t n0 = blk * BLOCK;
    const int64_t m = (n0 + BLOCK < p.N ? n0 + BLOCK : p.N) - n0;
    float v[BLOCK], sc[BLOCK], sh[BLOCK];
    for (int64_t i = 0; i < m; ++i) v[i] = p.vinit;
    gather_channels(n0, m, C, a, sc);
    gather_channels(n0, m, C, b, sh);
    run_block_any<X, true>(p, x, n0, m, v, nullptr, 0, s, sc, sh);
  }
}

// BPTT of the neurons [n0, n1) from the resting membrane; writes dL/dy to gy and adds sum_t dL/dy and
// sum_t dL/dy (x - mean) of every neuron into its channel's entry of tg / tgx.
template <typename X, int KIND, bool HARD, bool DETACH>
void bn_bwd_block(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                  const X* __restrict gs, X* __restrict gy, int64_t n0, int64_t n1, double* tg, double* tgx) {
  float gv[BLOCK], v[BLOCK], sc[BLOCK], sh[BLOCK], mu[BLOCK], sg[BLOCK], sgx[BLOCK];
  const int64_t m = n1 - n0;
  thread_local std::vector<float> hbuf;
  if (hbuf.size() < static_cast<size_t>(p.T * BLOCK)) hbuf.resize(p.T * BLOCK);
  float* h = hbuf.data();
  gather_channels(n0, m, C, a, sc);
  gather_channels(n0, m, C, b, sh);
  gather_channels(n0, m, C, mean, mu);
  for (int64_t i = 0; i < m; ++i) {
    v[i] = p.vinit;
    gv[i] = sg[i] = sgx[i] = 0.0f;
  }
  run_block_any<X, true>(p, x, n0, m, v, h, BLOCK, nullptr, sc, sh);
  const float vth = p.vth, vr = p.vr, alpha = p.alpha, keep = p.keep, gain = p.in_gain;
  for (int64_t t = p.T - 1; t >= 0; --t) {
    const int64_t base = t * p.N + n0;
    const float* __restrict ht = h + t * BLOCK;
    const X* __restrict gst = gs + base;
    const X* __restrict xt = x + base;
    X* __restrict gyt = gy + base;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const float g = grad_h<KIND, HARD, DETACH>(ht[i], ld(gst, i), gv[i], vth, vr, alpha);
      const float d = rnd(gyt, g * gain);
      st(gyt, i, d);
      gv[i] = g * keep;
      sg[i] += d;
      sgx[i] += d * (ld(xt, i) - mu[i]);
    }
  }
  scatter_add_channels(n0, m, C, sg, tg);
  scatter_add_channels(n0, m, C, sgx, tgx);
}

template <typename X, int KIND, bool HARD, bool DETACH>
void bn_bwd_all(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                const X* gs, X* gy, double* sum_g, double* sum_gx) {
  const int64_t nblocks = (p.N + BLOCK - 1) / BLOCK;
  const int64_t nchunks = p.nthreads > 1 && nblocks > 1 ? p.nthreads : 1;
  std::vector<double> G(nchunks * C, 0.0), GX(nchunks * C, 0.0);
#pragma omp parallel for schedule(static) num_threads(p.nthreads) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    for (int64_t blk = nblocks * k / nchunks; blk < nblocks * (k + 1) / nchunks; ++blk) {
      const int64_t n0 = blk * BLOCK;
      const int64_t n1 = n0 + BLOCK < p.N ? n0 + BLOCK : p.N;
      bn_bwd_block<X, KIND, HARD, DETACH>(p, C, a, b, mean, x, gs, gy, n0, n1, G.data() + k * C,
                                          GX.data() + k * C);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double g = 0.0, gx = 0.0;
    for (int64_t k = 0; k < nchunks; ++k) {
      g += G[k * C + c];
      gx += GX[k * C + c];
    }
    sum_g[c] = g;
    sum_gx[c] = gx;
  }
}

template <typename X, int KIND>
void bn_bwd_reset(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                  const X* gs, X* gy, double* sum_g, double* sum_gx) {
  if (p.hard) {
    if (p.detach) bn_bwd_all<X, KIND, true, true>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
    else bn_bwd_all<X, KIND, true, false>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
  } else {
    if (p.detach) bn_bwd_all<X, KIND, false, true>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
    else bn_bwd_all<X, KIND, false, false>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
  }
}

template <typename X>
void bn_bwd_dispatch(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                     const X* gs, X* gy, double* sum_g, double* sum_gx) {
  if (p.surrogate == 1) bn_bwd_reset<X, 1>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
  else bn_bwd_reset<X, 2>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
}

// g [R, C] in place: g = g * A[c] + x * B[c] + D[c] (BatchNorm's input gradient from dL/dy)
template <typename X>
void bn_input_grad(int64_t R, int64_t C, const X* x, X* g, const float* A, const float* B, const float* D,
                   int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && R > 1)
  for (int64_t r = 0; r < R; ++r) {
    const X* __restrict xr = x + r * C;
    X* __restrict gr = g + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) st(gr, c, ld(gr, c) * A[c] + ld(xr, c) * B[c] + D[c]);
  }
}


// ---------------------------------------------------------------------------------------------------------------
// Max-pooling 3x3, stride 2, padding 1 over channels-last frames [N, H, W, C] (Spikformer's stem). The same
// results as PyTorch's channels-last kernel: the first maximum in row-major window order wins (NaN beats all), and
// backward adds the gradients of the outputs in row-major output order, rounding after each addition in the
// tensor's dtype. The argmax is stored as its offset in the 3x3 window (one byte instead of PyTorch's int64).

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


// ---------------------------------------------------------------------------------------------------------------
// Linear layers whose input is spikes (0/1, or the small integers of summed spikes) and mostly zero: the input is
// turned into its nonzeros, row by row (sparse_rows), and the products skip the zeros. Forward: out[r] = sum over
// the nonzeros (j, s) of row r of s * Wt[j] (Wt = W^T, [K, Nout] in the compute dtype). Weight gradient:
// dW^T[j] += s * G[r] for every nonzero (j, s) of row r. The input gradient G W is dense and stays with the BLAS. Sums are fp32 with fused
// multiply-adds; for spikes times bf16 weights every product is exact, so results differ from a dense GEMM's only by
// the order of the fp32 sums.

// Nonzeros of x [R, K] (zero: +0 and -0), row r's being col[rs[r] .. re[r]) and val[...]. Rows are split into
// nthreads chunks; chunk k stores its entries in its share of cap. Returns the number of nonzeros, or -1 when a
// chunk has more than its share (the caller then uses the dense product).
// Bit i set where element i of the 64 bytes at p is nonzero (32 bf16 or 16 float elements; -0 counts as zero).
inline uint64_t nz_mask(const bf16* p) {
#ifdef __AVX512BW__
  return _mm512_test_epi16_mask(_mm512_loadu_si512(p), _mm512_set1_epi16(0x7FFF));
#else
  uint64_t m = 0;
  for (int i = 0; i < 32; ++i) m |= static_cast<uint64_t>((p[i] & 0x7FFF) != 0) << i;
  return m;
#endif
}

inline uint64_t nz_mask(const float* p) {
#ifdef __AVX512F__
  return _mm512_test_epi32_mask(_mm512_loadu_si512(p), _mm512_set1_epi32(0x7FFFFFFF));
#else
  uint64_t m = 0;
  for (int i = 0; i < 16; ++i) {
    uint32_t u;
    std::memcpy(&u, p + i, 4);
    m |= static_cast<uint64_t>((u & 0x7FFFFFFFu) != 0) << i;
  }
  return m;
#endif
}

inline bool nonzero(bf16 b) { return (b & 0x7FFF) != 0; }
inline bool nonzero(float f) { return f != 0.0f || f != f; }

template <typename X>
int64_t sparse_rows(int64_t R, int64_t K, const X* x, int64_t cap, int64_t* rs, int64_t* re, int32_t* col,
                    float* val, int nthreads) {
  constexpr int64_t LANES = 64 / sizeof(X);
  const int64_t nchunks = nthreads > 1 && R >= nthreads ? nthreads : 1;
  // chunk k takes the blocks of 64 rows k, k + nchunks, ...: interleaved, so that each chunk sees every part of the
  // input (the first time steps of a spiking layer fire less than the last); its share of cap is its share of rows
  std::vector<int64_t> first(nchunks + 1, 0);
  for (int64_t b = 0; b * 64 < R; ++b) first[b % nchunks + 1] += (R - b * 64 < 64 ? R - b * 64 : 64);
  for (int64_t k = 0; k < nchunks; ++k) first[k + 1] += first[k];
  int64_t total = 0;
  int over = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunks > 1) reduction(+ : total) \
    reduction(| : over)
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t lo = cap * first[k] / R, hi = cap * first[k + 1] / R;
    int64_t n = lo;
    for (int64_t b = k; b * 64 < R && !over; b += nchunks) {
      const int64_t r1 = b * 64 + 64 < R ? b * 64 + 64 : R;
      for (int64_t r = b * 64; r < r1 && !over; ++r) {
        const X* row = x + r * K;
        rs[r] = n;
        int64_t j = 0;
        for (; j + LANES <= K; j += LANES) {
          uint64_t m = nz_mask(row + j);
          if (!m) continue;
          if (n + __builtin_popcountll(m) > hi) {
            over = 1;
            break;
          }
          do {
            const int e = __builtin_ctzll(m);
            col[n] = static_cast<int32_t>(j + e);
            val[n++] = ld(row, j + e);
            m &= m - 1;
          } while (m);
        }
        for (; j < K && !over; ++j) {
          if (!nonzero(row[j])) continue;
          if (n == hi) {
            over = 1;
            break;
          }
          col[n] = static_cast<int32_t>(j);
          val[n++] = ld(row, j);
        }
        re[r] = n;
      }
    }
    total += n - lo;
  }
  return over ? -1 : total;
}

// out[r, t0 .. t0 + 16 * NV) for rows [r0, r1): the accumulators of a row are NV vectors of 16 floats, held in
// registers (a vector type of GCC and Clang; split into narrower instructions where the CPU has no 512-bit ones)
typedef float vf16 __attribute__((vector_size(64)));

// acc + s * w in one fused multiply-add per lane where the CPU has 512-bit ones (for spikes times weights the product
// is exact, so fused or not gives the same sum; fused halves the instructions and the dependency chain)
inline vf16 vfma(float s, vf16 w, vf16 acc) {
#ifdef __AVX512F__
  return reinterpret_cast<vf16>(_mm512_fmadd_ps(_mm512_set1_ps(s), reinterpret_cast<__m512>(w),
                                                reinterpret_cast<__m512>(acc)));
#else
  return acc + s * w;
#endif
}

// 16 consecutive values as fp32 (weights are stored in the compute dtype: bf16 halves the bytes read per product)
inline vf16 load16(const float* p) {
  vf16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline vf16 load16(const bf16* p) {
#ifdef __AVX512F__
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return reinterpret_cast<vf16>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#else
  vf16 v;
  for (int j = 0; j < 16; ++j) v[j] = bf2f(p[j]);
  return v;
#endif
}

// o[0 .. 16 * NV) = the accumulators, rounded to O (one vectorised loop)
template <typename O, int NV>
inline void store_vectors(const vf16* acc, O* __restrict o) {
  float tmp[16 * NV];
  std::memcpy(tmp, acc, sizeof(tmp));
#pragma omp simd
  for (int j = 0; j < 16 * NV; ++j) st(o, j, tmp[j]);
}

template <typename O, int NV>
void spmm_tile(int64_t r0, int64_t r1, int64_t Nout, int64_t t0, const int64_t* rs, const int64_t* re,
               const int32_t* col, const float* val, const O* Wt, const float* bias, O* out) {
  vf16 init[NV];
  for (int v = 0; v < NV; ++v) {
    init[v] = vf16{};
    if (bias) std::memcpy(&init[v], bias + t0 + 16 * v, sizeof(vf16));
  }
  for (int64_t r = r0; r < r1; ++r) {
    vf16 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = init[v];
    for (int64_t e = rs[r]; e < re[r]; ++e) {
      const float s = val[e];
      const O* w = Wt + static_cast<int64_t>(col[e]) * Nout + t0;
      for (int v = 0; v < NV; ++v) acc[v] = vfma(s, load16(w + 16 * v), acc[v]);
    }
    store_vectors<O, NV>(acc, out + r * Nout + t0);
  }
}

// the same for a tile narrower than NT (the last columns)
template <typename O>
void spmm_tail(int64_t r0, int64_t r1, int64_t Nout, int64_t t0, int64_t w, const int64_t* rs, const int64_t* re,
               const int32_t* col, const float* val, const O* Wt, const float* bias, O* out) {
  std::vector<float> acc(w);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = 0; j < w; ++j) acc[j] = bias ? bias[t0 + j] : 0.0f;
    for (int64_t e = rs[r]; e < re[r]; ++e) {
      const float s = val[e];
      const O* w_ = Wt + static_cast<int64_t>(col[e]) * Nout + t0;
      for (int64_t j = 0; j < w; ++j) acc[j] = acc[j] + s * ld(w_, j);
    }
    for (int64_t j = 0; j < w; ++j) st(out + r * Nout + t0, j, acc[j]);
  }
}

constexpr int SP_TILE = 32;  // output columns per tile: the tile of Wt ([K, 64] fp32) stays in L2
constexpr int SP_NV = SP_TILE / 16;

template <typename O>
void spmm_fwd(int64_t R, int64_t Nout, const int64_t* rs, const int64_t* re, const int32_t* col, const float* val,
              const O* Wt, const float* bias, O* out, int nthreads) {
  const int64_t nchunks = nthreads > 1 && R >= nthreads ? nthreads : 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    const int64_t r0 = R * k / nchunks, r1 = R * (k + 1) / nchunks;
    // rows in slabs of 64 so each slab's entries stay in cache across the column tiles
    for (int64_t a = r0; a < r1; a += 64) {
      const int64_t b = a + 64 < r1 ? a + 64 : r1;
      int64_t t0 = 0;
      for (; t0 + SP_TILE <= Nout; t0 += SP_TILE) spmm_tile<O, SP_NV>(a, b, Nout, t0, rs, re, col, val, Wt, bias, out);
      if (t0 < Nout) spmm_tail<O>(a, b, Nout, t0, Nout - t0, rs, re, col, val, Wt, bias, out);
    }
  }
}

// dW [Nout, K] = sum over rows r and nonzeros (j, s) of s * G[r, :] into column j; G [R, Nout] of dtype G_.
// Each thread owns whole column tiles of Nout: the tile's [K, NT] fp32 accumulator stays in L2.
template <typename G_>
void spmm_wgrad(int64_t R, int64_t K, int64_t Nout, const int64_t* rs, const int64_t* re, const int32_t* col,
                const float* val, const G_* g, float* dw, int nthreads) {
  const int64_t ntiles = (Nout + SP_TILE - 1) / SP_TILE;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && ntiles > 1)
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t t0 = t * SP_TILE, w = Nout - t0 < SP_TILE ? Nout - t0 : SP_TILE;
    std::vector<float> accv(K * SP_TILE, 0.0f);
    float* acc = accv.data();
    float gr[SP_TILE];
    for (int64_t r = 0; r < R; ++r) {
      if (rs[r] == re[r]) continue;
      const G_* grow = g + r * Nout + t0;
      if (w == SP_TILE) {
        vf16 gv[SP_NV];
        for (int v = 0; v < SP_NV; ++v)
          for (int j = 0; j < 16; ++j) gv[v][j] = ld(grow, 16 * v + j);
        for (int64_t e = rs[r]; e < re[r]; ++e) {
          const float s = val[e];
          float* a = acc + static_cast<int64_t>(col[e]) * SP_TILE;
          for (int v = 0; v < SP_NV; ++v) {
            vf16 av;
            std::memcpy(&av, a + 16 * v, sizeof(av));
            av = vfma(s, gv[v], av);
            std::memcpy(a + 16 * v, &av, sizeof(av));
          }
        }
      } else {
        for (int64_t j = 0; j < w; ++j) gr[j] = ld(grow, j);
        for (int64_t e = rs[r]; e < re[r]; ++e) {
          const float s = val[e];
          float* a = acc + static_cast<int64_t>(col[e]) * SP_TILE;
          for (int64_t j = 0; j < w; ++j) a[j] = a[j] + s * gr[j];
        }
      }
    }
    for (int64_t o = 0; o < w; ++o) {
      float* __restrict d = dw + (t0 + o) * K;
      for (int64_t j = 0; j < K; ++j) d[j] = acc[j * SP_TILE + o];
    }
  }
}


// 3x3 convolution, stride 1, padding 1, on channels-last frames [M, H, W, Cin] whose pixels are given as their
// nonzeros (sparse_rows of the [M * H * W, Cin] view). Forward: out[p] = bias + sum over the 3x3 taps k and the
// nonzeros (c, s) of the input pixel p + offset(k) of s * Wt[k][c] (Wt [9, Cin, Cout] in the compute dtype, per
// output column tile with the accumulators in registers). Weight gradient: dW[k][c] += s * G[p] for the same triples,
// channel by channel (FrameColumns), the accumulators of a (tap, channel) pair in registers.
// f(std::integral_constant<int, nv>{}) for nv in 1..12 (the number of 16-wide accumulator vectors)
template <typename F>
inline void with_vectors(int nv, F&& f) {
  switch (nv) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    case 10: f(std::integral_constant<int, 10>{}); break;
    case 11: f(std::integral_constant<int, 11>{}); break;
    default: f(std::integral_constant<int, 12>{}); break;
  }
}

// Calls f(q, k) for the 3x3 neighbours (h + kh - 1, w + kw - 1) of pixel (h, w) of frame m that lie inside the
// H x W frame (zero padding): q is the neighbour's row in the [M * H * W] pixel list, k = kh * 3 + kw the tap.
template <typename F>
inline void for_taps(int64_t m, int64_t h, int64_t w, int64_t H, int64_t W, F&& f) {
  for (int64_t kh = 0; kh < 3; ++kh) {
    const int64_t ih = h + kh - 1;
    if (ih < 0 || ih >= H) continue;
    for (int64_t kw = 0; kw < 3; ++kw) {
      const int64_t iw = w + kw - 1;
      if (iw >= 0 && iw < W) f((m * H + ih) * W + iw, kh * 3 + kw);
    }
  }
}

template <typename O, int NV>
void sconv_tile(int64_t m, int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t t0, const int64_t* rs,
                const int64_t* re, const int32_t* col, const float* val, const O* Wt, const float* bias, O* out) {
  vf16 init[NV];
  for (int v = 0; v < NV; ++v) {
    init[v] = vf16{};
    if (bias) std::memcpy(&init[v], bias + t0 + 16 * v, sizeof(vf16));
  }
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      vf16 acc[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[v] = init[v];
      for_taps(m, h, w, H, W, [&](int64_t q, int64_t k) {
        const O* wk = Wt + k * Cin * Cout + t0;
        for (int64_t e = rs[q]; e < re[q]; ++e) {
          const float sv = val[e];
          const O* wr = wk + static_cast<int64_t>(col[e]) * Cout;
#pragma GCC unroll 12
          for (int v = 0; v < NV; ++v) acc[v] = vfma(sv, load16(wr + 16 * v), acc[v]);
        }
      });
      store_vectors<O, NV>(acc, out + ((m * H + h) * W + w) * Cout + t0);
    }
  }
}

// the same for one column (the columns beyond the last full 16-wide vector)
template <typename O>
void sconv_col(int64_t m, int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t c0, const int64_t* rs,
               const int64_t* re, const int32_t* col, const float* val, const O* Wt, const float* bias, O* out) {
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) {
      float acc = bias ? bias[c0] : 0.0f;
      for_taps(m, h, w, H, W, [&](int64_t q, int64_t k) {
        const O* wk = Wt + k * Cin * Cout + c0;
        for (int64_t e = rs[q]; e < re[q]; ++e) acc = acc + val[e] * ld(wk, static_cast<int64_t>(col[e]) * Cout);
      });
      st(out + ((m * H + h) * W + w) * Cout, c0, acc);
    }
}

template <typename O>
void sconv_fwd(int64_t M, int64_t H, int64_t W, int64_t Cin, int64_t Cout, const int64_t* rs, const int64_t* re,
               const int32_t* col, const float* val, const O* Wt, const float* bias, O* out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && M > 1)
  for (int64_t m = 0; m < M; ++m) {
    int64_t t0 = 0;
    while (t0 + 16 <= Cout) {  // as few passes over the frame as the registers allow: up to 12 vectors of 16
      const int nv = static_cast<int>((Cout - t0) / 16 < 12 ? (Cout - t0) / 16 : 12);
      with_vectors(nv, [&](auto c) {
        sconv_tile<O, decltype(c)::value>(m, H, W, Cin, Cout, t0, rs, re, col, val, Wt, bias, out);
      });
      t0 += 16 * nv;
    }
    for (; t0 < Cout; ++t0) sconv_col<O>(m, H, W, Cin, Cout, t0, rs, re, col, val, Wt, bias, out);
  }
}

// The nonzeros of one frame by input channel (the transpose of its rows' lists): channel c's entries are
// [first[c], first[c + 1]) of h / w (the pixel) and s (the value).
struct FrameColumns {
  std::vector<int64_t> first;
  std::vector<int16_t> h, w;
  std::vector<float> s;

  void build(int64_t q0, int64_t H, int64_t W, int64_t Cin, const int64_t* rs, const int64_t* re, const int32_t* col,
             const float* val) {
    first.assign(Cin + 1, 0);
    int64_t n = 0;
    for (int64_t q = 0; q < H * W; ++q) {
      n += re[q0 + q] - rs[q0 + q];
      for (int64_t e = rs[q0 + q]; e < re[q0 + q]; ++e) ++first[col[e] + 1];
    }
    for (int64_t c = 0; c < Cin; ++c) first[c + 1] += first[c];
    h.resize(n);
    w.resize(n);
    s.resize(n);
    std::vector<int64_t> pos(first.begin(), first.end() - 1);
    for (int64_t q = 0; q < H * W; ++q)
      for (int64_t e = rs[q0 + q]; e < re[q0 + q]; ++e) {
        const int64_t i = pos[col[e]]++;
        h[i] = static_cast<int16_t>(q / W);
        w[i] = static_cast<int16_t>(q % W);
        s[i] = val[e];
      }
  }
};

// acc[k][c][t0 .. t0 + 16 * NV) += sum over channel c's nonzeros (q, s) of frame m of s * G[q - offset(k)]: the
// accumulators of one (tap, channel) pair in registers, the frame's G rows read from cache
template <typename G_, int NV>
void sconv_wgrad_tile(const FrameColumns& fc, int64_t m, int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t t0,
                      const G_* g, float* acc) {
  const G_* gm = g + m * H * W * Cout + t0;
  for (int64_t c = 0; c < Cin; ++c) {
    const int64_t e0 = fc.first[c], e1 = fc.first[c + 1];
    if (e0 == e1) continue;
    for (int64_t kh = 0; kh < 3; ++kh)
      for (int64_t kw = 0; kw < 3; ++kw) {
        vf16 a[NV];
        for (int v = 0; v < NV; ++v) a[v] = vf16{};
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t h = fc.h[e] - kh + 1, w = fc.w[e] - kw + 1;
          if (h < 0 || h >= H || w < 0 || w >= W) continue;
          const G_* gp = gm + (h * W + w) * Cout;
          const float sv = fc.s[e];
#pragma GCC unroll 12
          for (int v = 0; v < NV; ++v) a[v] = vfma(sv, load16(gp + 16 * v), a[v]);
        }
        float* ak = acc + ((kh * 3 + kw) * Cin + c) * Cout + t0;
        for (int v = 0; v < NV; ++v) {
          vf16 av = load16(ak + 16 * v);
          av += a[v];
          std::memcpy(ak + 16 * v, &av, sizeof(av));
        }
      }
  }
}

// the same for one column
template <typename G_>
void sconv_wgrad_col(const FrameColumns& fc, int64_t m, int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t o,
                     const G_* g, float* acc) {
  const G_* gm = g + m * H * W * Cout + o;
  for (int64_t c = 0; c < Cin; ++c)
    for (int64_t kh = 0; kh < 3; ++kh)
      for (int64_t kw = 0; kw < 3; ++kw) {
        float a = 0.0f;
        for (int64_t e = fc.first[c]; e < fc.first[c + 1]; ++e) {
          const int64_t h = fc.h[e] - kh + 1, w = fc.w[e] - kw + 1;
          if (h < 0 || h >= H || w < 0 || w >= W) continue;
          a = a + fc.s[e] * ld(gm, (h * W + w) * Cout);
        }
        acc[((kh * 3 + kw) * Cin + c) * Cout + o] += a;
      }
}

// dW [Cout, Cin, 3, 3] fp32 (PyTorch's layout). Each thread sums its frames into its own [9, Cin, Cout] accumulator;
// the accumulators are added at the end.
template <typename G_>
void sconv_wgrad(int64_t M, int64_t H, int64_t W, int64_t Cin, int64_t Cout, const int64_t* rs, const int64_t* re,
                 const int32_t* col, const float* val, const G_* g, float* dw, int nthreads) {
  const int64_t nchunks = nthreads > 1 && M >= nthreads ? nthreads : 1;
  const int64_t KC = 9 * Cin;
  std::vector<float> accs(nchunks * KC * Cout, 0.0f);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    float* acc = accs.data() + k * KC * Cout;
    FrameColumns fc;
    for (int64_t m = M * k / nchunks; m < M * (k + 1) / nchunks; ++m) {
      fc.build(m * H * W, H, W, Cin, rs, re, col, val);
      int64_t t0 = 0;
      while (t0 + 16 <= Cout) {
        const int nv = static_cast<int>((Cout - t0) / 16 < 12 ? (Cout - t0) / 16 : 12);
        with_vectors(nv, [&](auto c) { sconv_wgrad_tile<G_, decltype(c)::value>(fc, m, H, W, Cin, Cout, t0, g, acc); });
        t0 += 16 * nv;
      }
      for (; t0 < Cout; ++t0) sconv_wgrad_col<G_>(fc, m, H, W, Cin, Cout, t0, g, acc);
    }
  }
  // dW[o][c][k] = sum over chunks of acc[k * Cin + c][o]
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t o = 0; o < Cout; ++o)
    for (int64_t c = 0; c < Cin; ++c)
      for (int64_t kk = 0; kk < 9; ++kk) {
        float sum = 0.0f;
        for (int64_t k = 0; k < nchunks; ++k) sum += accs[(k * KC + kk * Cin + c) * Cout + o];
        dw[(o * Cin + c) * 9 + kk] = sum;
      }
}

}  // namespace

extern "C" {

int sf_abi_version() { return 8; }

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

// x, s: [T, N] of dtype x_bf16 ? bf16 : float; v0, v_last: [N] float, or null (start every neuron at p->vinit;
// do not write the final membrane).
void sf_forward(const SfParams* p, const void* x, int x_bf16, void* s, const float* v0, float* v_last) {
  if (x_bf16)
    fwd_all<bf16>(*p, static_cast<const bf16*>(x), static_cast<bf16*>(s), v0, v_last);
  else
    fwd_all<float>(*p, static_cast<const float*>(x), static_cast<float*>(s), v0, v_last);
}

// Backward from the forward's input: x [T, N] and v0 [N] (or null) are those of sf_forward; H is recomputed block
// by block.
// gs: [T, N] (gs_bf16 ? bf16 : float), never null (pass zeros); gv_last: [N] float or null; gx: [T, N] of x's
// dtype; gv0: [N] float or null. Returns sum_t,n dL/dH dH/dk when want_k (PLIF), else 0.
double sf_backward(const SfParams* p, const void* x, int x_bf16, const float* v0, const void* gs, int gs_bf16,
                   const float* gv_last, void* gx, float* gv0, int want_k) {
  if (x_bf16)
    return gs_bf16 ? bwd_dispatch<bf16, bf16>(*p, x, gs, gv_last, gx, gv0, v0, want_k)
                   : bwd_dispatch<bf16, float>(*p, x, gs, gv_last, gx, gv0, v0, want_k);
  return gs_bf16 ? bwd_dispatch<float, bf16>(*p, x, gs, gv_last, gx, gv0, v0, want_k)
                 : bwd_dispatch<float, float>(*p, x, gs, gv_last, gx, gv0, v0, want_k);
}

// BatchNorm + neuron (see above); x, s, gs, gy: [T, N] with N = (...) * C, the channel innermost, all of
// x's dtype. mean, var: [C] double (biased variance).
void sf_channel_stats(int64_t R, int64_t C, const void* x, int x_bf16, double* mean, double* var, int nthreads) {
  if (x_bf16)
    channel_stats<bf16>(R, C, static_cast<const bf16*>(x), mean, var, nthreads);
  else
    channel_stats<float>(R, C, static_cast<const float*>(x), mean, var, nthreads);
}

// Spikes of the neuron (from the resting membrane) driven by y = x * a[c] + b[c].
void sf_bn_forward(const SfParams* p, int64_t C, const float* a, const float* b, const void* x, int x_bf16,
                   void* s) {
  if (x_bf16)
    bn_fwd_all<bf16>(*p, C, a, b, static_cast<const bf16*>(x), static_cast<bf16*>(s));
  else
    bn_fwd_all<float>(*p, C, a, b, static_cast<const float*>(x), static_cast<float*>(s));
}

// dL/dy into gy, and per channel sum dL/dy (sum_g) and sum dL/dy (x - mean[c]) (sum_gx), both [C] double.
void sf_bn_backward(const SfParams* p, int64_t C, const float* a, const float* b, const float* mean, const void* x,
                    int x_bf16, const void* gs, void* gy, double* sum_g, double* sum_gx) {
  if (x_bf16)
    bn_bwd_dispatch<bf16>(*p, C, a, b, mean, static_cast<const bf16*>(x), static_cast<const bf16*>(gs),
                          static_cast<bf16*>(gy), sum_g, sum_gx);
  else
    bn_bwd_dispatch<float>(*p, C, a, b, mean, static_cast<const float*>(x), static_cast<const float*>(gs),
                           static_cast<float*>(gy), sum_g, sum_gx);
}

// g [R, C] (dL/dy in, dL/dx out, in place) = g * A[c] + x * B[c] + D[c].
void sf_bn_input_grad(int64_t R, int64_t C, const void* x, int x_bf16, void* g, const float* A, const float* B,
                      const float* D, int nthreads) {
  if (x_bf16)
    bn_input_grad<bf16>(R, C, static_cast<const bf16*>(x), static_cast<bf16*>(g), A, B, D, nthreads);
  else
    bn_input_grad<float>(R, C, static_cast<const float*>(x), static_cast<float*>(g), A, B, D, nthreads);
}

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


// Nonzeros of x [R, K] (x_bf16 ? bf16 : float) into rs/re [R] and col/val [cap], see sparse_rows. Returns their
// number, or -1 if there are more than about cap.
int64_t sf_sparse_rows(int64_t R, int64_t K, const void* x, int x_bf16, int64_t cap, int64_t* rs, int64_t* re,
                       int32_t* col, float* val, int nthreads) {
  if (x_bf16) return sparse_rows<bf16>(R, K, static_cast<const bf16*>(x), cap, rs, re, col, val, nthreads);
  return sparse_rows<float>(R, K, static_cast<const float*>(x), cap, rs, re, col, val, nthreads);
}

// out [R, Nout] (out_bf16 ? bf16 : float) = the sparse rows times Wt [K, Nout] (of out's dtype), plus bias [Nout]
// fp32 if not null (the sums start from it)
void sf_sparse_linear(int64_t R, int64_t Nout, const int64_t* rs, const int64_t* re, const int32_t* col,
                      const float* val, const void* Wt, const float* bias, void* out, int out_bf16, int nthreads) {
  if (out_bf16)
    spmm_fwd<bf16>(R, Nout, rs, re, col, val, static_cast<const bf16*>(Wt), bias, static_cast<bf16*>(out), nthreads);
  else
    spmm_fwd<float>(R, Nout, rs, re, col, val, static_cast<const float*>(Wt), bias, static_cast<float*>(out),
                    nthreads);
}

// dW [Nout, K] fp32 = G^T times the sparse rows; G [R, Nout] (g_bf16 ? bf16 : float)
void sf_sparse_linear_wgrad(int64_t R, int64_t K, int64_t Nout, const int64_t* rs, const int64_t* re,
                            const int32_t* col, const float* val, const void* g, int g_bf16, float* dw,
                            int nthreads) {
  if (g_bf16) spmm_wgrad<bf16>(R, K, Nout, rs, re, col, val, static_cast<const bf16*>(g), dw, nthreads);
  else spmm_wgrad<float>(R, K, Nout, rs, re, col, val, static_cast<const float*>(g), dw, nthreads);
}


// 3x3 convolution, stride 1, padding 1 (see sconv_fwd): frames [M, H, W, Cin] as their nonzeros, Wt [9, Cin, Cout]
// of out's dtype, bias [Cout] fp32 or null, out [M, H, W, Cout] (out_bf16 ? bf16 : float)
void sf_sparse_conv3x3(int64_t M, int64_t H, int64_t W, int64_t Cin, int64_t Cout, const int64_t* rs,
                       const int64_t* re, const int32_t* col, const float* val, const void* Wt, const float* bias,
                       void* out, int out_bf16, int nthreads) {
  if (out_bf16)
    sconv_fwd<bf16>(M, H, W, Cin, Cout, rs, re, col, val, static_cast<const bf16*>(Wt), bias,
                    static_cast<bf16*>(out), nthreads);
  else
    sconv_fwd<float>(M, H, W, Cin, Cout, rs, re, col, val, static_cast<const float*>(Wt), bias,
                     static_cast<float*>(out), nthreads);
}

// dW [Cout, Cin, 3, 3] fp32 of the same convolution; g [M, H, W, Cout] (g_bf16 ? bf16 : float)
void sf_sparse_conv3x3_wgrad(int64_t M, int64_t H, int64_t W, int64_t Cin, int64_t Cout, const int64_t* rs,
                             const int64_t* re, const int32_t* col, const float* val, const void* g, int g_bf16,
                             float* dw, int nthreads) {
  if (g_bf16)
    sconv_wgrad<bf16>(M, H, W, Cin, Cout, rs, re, col, val, static_cast<const bf16*>(g), dw, nthreads);
  else
    sconv_wgrad<float>(M, H, W, Cin, Cout, rs, re, col, val, static_cast<const float*>(g), dw, nthreads);
}

}  // extern "C"
