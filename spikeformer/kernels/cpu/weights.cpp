// Weights reordered for the compiled products: out[c][b][a] = in[a][b][c] for in [A, B, C] (a Linear's W [N, K] ->
// W^T [K, N] with B = 1; a 3x3 convolution's [Cout, Cin, 9] -> [9, Cin, Cout]). PyTorch's strided copy of these
// permutations ran at 2-3 GB/s; here 16 input rows at a time are read (in L2) and each output row gets 16 contiguous
// values (a cache line), so both sides move whole lines. Tiled (the lookup products' layout, A a multiple of 16):
// out [A / 16][c][b][16], each tile of 16 output columns contiguous over (c, b).

#include "common.h"

namespace {

template <typename X>
void permute_cba(int64_t A, int64_t B, int64_t C, const X* in, X* out, int tiled, int nthreads) {
  constexpr int64_t AB = 16;
  const int64_t nblocks = (A + AB - 1) / AB, row = B * C;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && nblocks > 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t a0 = blk * AB, na = A - a0 < AB ? A - a0 : AB;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        X* o = tiled ? out + a0 * B * C + (c * B + b) * AB : out + (c * B + b) * A + a0;
        const X* s = in + a0 * row + b * C + c;
        for (int64_t i = 0; i < na; ++i) o[i] = s[i * row];
      }
  }
}

}  // namespace

extern "C" {

// out [C, B, A] = in [A, B, C] permuted (c, b, a), elements of 4 bytes (fp32) or 2 (bf16); tiled: out
// [A / 16, C, B, 16] (A a multiple of 16).
void sf_permute_cba(int64_t A, int64_t B, int64_t C, const void* in, void* out, int two_bytes, int tiled,
                    int nthreads) {
  if (two_bytes)
    permute_cba(A, B, C, static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out), tiled, nthreads);
  else
    permute_cba(A, B, C, static_cast<const float*>(in), static_cast<float*>(out), tiled, nthreads);
}

}  // extern "C"
