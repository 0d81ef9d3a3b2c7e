// fp32 values as exact sums of bf16 pieces, for fp32 products of spikes on bf16 matrix units (kernels/cpu/split.py).
//
// An fp32 value has a 24-bit significand; a bfloat16 has 8 bits. Truncating v to bf16 gives hi, whose bits are v's
// top bits, so r = v - hi is exact in fp32 and has at most 16 significant bits; truncating r gives mid, and
// lo = r - mid has at most 8 significant bits: a bf16, exactly. So v = hi + mid + lo without rounding (for v of
// normal range; infinities and NaN become NaN). Spikes and spike counts (small integers) are bf16 already.

#include "common.h"

namespace {

inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace

extern "C" {

// out [R][copies * K] (bf16) = `copies` copies side by side of each row of x [R][K] (fp32, row stride ldx).
// Returns 1 (out partly written) where some value of x is not a bf16 exactly, else 2 where some value is neither 0
// nor 1 (spike counts), else 0 (0/1 spikes).
int sf_split_pack(int64_t R, int64_t K, const float* x, int64_t ldx, uint16_t* out, int copies, int nthreads) {
  int bad = 0, counts = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(| : bad, counts) if (nthreads > 1 && R > 64)
  for (int64_t r = 0; r < R; ++r) {
    const uint32_t* s = reinterpret_cast<const uint32_t*>(x + r * ldx);
    uint16_t* o = out + r * copies * K;
    uint32_t low = 0, other = 0;
    for (int64_t k = 0; k < K; ++k) {
      low |= s[k] & 0xFFFFu;
      other |= (s[k] != 0u) & (s[k] != 0x3F800000u);  // neither +0 nor 1.0
      o[k] = static_cast<uint16_t>(s[k] >> 16);
    }
    for (int c = 1; c < copies; ++c) std::memcpy(o + c * K, o, K * sizeof(uint16_t));
    bad |= low != 0;
    counts |= other != 0;
  }
  return bad ? 1 : counts ? 2 : 0;
}

// The three bf16 pieces hi + mid + lo = src of src [R][C] (fp32, row stride lds): piece p of row r at
// dst + p * piece + r * ldd (bf16; piece may be negative: split.py stores lo, mid, hi in that order).
void sf_split3(int64_t R, int64_t C, const float* src, int64_t lds, uint16_t* dst, int64_t ldd, int64_t piece,
               int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && R * C > 65536)
  for (int64_t r = 0; r < R; ++r) {
    const float* s = src + r * lds;
    uint16_t* h = dst + r * ldd;
    uint16_t* m = h + piece;
    uint16_t* l = m + piece;
    for (int64_t c = 0; c < C; ++c) {
      const bf16 hi = static_cast<bf16>(bits(s[c]) >> 16);  // truncated: v's top bits
      const float rest = s[c] - bf2f(hi);
      const bf16 mid = static_cast<bf16>(bits(rest) >> 16);
      h[c] = hi;
      m[c] = mid;
      l[c] = static_cast<bf16>(bits(rest - bf2f(mid)) >> 16);
    }
  }
}

}  // extern "C"
