// Products of binary spikes (every input exactly 0 or 1) and real matrices by table lookup, independent of how many
// spikes are set. Four inputs form a 4-bit code; for four weight rows w0..w3 a table holds all 16 subset sums
// (T[code] = sum of the w_j whose bit j is set), so one vector addition of T[code] does the work of four
// multiply-adds of a dense product ("method of the four Russians"). The tables of a tile of 16 output columns sit in
// the L1 cache, and each addition of a 16-column entry stands for 64 multiply-adds: where a dense GEMM does 16 per
// cycle on AVX2 with FMA, the lookups do several times more, at 25-30 % spikes (SDT's q/k/v and MLP inputs, the
// stems' pooled spikes) where listing the nonzeros (sparse.cpp) no longer pays.
//
// Forward: out[r] = bias + sum over the 4-column groups g of T_g[code(r, g)]. Weight gradient: the same with the
// roles turned: 4 rows of the output gradient make the table and the codes are the spikes of those 4 rows in one
// input column, dW^T[k] = sum over the 4-row groups q of T_q[code(q, k)]. All sums are fp32; the subset sums and the
// accumulation add the same terms as a dense product in another order, so results differ from it by rounding only.
// A 3x3 convolution (stride 1, padding 1) is the same product over the codes of its 9 taps (im2col of the codes).

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "common.h"

