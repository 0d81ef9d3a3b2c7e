// BatchNorm (training statistics or running statistics) fused with the neuron recursion, for inputs whose channel
// is the innermost dimension: tokens [T, ..., C] or channels-last frames [T, B, H, W, C] in memory. The neuron
// index n of the [T, N] view has channel n % C. Forward: y = x * a[c] + b[c] (a = weight * invstd, b = bias -
// mean * a), rounded to x's dtype, then the recursion; y is never written. Backward: one pass per block recomputes
// H from x, runs BPTT, writes dL/dy (rounded to x's dtype, as an unfused BN would receive it) and adds up the
// per-channel sums BatchNorm's backward needs (sum dL/dy and sum dL/dy (x - mean)); a second pass turns dL/dy into
// dL/dx in place. Autograd keeps x alone.

#include "neuron.h"

namespace {

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
      int64_t c0 = 0;
      // strips of 64 channels: their sums stay in registers over the 32 rows (the rows' block is in cache)
      for (; c0 + 64 <= C; c0 += 64) {
        float s64[64], q64[64];
#pragma omp simd
        for (int j = 0; j < 64; ++j) s64[j] = q64[j] = 0.0f;
        for (int64_t i = r; i < re; ++i) {
          const X* xr = x + i * C + c0;
#pragma omp simd
          for (int j = 0; j < 64; ++j) {
            const float d = ld(xr, j) - sh[c0 + j];
            s64[j] += d;
            q64[j] += d * d;
          }
        }
#pragma omp simd
        for (int j = 0; j < 64; ++j) {
          sp[c0 + j] = s64[j];
          qp[c0 + j] = q64[j];
        }
      }
      for (int64_t c = c0; c < C; ++c) sp[c] = qp[c] = 0.0f;
      for (int64_t i = r; i < re && c0 < C; ++i) {
        const X* xr = x + i * C;
#pragma omp simd
        for (int64_t c = c0; c < C; ++c) {
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

template <typename X, typename S = X>
void bn_fwd_all(const SfParams& p, int64_t C, const float* a, const float* b, const X* x, S* s) {
  const int64_t nblocks = (p.N + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(p.nthreads) if (nblocks > 1 && p.nthreads > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t n0 = blk * BLOCK;
    const int64_t m = (n0 + BLOCK < p.N ? n0 + BLOCK : p.N) - n0;
    float v[BLOCK], sc[BLOCK], sh[BLOCK];
    for (int64_t i = 0; i < m; ++i) v[i] = p.vinit;
    gather_channels(n0, m, C, a, sc);
    gather_channels(n0, m, C, b, sh);
    run_block_any<X, true, S>(p, x, n0, m, v, nullptr, 0, s, sc, sh);
  }
}

// BPTT of the neurons [n0, n1) from the resting membrane; writes dL/dy to gy and adds sum_t dL/dy and
// sum_t dL/dy (x - mean) of every neuron into its channel's entry of tg / tgx.
template <typename X, typename G, int KIND, bool HARD, bool DETACH>
void bn_bwd_block(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                  const G* __restrict gs, X* __restrict gy, int64_t n0, int64_t n1, double* tg, double* tgx) {
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
    const G* __restrict gst = gs + base;
    const X* __restrict xt = x + base;
    X* __restrict gyt = gy + base;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const float g = grad_h<KIND, HARD, DETACH>(ht[i], ld(gst, i), gv[i], vth, vr, alpha);
      const float d = rnd(gyt, g * gain);
      st_exact(gyt, i, d);
      gv[i] = g * keep;
      sg[i] += d;
      sgx[i] += d * (ld(xt, i) - mu[i]);
    }
  }
  scatter_add_channels(n0, m, C, sg, tg);
  scatter_add_channels(n0, m, C, sgx, tgx);
}

template <typename X, typename G, int KIND, bool HARD, bool DETACH>
void bn_bwd_all(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                const G* gs, X* gy, double* sum_g, double* sum_gx) {
  const int64_t nblocks = (p.N + BLOCK - 1) / BLOCK;
  const int64_t nchunks = p.nthreads > 1 && nblocks > 1 ? p.nthreads : 1;
  std::vector<double> GS(nchunks * C, 0.0), GX(nchunks * C, 0.0);
#pragma omp parallel for schedule(static) num_threads(p.nthreads) if (nchunks > 1)
  for (int64_t k = 0; k < nchunks; ++k) {
    for (int64_t blk = nblocks * k / nchunks; blk < nblocks * (k + 1) / nchunks; ++blk) {
      const int64_t n0 = blk * BLOCK;
      const int64_t n1 = n0 + BLOCK < p.N ? n0 + BLOCK : p.N;
      bn_bwd_block<X, G, KIND, HARD, DETACH>(p, C, a, b, mean, x, gs, gy, n0, n1, GS.data() + k * C,
                                             GX.data() + k * C);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double g = 0.0, gx = 0.0;
    for (int64_t k = 0; k < nchunks; ++k) {
      g += GS[k * C + c];
      gx += GX[k * C + c];
    }
    sum_g[c] = g;
    sum_gx[c] = gx;
  }
}

template <typename X, typename G, int KIND>
void bn_bwd_reset(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                  const G* gs, X* gy, double* sum_g, double* sum_gx) {
  if (p.hard) {
    if (p.detach) bn_bwd_all<X, G, KIND, true, true>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
    else bn_bwd_all<X, G, KIND, true, false>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
  } else {
    if (p.detach) bn_bwd_all<X, G, KIND, false, true>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
    else bn_bwd_all<X, G, KIND, false, false>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
  }
}

// G: the spikes' gradient's dtype (X's, or bf16 for the bf16 spikes of fp32 inputs, see sf_bn_train_forward)
template <typename X, typename G = X>
void bn_bwd_dispatch(const SfParams& p, int64_t C, const float* a, const float* b, const float* mean, const X* x,
                     const G* gs, X* gy, double* sum_g, double* sum_gx) {
  if (p.surrogate == 1) bn_bwd_reset<X, G, 1>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
  else bn_bwd_reset<X, G, 2>(p, C, a, b, mean, x, gs, gy, sum_g, sum_gx);
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

// BatchNorm as a per-channel affine map, in double, rounded to float: a = w * invstd, b = bias - mean * w * invstd
// (the operations and their order of bn_neuron.py's bn_scale_shift).
inline void scale_shift(int64_t C, const float* w, const float* bias, const double* mean, const double* invstd,
                        float* a, float* b) {
  for (int64_t c = 0; c < C; ++c) {
    const double wc = static_cast<double>(w[c]);
    a[c] = static_cast<float>(wc * invstd[c]);
    b[c] = static_cast<float>(static_cast<double>(bias[c]) - mean[c] * wc * invstd[c]);
  }
}

template <typename X, typename S = X>
void train_forward(const SfParams& p, int64_t C, const X* x, const float* w, const float* bias, double eps,
                   double* chan, float* ab, S* s) {
  double *mean = chan, *var = chan + C, *invstd = chan + 2 * C;
  channel_stats<X>(p.T * p.N / C, C, x, mean, var, p.nthreads);
  for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
  scale_shift(C, w, bias, mean, invstd, ab, ab + C);
  bn_fwd_all<X, S>(p, C, ab, ab + C, x, s);
}

template <typename X, typename G = X>
void train_backward(const SfParams& p, int64_t C, const float* ab, const double* chan, const float* w, const X* x,
                    const G* gs, X* gx, float* gwb) {
  const double *mean64 = chan, *invstd = chan + 2 * C;
  std::vector<float> mean(C), A(C), B(C), D(C);
  std::vector<double> sum_g(C), sum_gx(C);
  for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<float>(mean64[c]);
  bn_bwd_dispatch<X, G>(p, C, ab, ab + C, mean.data(), x, gs, gx, sum_g.data(), sum_gx.data());
  const double R = static_cast<double>(p.T * p.N / C);
  for (int64_t c = 0; c < C; ++c) {
    // dL/dx = w invstd (g - mean(g) - xhat mean(g xhat)) = g A + x B + D (bn_neuron.py's order of operations)
    const double gw = sum_gx[c] * invstd[c];
    const double a = static_cast<double>(w[c]) * invstd[c];
    const double b = -a * invstd[c] * gw / R;
    A[c] = static_cast<float>(a);
    B[c] = static_cast<float>(b);
    D[c] = static_cast<float>(-a * sum_g[c] / R - b * mean64[c]);
    gwb[c] = static_cast<float>(gw);
    gwb[C + c] = static_cast<float>(sum_g[c]);
  }
  bn_input_grad<X>(p.T * p.N / C, C, x, gx, A.data(), B.data(), D.data(), p.nthreads);
}

}  // namespace

extern "C" {

// Training-mode forward in one call: the per-channel statistics of x, BatchNorm's scale and shift, the spikes s.
// chan: [3, C] double out (mean, biased variance, invstd = 1 / sqrt(var + eps)); ab: [2, C] float out (a, b);
// w, bias: [C] float. s_bf16: bf16 spikes of an fp32 x (for a bf16 consumer: no cast pass); else x's dtype.
void sf_bn_train_forward(const SfParams* p, int64_t C, const void* x, int x_bf16, const float* w, const float* bias,
                         double eps, double* chan, float* ab, void* s, int s_bf16) {
  if (x_bf16)
    train_forward<bf16>(*p, C, static_cast<const bf16*>(x), w, bias, eps, chan, ab, static_cast<bf16*>(s));
  else if (s_bf16)
    train_forward<float, bf16>(*p, C, static_cast<const float*>(x), w, bias, eps, chan, ab, static_cast<bf16*>(s));
  else
    train_forward<float>(*p, C, static_cast<const float*>(x), w, bias, eps, chan, ab, static_cast<float*>(s));
}

// BatchNorm's running-statistics update (nn.BatchNorm's arithmetic as PyTorch's vectorised kernels do it):
// r = r * (1 - f) + f * m, the product by (1 - f) rounded to float, then one fused multiply-add; m is the batch mean
// (plus shift[c] where not null) and the batch variance times unbias (n / (n - 1)), rounded to float.
void sf_bn_running_update(int64_t C, float* rmean, float* rvar, const double* mean, const double* var,
                          const double* shift, double f, double unbias) {
  const float ff = static_cast<float>(f), keep = static_cast<float>(1.0 - f);
  for (int64_t c = 0; c < C; ++c) {
    const double m = shift ? mean[c] + shift[c] : mean[c];
    rmean[c] = std::fma(ff, static_cast<float>(m), rmean[c] * keep);
    rvar[c] = std::fma(ff, static_cast<float>(var[c] * unbias), rvar[c] * keep);
  }
}

// Its backward in one call: dL/dx into gx (x's dtype) from the spikes' gradient gs, and dL/dweight, dL/dbias into
// gwb ([2, C] float); ab, chan as sf_bn_train_forward wrote them.
void sf_bn_train_backward(const SfParams* p, int64_t C, const float* ab, const double* chan, const float* w,
                          const void* x, int x_bf16, const void* gs, int gs_bf16, void* gx, float* gwb) {
  if (x_bf16)
    train_backward<bf16>(*p, C, ab, chan, w, static_cast<const bf16*>(x), static_cast<const bf16*>(gs),
                         static_cast<bf16*>(gx), gwb);
  else if (gs_bf16)  // the gradient of bf16 spikes of an fp32 x, read as it comes
    train_backward<float, bf16>(*p, C, ab, chan, w, static_cast<const float*>(x), static_cast<const bf16*>(gs),
                                static_cast<float*>(gx), gwb);
  else
    train_backward<float>(*p, C, ab, chan, w, static_cast<const float*>(x), static_cast<const float*>(gs),
                          static_cast<float*>(gx), gwb);
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

}  // extern "C"
