// Linear layers whose input is spikes (0/1, or the small integers of summed spikes) and mostly zero: the input is
// turned into its nonzeros, row by row (sparse_rows), and the products skip the zeros. Forward: out[r] = sum over
// the nonzeros (j, s) of row r of s * Wt[j] (Wt = W^T, [K, Nout] in the compute dtype). Weight gradient:
// dW^T[j] += s * G[r] for every nonzero (j, s) of row r. The input gradient G W is dense and stays with the BLAS.
// Sums are fp32 with fused multiply-adds; for spikes times bf16 weights every product is exact, so results differ
// from a dense GEMM's only by the order of the fp32 sums.

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common.h"

namespace {

// Nonzeros of x [R, K] (zero: +0 and -0), row r's being col[rs[r] .. re[r]) and val[...]. Rows are split into
// nthreads chunks; chunk k stores its entries in its share of cap. Returns the number of nonzeros, or -1 when a
// chunk has more than its share (the caller then uses the dense product).
// Bit i set where element i of the 64 bytes at p is nonzero (32 bf16 or 16 float elements; -0 counts as zero).
inline uint64_t nz_mask(const bf16* p) {
#ifdef __AVX512BW__
  return _mm512_test_epi16_mask(_mm512_loadu_si512(p), _mm512_set1_epi16(0x7FFF));
#elif defined(__AVX2__)
  // zero flags of the two halves, packed to bytes (packs interleaves 128-bit lanes; the permute puts them back)
  const __m256i magn = _mm256_set1_epi16(0x7FFF), zero = _mm256_setzero_si256();
  const __m256i z0 = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), magn), zero);
  const __m256i z1 =
      _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)), magn), zero);
  const __m256i z = _mm256_permute4x64_epi64(_mm256_packs_epi16(z0, z1), 0xD8);
  return static_cast<uint32_t>(~_mm256_movemask_epi8(z));
#else
  uint64_t m = 0;
  for (int i = 0; i < 32; ++i) m |= static_cast<uint64_t>((p[i] & 0x7FFF) != 0) << i;
  return m;
#endif
}

inline uint64_t nz_mask(const float* p) {
#ifdef __AVX512F__
  return _mm512_test_epi32_mask(_mm512_loadu_si512(p), _mm512_set1_epi32(0x7FFFFFFF));
#elif defined(__AVX2__)
  // not equal to zero, or NaN (-0 == 0 counts as zero)
  const __m256 zero = _mm256_setzero_ps();
  const uint32_t lo = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), zero, _CMP_NEQ_UQ));
  const uint32_t hi = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 8), zero, _CMP_NEQ_UQ));
  return lo | (hi << 8);
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

// 16 consecutive fp32 lanes, held as the CPU's own vectors (one of 512 bits, two of 256, or four of 128): the
// accumulators of a row are NV of them, in registers. (A 64-byte vector type of GCC/Clang on a CPU without 512-bit
// registers is lowered through the stack, several times slower.)
#if defined(__AVX512F__)
constexpr int VN = 16;
#elif defined(__AVX__)
constexpr int VN = 8;
#else
constexpr int VN = 4;
#endif
typedef float vnat __attribute__((vector_size(VN * 4)));
typedef float vnat_u __attribute__((vector_size(VN * 4), aligned(4)));  // the same, at any float address
constexpr int VP = 16 / VN;
// the most 16-lane accumulators a kernel keeps: what the registers hold (32 of 512 bits, 16 of 256 or of 128 bits)
// with room for the weights being read
constexpr int NV_MAX = VN == 16 ? 12 : (VN == 8 ? 6 : 3);
struct vf16 {
  vnat p[VP];
};

inline vnat vfma1(vnat s, vnat w, vnat acc) {
#if defined(__AVX512F__)
  return reinterpret_cast<vnat>(_mm512_fmadd_ps(reinterpret_cast<__m512>(s), reinterpret_cast<__m512>(w),
                                                reinterpret_cast<__m512>(acc)));
#elif defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<vnat>(_mm256_fmadd_ps(reinterpret_cast<__m256>(s), reinterpret_cast<__m256>(w),
                                                reinterpret_cast<__m256>(acc)));
#else
  return acc + s * w;
#endif
}

// acc + s * w, one fused multiply-add per lane where the CPU has them (for spikes times weights the product is
// exact, so fused or not gives the same sum; fused halves the instructions and the dependency chain)
inline vf16 vfma(float s, const vf16& w, vf16 acc) {
  const vnat sv = s - vnat{};  // s in every lane
  for (int i = 0; i < VP; ++i) acc.p[i] = vfma1(sv, w.p[i], acc.p[i]);
  return acc;
}