namespace {

constexpr int64_t NT = 16;  // output columns per tile: one table entry is one 16-lane vector (AVX512) or two 8-lane

#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

struct e16 {
  v16 a;
};

inline e16 ld16(const float* p) { return {*reinterpret_cast<const v16u*>(p)}; }
inline void st16(float* p, const e16& v) { *reinterpret_cast<v16u*>(p) = v.a; }
inline e16 add(const e16& x, const e16& y) { return {x.a + y.a}; }
inline void stream16(float* p, const e16& v) { _mm512_stream_ps(p, reinterpret_cast<__m512>(v.a)); }
// acc + v * x, fused (for spike counts times weights the product is exact either way)
inline e16 add_scaled(const e16& acc, float v, const e16& x) {
  const v16 s = v - v16{};
  return {reinterpret_cast<v16>(_mm512_fmadd_ps(reinterpret_cast<__m512>(s), reinterpret_cast<__m512>(x.a),
                                                reinterpret_cast<__m512>(acc.a)))};
}
#else
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

struct e16 {
  v8 a, b;
};

inline e16 ld16(const float* p) { return {*reinterpret_cast<const v8u*>(p), *reinterpret_cast<const v8u*>(p + 8)}; }
inline void st16(float* p, const e16& v) {
  *reinterpret_cast<v8u*>(p) = v.a;
  *reinterpret_cast<v8u*>(p + 8) = v.b;
}
inline e16 add(const e16& x, const e16& y) { return {x.a + y.a, x.b + y.b}; }
inline void stream16(float* p, const e16& v) { st16(p, v); }  // (AVX512 only)
inline v8 fma8(v8 s, v8 x, v8 acc) {
#if defined(__FMA__) && defined(__AVX__)
  return reinterpret_cast<v8>(_mm256_fmadd_ps(reinterpret_cast<__m256>(s), reinterpret_cast<__m256>(x),
                                              reinterpret_cast<__m256>(acc)));
#else
  return acc + s * x;
#endif
}
// acc + v * x, fused where the CPU has FMA (for spike counts times weights the product is exact either way)
inline e16 add_scaled(const e16& acc, float v, const e16& x) {
  const v8 s = v - v8{};
  return {fma8(s, x.a, acc.a), fma8(s, x.b, acc.b)};
}
#endif

// Listed nonzeros of an extra input added to the binary one (row r's being col/val[rs[r] .. re[r]), see
// sparse.cpp): the counts above 1 of summed spikes. nullptr rs: none.
struct Rest {
  const int64_t *rs, *re;
  const int32_t* col;
  const float* val;
};

// T[0..16): the subset sums of rows[0..4) (nullptr: a zero row), each NT floats
inline void build_table(e16* T, const float* const rows[4]) {
  e16 w[4];
  for (int j = 0; j < 4; ++j) w[j] = rows[j] ? ld16(rows[j]) : e16{};
  T[0] = e16{};
  for (int i = 1; i < 16; ++i) {
    const int j = __builtin_ctz(i);
    T[i] = add(T[i & (i - 1)], w[j]);
  }
}

struct AlignedTables {
  e16* p;
  explicit AlignedTables(int64_t n) : p(static_cast<e16*>(::operator new[](n * sizeof(e16), std::align_val_t(64)))) {}
  ~AlignedTables() { ::operator delete[](p, std::align_val_t(64)); }
};

constexpr int64_t FWD_RB = 1024;  // rows per block: their codes stay in L2 over the tiles; their output tile is
                                  // accumulated in a contiguous 64 KB buffer (rows of the output itself are N floats
                                  // apart, and with N a multiple of 512 they all fall into two cache sets). 1024 rows
                                  // ran 1.1-1.3x faster than 256 on an Intel Xeon (Spikformer's products)
constexpr int64_t FWD_SC = 32;    // groups whose tables are built at once (32 KB): rebuilt per row block, 1.5 % of the
                                  // additions
constexpr int64_t FWD_CH = 16;    // groups per chunk: 16 tables of 1 KB, in L1 over the rows of a block
constexpr int64_t FWD_PF = 8;     // output rows written ahead of their prefetch for writing (1.15x for [8192, 1536]
                                  // outputs there): the lines come in while earlier rows are stored

// out [R, N] = bias + codes [R, KG] x W^T (fp32), the weights tiled: Wt [N / NT, K, NT], N a multiple of NT (each
// tile's weights contiguous, read in order; rows of W^T [K, N] are N floats apart, which aliases in the cache).
// stream: write out with non-temporal stores (AVX512, out 64-byte aligned; each tile of a row is one cache line, not
// read before it is written, which otherwise comes from memory first). In inference the whole step ran 1.10x faster
// so on an Intel Xeon (Spikformer CIFAR 4-384), in training 0.97-0.99x: the caller asks for it only in inference.
void lut_fwd(int64_t R, int64_t K, int64_t N, const uint8_t* codes, const float* Wt, const float* bias, const Rest& rest,
             float* out, int stream_out, int nthreads) {
  const int64_t KG = (K + 3) / 4, ntiles = N / NT, nblocks = (R + FWD_RB - 1) / FWD_RB;
  const int64_t nwork = nblocks * ntiles;
  const bool stream = stream_out && reinterpret_cast<uintptr_t>(out) % 64 == 0;
#pragma omp parallel num_threads(nthreads)
  {
    AlignedTables tab(FWD_SC * 16), buf(FWD_RB);
#pragma omp for schedule(dynamic, 2)
    for (int64_t wk = 0; wk < nwork; ++wk) {  // row block major: a block's codes are reused over its tiles
      const int64_t rb = (wk / ntiles) * FWD_RB, n0 = (wk % ntiles) * NT;
      const int64_t nr = (rb + FWD_RB < R ? rb + FWD_RB : R) - rb;
      const float* wc = Wt + n0 * K;  // the tile's weights [K, NT]
      const e16 init = bias ? ld16(bias + n0) : e16{};
      e16* acc = buf.p;
      for (int64_t i = 0; i < nr; ++i) acc[i] = init;
      for (int64_t s0 = 0; s0 < KG; s0 += FWD_SC) {
        const int64_t s1 = s0 + FWD_SC < KG ? s0 + FWD_SC : KG;
        for (int64_t g = s0; g < s1; ++g) {
          const float* rows[4];
          for (int j = 0; j < 4; ++j) rows[j] = 4 * g + j < K ? wc + (4 * g + j) * NT : nullptr;
          build_table(tab.p + (g - s0) * 16, rows);
        }
        for (int64_t c0 = s0; c0 < s1; c0 += FWD_CH) {
          const int64_t nc = (c0 + FWD_CH < s1 ? c0 + FWD_CH : s1) - c0;
          const e16* T = tab.p + (c0 - s0) * 16;
          const uint8_t* q = codes + rb * KG + c0;
          int64_t i = 0;
          for (; i + 4 <= nr; i += 4, q += 4 * KG) {  // four rows at once: eight independent chains of additions
            e16 a0 = acc[i], a1 = acc[i + 1], a2 = acc[i + 2], a3 = acc[i + 3];
            const e16* Tc = T;
            for (int64_t c = 0; c < nc; ++c, Tc += 16) {
              a0 = add(a0, Tc[q[c]]);
              a1 = add(a1, Tc[q[KG + c]]);
              a2 = add(a2, Tc[q[2 * KG + c]]);
              a3 = add(a3, Tc[q[3 * KG + c]]);
            }
            acc[i] = a0;
            acc[i + 1] = a1;
            acc[i + 2] = a2;
            acc[i + 3] = a3;
          }
          for (; i < nr; ++i, q += KG) {
            e16 a = acc[i];
            for (int64_t c = 0; c < nc; ++c) a = add(a, T[c * 16 + q[c]]);
            acc[i] = a;
          }
        }
      }
      if (rest.rs) {
        for (int64_t i = 0; i < nr; ++i) {
          // four partial sums: independent chains of multiply-adds
          e16 a0 = acc[i], a1{}, a2{}, a3{};
          int64_t e = rest.rs[rb + i];
          const int64_t e1 = rest.re[rb + i];
          for (; e + 4 <= e1; e += 4) {
            a0 = add_scaled(a0, rest.val[e], ld16(wc + rest.col[e] * NT));
            a1 = add_scaled(a1, rest.val[e + 1], ld16(wc + rest.col[e + 1] * NT));
            a2 = add_scaled(a2, rest.val[e + 2], ld16(wc + rest.col[e + 2] * NT));
            a3 = add_scaled(a3, rest.val[e + 3], ld16(wc + rest.col[e + 3] * NT));
          }
          for (; e < e1; ++e) a0 = add_scaled(a0, rest.val[e], ld16(wc + rest.col[e] * NT));
          acc[i] = add(add(a0, a1), add(a2, a3));
        }
      }
      if (stream)
        for (int64_t i = 0; i < nr; ++i) stream16(out + (rb + i) * N + n0, acc[i]);
      else
        for (int64_t i = 0; i < nr; ++i) {
          if (i + FWD_PF < nr) __builtin_prefetch(out + (rb + i + FWD_PF) * N + n0, 1, 3);
          st16(out + (rb + i) * N + n0, acc[i]);
        }
    }
#if defined(__AVX512F__)
    _mm_sfence();
#endif
  }
}

constexpr int64_t WG_PF = 24;  // 4-row groups between a gradient row's prefetch and its table's build (rows N floats
                               // apart: no hardware prefetch across pages)
constexpr int64_t WG_CH = 32;  // 4-row groups per chunk: 32 tables of 1 KB (16 and 32 measured alike)

// dWt [K, N] = codesT [RG, K] x G [R, N] summed over the rows (fp32 G), N a multiple of NT; out_nk: written as
// dW [N, K] instead (a Linear's own layout: each tile's [K, 16] block is transposed in cache, 64 columns at a time)
void lut_wgrad(int64_t R, int64_t K, int64_t N, const uint8_t* codesT, const float* G, const Rest& rest, float* dWt,
               int out_nk, int nthreads) {
  const int64_t RG = (R + 3) / 4, ntiles = N / NT;
#pragma omp parallel num_threads(nthreads)
  {
    AlignedTables tab(WG_CH * 16), dw(K);  // dw: the tile of dW^T, contiguous ([K, 16]; see lut_fwd)
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t n0 = t * NT;
      e16* d = dw.p;
      for (int64_t k = 0; k < K; ++k) d[k] = e16{};
      for (int64_t q0 = 0; q0 < RG; q0 += WG_CH) {
        const int64_t q1 = q0 + WG_CH < RG ? q0 + WG_CH : RG;
        for (int64_t q = q0; q < q1; ++q) {
          const float* rows[4];
          for (int j = 0; j < 4; ++j) rows[j] = 4 * q + j < R ? G + (4 * q + j) * N + n0 : nullptr;
          for (int j = 0; j < 4; ++j)
            if (4 * (q + WG_PF) + j < R) __builtin_prefetch(G + (4 * (q + WG_PF) + j) * N + n0, 0, 3);
          build_table(tab.p + (q - q0) * 16, rows);
        }
        if (rest.rs) {  // the rest of the chunk's rows, while their gradient rows are in cache (a pass over all
                        // rows after the lookups missed the cache on every row: a third of this kernel's time)
          const int64_t r1 = 4 * q1 < R ? 4 * q1 : R;
          for (int64_t r = 4 * q0; r < r1; ++r) {
            if (rest.re[r] == rest.rs[r]) continue;
            const e16 gr = ld16(G + r * N + n0);
            for (int64_t e = rest.rs[r]; e < rest.re[r]; ++e)
              d[rest.col[e]] = add_scaled(d[rest.col[e]], rest.val[e], gr);
          }
        }
        const int64_t nq = q1 - q0;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4) {
          e16 a0 = d[k], a1 = d[k + 1], a2 = d[k + 2], a3 = d[k + 3];
          const uint8_t* cq = codesT + q0 * K + k;
          const e16* Tc = tab.p;
          for (int64_t c = 0; c < nq; ++c, cq += K, Tc += 16) {
            a0 = add(a0, Tc[cq[0]]);
            a1 = add(a1, Tc[cq[1]]);
            a2 = add(a2, Tc[cq[2]]);
            a3 = add(a3, Tc[cq[3]]);
          }
          d[k] = a0;
          d[k + 1] = a1;
          d[k + 2] = a2;
          d[k + 3] = a3;
        }
        for (; k < K; ++k) {
          e16 a = d[k];
          for (int64_t c = 0; c < nq; ++c) a = add(a, tab.p[c * 16 + codesT[(q0 + c) * K + k]]);
          d[k] = a;
        }
      }
      if (out_nk) {
        const float* df = reinterpret_cast<const float*>(d);
        for (int64_t k0 = 0; k0 < K; k0 += 64) {
          const int64_t k1 = k0 + 64 < K ? k0 + 64 : K;
          for (int64_t j = 0; j < NT; ++j) {
            float* out = dWt + (n0 + j) * K;
            for (int64_t k = k0; k < k1; ++k) out[k] = df[k * NT + j];
          }
        }
      } else {
        for (int64_t k = 0; k < K; ++k) st16(dWt + k * N + n0, d[k]);
      }
    }
  }
}

