// The integrate-and-fire recursion and its surrogate gradients, shared by the neuron kernel (neuron.cpp) and the
// BatchNorm + neuron kernel (bn_neuron.cpp).
//
// Numerics: the forward performs the same float operations, in the same order and with the same rounding, as the
// pure-PyTorch kernel (spikeformer/kernels/torch/neuron.py) and the reference loop in spikeformer/neurons/
// functional.py, so spikes and the final membrane are bit-identical. The backward computes the same expressions;
// the exponential of the sigmoid surrogate is a polynomial (relative error about 2e-7) and its reciprocal takes
// Newton steps (within 1 ulp), so gradients agree within fp32 rounding, not bit for bit.
//
// Layout: every tensor is contiguous [T, N] (N = everything after time); the membrane state is float32; the
// input x, the spikes and dL/dx are float32 or bfloat16 (bf16: upper 16 bits of a float32, round to nearest even).
// Work is split over blocks of BLOCK neurons; each block runs all T steps with its membrane in L1 cache.

#pragma once

#include "common.h"

namespace {

constexpr int64_t BLOCK = 1024;

// exp(x) for the sigmoid surrogate: Cody-Waite range reduction and a degree-6 polynomial; branch-free so the
// loops vectorise. Relative error about 2e-7 on the range used (|x| <= 87).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
  // round to nearest integer: adding and subtracting 1.5 * 2^23 (exact without fast-math, vectorises everywhere);
  // n * 0.693359375 is exact (few bits in each), so the fused reduction equals the separate one's
  float n = madd(x, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
  float r = madd(n, -0.693359375f, x);
  r = madd(n, 2.12194440e-4f, r);
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

// 1 / d for d in [1, 2^126): an integer first guess (relative error under 6 %) and three fused Newton steps, each
// doubling the correct bits (within 1 ulp of the division over that range, 99.98 % of values equal). Branch-free, it vectorises into
// multiply-adds; a vector division (vdivps) was a fifth of the bf16 BatchNorm + neuron backward on an Intel Xeon.
inline float recip_approx(float d) {
  uint32_t bits;
  std::memcpy(&bits, &d, 4);
  bits = 0x7EF311C3u - bits;
  float r;
  std::memcpy(&r, &bits, 4);
  r = madd(r, madd(-d, r, 1.0f), r);  // r + r (1 - d r), both fused (written out: a loop here stopped the callers'
  r = madd(r, madd(-d, r, 1.0f), r);  // loops from vectorising)
  r = madd(r, madd(-d, r, 1.0f), r);
  return r;
}

}  // namespace

extern "C" {

// The static settings of one call. Keep in sync with Params in spikeformer/kernels/cpu/neuron.py.
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
template <typename X, int CHARGE, bool AFF, typename S>
void run_block(const SfParams& p, const X* x, int64_t n0, int64_t m, float* v, float* h, int64_t h_stride, S* s,
               const float* sc, const float* sh) {
  SfParams q = p;
  q.charge = CHARGE;
  const float vth = p.vth, vr = p.vr;
  const bool hard = p.hard != 0;
  for (int64_t t = 0; t < p.T; ++t) {
    const X* xt = x + t * p.N + n0;
    float* ht = h ? h + t * h_stride : nullptr;
    S* stt = s ? s + t * p.N + n0 : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      float xin = ld(xt, i);
      if (AFF) xin = rnd(xt, xin * sc[i] + sh[i]);
      float hv = charge(q, xin, v[i]);
      if (ht) ht[i] = hv;
      const bool fire = hv >= vth;
      if (stt) st_exact(stt, i, fire ? 1.0f : 0.0f);
      v[i] = fire ? (hard ? vr : hv - vth) : hv;
    }
  }
}

template <typename T>
struct Named {  // T as written by the caller: a parameter of type Named<T>::type* does not deduce T (nullptr)
  using type = T;
};

// S: the spikes' dtype (X's unless a caller asks for bf16 spikes of fp32 inputs: 0 and 1 are exact in both)
template <typename X, bool AFF = false, typename S = X>
void run_block_any(const SfParams& p, const X* x, int64_t n0, int64_t m, float* v, float* h, int64_t h_stride,
                   typename Named<S>::type* s, const float* sc = nullptr, const float* sh = nullptr) {
  switch (p.charge) {
    case 0: run_block<X, 0, AFF, S>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 1: run_block<X, 1, AFF, S>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 2: run_block<X, 2, AFF, S>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 3: run_block<X, 3, AFF, S>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    case 4: run_block<X, 4, AFF, S>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
    default: run_block<X, 5, AFF, S>(p, x, n0, m, v, h, h_stride, s, sc, sh); break;
  }
}

template <int KIND>
inline float surrogate_grad(float alpha, float z) {
  if (KIND == 1) {  // Sigmoid: alpha * s * (1 - s), s = sigmoid(alpha z)
    float sg = recip_approx(1.0f + exp_approx(-alpha * z));
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

}  // namespace
