// Multi-step integrate-and-fire forward and BPTT backward (LIF / IF / PLIF), one pass over [T, N] per call.
//
// Backward takes the forward's input, not its membrane: each block first re-runs the forward recursion into a
// [T, BLOCK] buffer that stays in cache (the same bits as the forward), then runs BPTT in reverse time. Autograd
// therefore keeps one [T, N] tensor per layer in the input's dtype, and no membrane is ever written to memory.

#include "neuron.h"

namespace {

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
  for (int64_t i = 0; i < m; ++i) gv[i] = gv_last ? gv_last[n0 + i] : 0.0f;
  if (WANT_K)
    for (int64_t i = 0; i < m; ++i) acc[i] = 0.0f;
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
  if (gv0)
    for (int64_t i = 0; i < m; ++i) gv0[n0 + i] = gv[i];
  // the PLIF parameter's sum only where it is asked for: this serial double sum took a quarter of bwd_block's samples
  double total = 0.0;
  if (WANT_K)
    for (int64_t i = 0; i < m; ++i) total += acc[i];
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

}  // namespace

extern "C" {

// The ABI of the whole library (every source of kernels/cpu); build.py refuses a library with another one.
int sf_abi_version() { return 8; }

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

}  // extern "C"