inline uint8_t bit(float v) { return v != 0.0f; }
inline uint8_t bit(bf16 v) { return (v & 0x7FFF) != 0; }
inline bool binary(float v) { return v == 0.0f || v == 1.0f; }
inline bool binary(bf16 v) { return (v & 0x7FFF) == 0 || v == 0x3F80; }

// The codes of rows whose 0/1 bits row_bits(r, xr, bits) writes (it returns 1 to stop: the input does not qualify):
// codes [R, KG] (4 consecutive columns of a row) and codesT [RG, K] (4 consecutive rows of a column; rows past R are
// 0; nullptr: not wanted, as in inference). Returns 1 when some call of row_bits did (the codes are then not written
// fully).
template <typename X, typename RowBits>
int pack_codes(int64_t R, int64_t K, const X* x, uint8_t* codes, uint8_t* codesT, int nthreads, RowBits row_bits) {
  const int64_t KG = (K + 3) / 4, RG = (R + 3) / 4;
  int bad = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : bad)
  {
    std::vector<uint8_t> b(4 * K);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < RG; ++q) {
      if (bad) continue;
      for (int j = 0; j < 4; ++j) {
        uint8_t* bj = b.data() + j * K;
        const int64_t r = 4 * q + j;
        if (r >= R) {
          std::memset(bj, 0, K);
          continue;
        }
        bad |= row_bits(r, x + r * K, bj);
        uint8_t* cr = codes + r * KG;
        for (int64_t g = 0; g < KG; ++g) {
          uint8_t v = 0;
          for (int i = 0; i < 4 && 4 * g + i < K; ++i) v |= bj[4 * g + i] << i;
          cr[g] = v;
        }
      }
      if (!codesT) continue;
      uint8_t* ct = codesT + q * K;
      const uint8_t *b0 = b.data(), *b1 = b0 + K, *b2 = b1 + K, *b3 = b2 + K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) ct[k] = b0[k] | (b1[k] << 1) | (b2[k] << 2) | (b3[k] << 3);
    }
  }
  return bad;
}