inline vf16 vadd(vf16 a, const vf16& b) {
  for (int i = 0; i < VP; ++i) a.p[i] += b.p[i];
  return a;
}

// 16 consecutive values as fp32 (weights are stored in the compute dtype: bf16 halves the bytes read per product)
inline vf16 load16(const float* p) {
  vf16 v;
  for (int i = 0; i < VP; ++i) v.p[i] = *reinterpret_cast<const vnat_u*>(p + VN * i);
  return v;
}

inline void store16(float* p, const vf16& v) {
  for (int i = 0; i < VP; ++i) *reinterpret_cast<vnat_u*>(p + VN * i) = v.p[i];
}

inline vf16 load16(const bf16* p) {
  vf16 v;
#if defined(__AVX512F__)
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  v.p[0] = reinterpret_cast<vnat>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif defined(__AVX2__)
  for (int i = 0; i < 2; ++i) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * i));
    v.p[i] = reinterpret_cast<vnat>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#else
  float f[16];
  for (int j = 0; j < 16; ++j) f[j] = bf2f(p[j]);
  std::memcpy(&v, f, sizeof(v));
#endif
  return v;
}

// o[0 .. 16 * NV) = the accumulators, rounded to O (one vectorised loop)
template <typename O, int NV>
inline void store_vectors(const vf16* acc, O* __restrict o) {
  if constexpr (std::is_same<O, float>::value) {
    for (int v = 0; v < NV; ++v) store16(o + 16 * v, acc[v]);
    return;
  }
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
    if (bias) init[v] = load16(bias + t0 + 16 * v);
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
    // rows in slabs of 64 so each slab's entries stay in cache across the column tiles; chunk k takes the slabs k,
    // k + nchunks, ...: the first time steps of a spiking layer fire less than the last, and halves of the rows
    // left one thread waiting for the other
    for (int64_t a = 64 * k; a < R; a += 64 * nchunks) {
      const int64_t b = a + 64 < R ? a + 64 : R;
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
        for (int v = 0; v < SP_NV; ++v) gv[v] = load16(grow + 16 * v);
        for (int64_t e = rs[r]; e < re[r]; ++e) {
          const float s = val[e];
          float* a = acc + static_cast<int64_t>(col[e]) * SP_TILE;
          for (int v = 0; v < SP_NV; ++v) {
            store16(a + 16 * v, vfma(s, gv[v], load16(a + 16 * v)));
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
    if (bias) init[v] = load16(bias + t0 + 16 * v);
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
  // frames dealt out in turn (schedule static, 1): the first time steps fire less than the last
#pragma omp parallel for schedule(static, 1) num_threads(nthreads) if (nthreads > 1 && M > 1)
  for (int64_t m = 0; m < M; ++m) {
    int64_t t0 = 0;
    while (t0 + 16 <= Cout) {  // as few passes over the frame as the registers allow: up to NV_MAX vectors of 16
      const int nv = static_cast<int>((Cout - t0) / 16 < NV_MAX ? (Cout - t0) / 16 : NV_MAX);
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
          store16(ak + 16 * v, vadd(load16(ak + 16 * v), a[v]));
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
    for (int64_t m = k; m < M; m += nchunks) {  // frames in turn: the first time steps fire less than the last
      fc.build(m * H * W, H, W, Cin, rs, re, col, val);
      int64_t t0 = 0;
      while (t0 + 16 <= Cout) {
        const int nv = static_cast<int>((Cout - t0) / 16 < NV_MAX ? (Cout - t0) / 16 : NV_MAX);
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

// How many entries of the rows 0, step, 2 step, ... of x [R, K] are nonzero (-0 counts as zero).
template <typename X>
int64_t count_nonzero_rows(int64_t R, int64_t K, const X* x, int64_t step) {
  constexpr int64_t LANES = 64 / sizeof(X);
  int64_t n = 0;
  for (int64_t r = 0; r < R; r += step) {
    const X* row = x + r * K;
    int64_t j = 0;
    for (; j + LANES <= K; j += LANES) n += __builtin_popcountll(nz_mask(row + j));
    for (; j < K; ++j) n += nonzero(row[j]);
  }
  return n;
}

}  // namespace

extern "C" {

// The number of nonzeros in every step-th row of x [R, K] (x_bf16 ? bf16 : float), from row 0.
int64_t sf_count_nonzero_rows(int64_t R, int64_t K, const void* x, int x_bf16, int64_t step) {
  if (x_bf16) return count_nonzero_rows<bf16>(R, K, static_cast<const bf16*>(x), step);
  return count_nonzero_rows<float>(R, K, static_cast<const float*>(x), step);
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