// the codes of x [R, K] (see pack_codes); returns 1 when some value is neither 0 nor 1
template <typename X>
int pack(int64_t R, int64_t K, const X* x, uint8_t* codes, uint8_t* codesT, int nthreads) {
  return pack_codes(R, K, x, codes, codesT, nthreads, [K](int64_t, const X* __restrict xr, uint8_t* __restrict bits) {
    int ok = 1;
#pragma omp simd reduction(& : ok)
    for (int64_t k = 0; k < K; ++k) {
      bits[k] = bit(xr[k]);
      ok &= binary(xr[k]);
    }
    return !ok;
  });
}

// Spike counts (or any values) x [R, K] fp32 as their 0/1 indicator (x != 0) in codes / codesT, as pack does, plus
// the rest x - 1 at the entries that are neither 0 nor 1, listed row by row as sparse.cpp's sparse_rows lists
// nonzeros (row r's entries col/val[rs[r] .. re[r]), in column order). One pass for the codes and the per-row counts
// of the rest, one over the rows that have some. Returns the number of listed entries, or -1 if more than cap.
int64_t pack_counts(int64_t R, int64_t K, const float* x, int64_t cap, uint8_t* codes, uint8_t* codesT, int64_t* rs,
                    int64_t* re, int32_t* col, float* val, int nthreads) {
  pack_codes(R, K, x, codes, codesT, nthreads,
             [K, re](int64_t r, const float* __restrict xr, uint8_t* __restrict bits) {
    int64_t n = 0;
#pragma omp simd reduction(+ : n)
    for (int64_t k = 0; k < K; ++k) {
      bits[k] = xr[k] != 0.0f;
      n += !binary(xr[k]);
    }
    re[r] = n;  // the count for now; the offsets follow
    return 0;
  });
  int64_t total = 0;
  for (int64_t r = 0; r < R; ++r) {
    rs[r] = total;
    total += re[r];
    re[r] = total;
  }
  if (total > cap) return -1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t r = 0; r < R; ++r) {
    if (re[r] == rs[r]) continue;
    const float* xr = x + r * K;
    int64_t e = rs[r], k = 0;
#ifdef __AVX__
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    for (; k + 8 <= K; k += 8) {  // a mask of the 8 entries that are neither 0 nor 1 (NaN included), then its bits
      const __m256 v = _mm256_loadu_ps(xr + k);
      unsigned m = static_cast<unsigned>(_mm256_movemask_ps(
          _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ), _mm256_cmp_ps(v, one, _CMP_NEQ_UQ))));
      while (m) {
        const int i = __builtin_ctz(m);
        col[e] = static_cast<int32_t>(k + i);
        val[e++] = xr[k + i] - 1.0f;
        m &= m - 1;
      }
    }
#endif
    for (; k < K; ++k) {
      if (binary(xr[k])) continue;
      col[e] = static_cast<int32_t>(k);
      val[e++] = xr[k] - 1.0f;
    }
  }
  return total;
}

// the codes of a 3x3 convolution's input (stride 1, padding 1) given as channels-last frames x [M, H, W, C], C a
// multiple of 4: the im2col of the codes, codes [P, 9 * C / 4] (P = M * H * W output pixels; tap t = 3 * dy + dx of
// the weight [3, 3, C, Cout], a tap outside the frame reads zeros; nullptr: not wanted) and codesT
// [ceil(P / 4), 9 * C] (4 consecutive pixels; nullptr: not wanted). bits is scratch of P * C bytes. Returns 1 when some value is neither 0 nor 1.
template <typename X>
int pack_conv(int64_t M, int64_t H, int64_t W, int64_t C, const X* x, uint8_t* bits, uint8_t* codes,
              uint8_t* codesT, int nthreads) {
  const int64_t P = M * H * W, CG = C / 4, KG = 9 * CG, K = 9 * C, PG = (P + 3) / 4, HW = H * W;
  int bad = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : bad)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < P; ++p) {
      const X* xp = x + p * C;
      uint8_t* bp = bits + p * C;
      int ok = 1;
      for (int64_t c = 0; c < C; ++c) {
        bp[c] = bit(xp[c]);
        ok &= binary(xp[c]);
      }
      bad |= !ok;
    }
    // the neighbour of pixel p at tap t, or -1 outside the frame
    auto nbr = [&](int64_t p, int t) -> int64_t {
      const int64_t h = (p % HW) / W + t / 3 - 1, w = p % W + t % 3 - 1;
      return (h < 0 || h >= H || w < 0 || w >= W) ? -1 : p + (t / 3 - 1) * W + (t % 3 - 1);
    };
#pragma omp for schedule(static)
    for (int64_t p = 0; p < (codes ? P : 0); ++p) {
      uint8_t* cp = codes + p * KG;
      for (int t = 0; t < 9; ++t) {
        const int64_t n = nbr(p, t);
        uint8_t* ct = cp + t * CG;
        if (n < 0) {
          std::memset(ct, 0, CG);
          continue;
        }
        const uint8_t* bn = bits + n * C;
        for (int64_t g = 0; g < CG; ++g)
          ct[g] = bn[4 * g] | (bn[4 * g + 1] << 1) | (bn[4 * g + 2] << 2) | (bn[4 * g + 3] << 3);
      }
    }
#pragma omp for schedule(static)
    for (int64_t q = 0; q < (codesT ? PG : 0); ++q) {
      uint8_t* cq = codesT + q * K;
      std::memset(cq, 0, K);
      for (int j = 0; j < 4 && 4 * q + j < P; ++j) {
        for (int t = 0; t < 9; ++t) {
          const int64_t n = nbr(4 * q + j, t);
          if (n < 0) continue;
          const uint8_t* bn = bits + n * C;
          uint8_t* ct = cq + t * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) ct[c] |= bn[c] << j;
        }
      }
    }
  }
  return bad;
}

}  // namespace

extern "C" {

int sf_lut_pack(int64_t R, int64_t K, const void* x, int x_bf16, uint8_t* codes, uint8_t* codesT, int nthreads) {
  return x_bf16 ? pack(R, K, static_cast<const bf16*>(x), codes, codesT, nthreads)
                : pack(R, K, static_cast<const float*>(x), codes, codesT, nthreads);
}

int64_t sf_lut_pack_counts(int64_t R, int64_t K, const float* x, int64_t cap, uint8_t* codes, uint8_t* codesT,
                           int64_t* rs, int64_t* re, int32_t* col, float* val, int nthreads) {
  return pack_counts(R, K, x, cap, codes, codesT, rs, re, col, val, nthreads);
}

void sf_lut_linear(int64_t R, int64_t K, int64_t N, const uint8_t* codes, const float* Wt, const float* bias,
                   const int64_t* rs, const int64_t* re, const int32_t* col, const float* val, float* out, int stream,
                   int nthreads) {
  lut_fwd(R, K, N, codes, Wt, bias, Rest{rs, re, col, val}, out, stream, nthreads);
}

int sf_lut_pack_conv3x3(int64_t M, int64_t H, int64_t W, int64_t C, const void* x, int x_bf16, uint8_t* bits,
                         uint8_t* codes, uint8_t* codesT, int nthreads) {
  return x_bf16 ? pack_conv(M, H, W, C, static_cast<const bf16*>(x), bits, codes, codesT, nthreads)
                : pack_conv(M, H, W, C, static_cast<const float*>(x), bits, codes, codesT, nthreads);
}

void sf_lut_linear_wgrad(int64_t R, int64_t K, int64_t N, const uint8_t* codesT, const float* G, const int64_t* rs,
                         const int64_t* re, const int32_t* col, const float* val, float* dWt, int out_nk,
                         int nthreads) {
  lut_wgrad(R, K, N, codesT, G, Rest{rs, re, col, val}, dWt, out_nk, nthreads);
}

}  // extern "C"
