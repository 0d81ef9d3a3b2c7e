// 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016), fp32,
// channels-last frames, as cuDNN's Winograd algorithms do them: each 6x6 input tile d and each 3x3 filter w are
// transformed, the 36 transformed positions become 36 independent GEMMs (done by the BLAS, `torch.bmm`, between the
// kernels below), and each 6x6 product is transformed back into a 4x4 output tile. 36 multiply-adds per channel pair
// give 16 outputs instead of 144: 4x fewer. The sums are exact in exact arithmetic; in fp32 they round differently
// from a direct convolution (about 1e-5 of the output's magnitude; tests/kernels/test_winograd.py).
//
// Forward: y = A^T [(G w G^T) . (B^T d B)] A per tile. The data gradient is the same-padded correlation of the output
// gradient g with the flipped, transposed filter: the same kernels. The weight gradient is the transpose:
// dL/dw = G^T [(A g A^T) . (B^T d B)] G summed over the tiles (sf_wino_grad_tiles transforms g).
//
// The tile at (ty, tx) reads input rows 4ty-1 .. 4ty+4 and columns 4tx-1 .. 4tx+4 (zero outside the frame) and
// writes output rows 4ty .. 4ty+3 and columns 4tx .. 4tx+3 that lie inside it.
//
// Tiles are numbered p = (n * TH + ty) * TW + tx (TH = ceil(H/4), TW = ceil(W/4)); a call handles tiles
// p0 .. p0+P-1, so that the caller can work through a large batch in chunks that stay in cache.

#include "common.h"

namespace {

constexpr int64_t CB = 16;  // channels per vector block

// dst[0..CB) = src[0..nc), zeros past nc
inline void load_block(float* __restrict dst, const float* __restrict src, int64_t nc) {
  if (nc == CB) {
#pragma omp simd
    for (int64_t c = 0; c < CB; ++c) dst[c] = src[c];
  } else {
    for (int64_t c = 0; c < CB; ++c) dst[c] = c < nc ? src[c] : 0.0f;
  }
}

// dst[0..nc) = src[0..nc)
inline void store_block(float* __restrict dst, const float* __restrict src, int64_t nc) {
  if (nc == CB) {
#pragma omp simd
    for (int64_t c = 0; c < CB; ++c) dst[c] = src[c];
  } else {
    for (int64_t c = 0; c < nc; ++c) dst[c] = src[c];
  }
}

// B^T d for six vectors d[0..5] (each CB channels): out[a] = sum_i BT[a][i] d[i]
inline void bt6(const float (*d)[CB], float (*o)[CB]) {
#pragma omp simd
  for (int64_t c = 0; c < CB; ++c) {
    const float d0 = d[0][c], d1 = d[1][c], d2 = d[2][c], d3 = d[3][c], d4 = d[4][c], d5 = d[5][c];
    o[0][c] = 4.0f * d0 - 5.0f * d2 + d4;
    o[1][c] = -4.0f * (d1 + d2) + (d3 + d4);
    o[2][c] = 4.0f * (d1 - d2) + (d4 - d3);
    o[3][c] = 2.0f * (d3 - d1) + (d4 - d2);
    o[4][c] = 2.0f * (d1 - d3) + (d4 - d2);
    o[5][c] = 4.0f * d1 - 5.0f * d3 + d5;
  }
}

// A^T m for six vectors m[0..5]: out[r] = sum_i AT[r][i] m[i]
inline void at6(const float (*m)[CB], float (*o)[CB]) {
#pragma omp simd
  for (int64_t c = 0; c < CB; ++c) {
    const float p12 = m[1][c] + m[2][c], m12 = m[1][c] - m[2][c];
    const float p34 = m[3][c] + m[4][c], m34 = m[3][c] - m[4][c];
    o[0][c] = m[0][c] + p12 + p34;
    o[1][c] = m12 + 2.0f * m34;
    o[2][c] = p12 + 4.0f * p34;
    o[3][c] = m12 + 8.0f * m34 + m[5][c];
  }
}

// A m for four vectors m[0..3] (A = (A^T)^T, 6x4): out[k] = sum_r AT[r][k] m[r]. The weight gradient's transform of
// a 4x4 tile of the output gradient: dL/dW = G^T [(A g A^T) . (B^T d B)] G summed over the tiles, the transpose of
// the forward A^T [(G w G^T) . (B^T d B)] A.
inline void a46(const float (*m)[CB], float (*o)[CB]) {
#pragma omp simd
  for (int64_t c = 0; c < CB; ++c) {
    const float m0 = m[0][c], m1 = m[1][c], m2 = m[2][c], m3 = m[3][c];
    const float p02 = m0 + m2, p13 = m1 + m3, q02 = m0 + 4.0f * m2, q13 = 2.0f * m1 + 8.0f * m3;
    o[0][c] = m0;
    o[1][c] = p02 + p13;
    o[2][c] = p02 - p13;
    o[3][c] = q02 + q13;
    o[4][c] = q02 - q13;
    o[5][c] = m3;
  }
}

// The IN x IN tiles of src [N, H, W, C] (channels-last; tile p reads rows 4ty+OFF .. 4ty+OFF+IN-1 and the same
// columns, zero outside the frame) transformed on both sides by F, which maps IN vectors to 6:
// dst[a*6+b][p - p0] = (M s M^T)[a][b] for the 6 x IN matrix M of F. B^T (IN 6, OFF -1) for the inputs of the forward
// and the data gradient, A (IN 4, OFF 0) for the output gradient of the weight gradient.
template <int IN, int OFF, void (*F)(const float (*)[CB], float (*)[CB])>
void tiles_to_6x6(int64_t H, int64_t W, int64_t C, int64_t p0, int64_t P, const float* src, float* dst,
                  int nthreads) {
  const int64_t TH = (H + 3) / 4, TW = (W + 3) / 4;
  const int64_t cblocks = (C + CB - 1) / CB;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t q = 0; q < P; ++q) {
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      const int64_t p = p0 + q;
      const int64_t n = p / (TH * TW), ty = (p / TW) % TH, tx = p % TW;
      const int64_t c0 = cb * CB, nc = C - c0 < CB ? C - c0 : CB;
      alignas(64) float d[IN][IN][CB];
      alignas(64) float t[6][IN][CB];  // t[a][j] = (M d)[a][j]
      for (int64_t i = 0; i < IN; ++i) {
        const int64_t y = 4 * ty + OFF + i;
        for (int64_t j = 0; j < IN; ++j) {
          const int64_t x = 4 * tx + OFF + j;
          if (y < 0 || y >= H || x < 0 || x >= W) {
            for (int64_t c = 0; c < CB; ++c) d[i][j][c] = 0.0f;
          } else {
            load_block(d[i][j], src + ((n * H + y) * W + x) * C + c0, nc);
          }
        }
      }
      // columns: for each j, transform d[0..IN)[j] over i
      for (int64_t j = 0; j < IN; ++j) {
        float col[IN][CB], out[6][CB];
        for (int64_t i = 0; i < IN; ++i)
          for (int64_t c = 0; c < CB; ++c) col[i][c] = d[i][j][c];
        F(col, out);
        for (int64_t a = 0; a < 6; ++a)
          for (int64_t c = 0; c < CB; ++c) t[a][j][c] = out[a][c];
      }
      // rows: for each a, transform t[a][0..IN) over j
      for (int64_t a = 0; a < 6; ++a) {
        float out[6][CB];
        F(t[a], out);
        for (int64_t b = 0; b < 6; ++b) store_block(dst + ((a * 6 + b) * P + q) * C + c0, out[b], nc);
      }
    }
  }
}

}  // namespace

extern "C" {

// d [N, H, W, C] fp32 (channels-last) -> v [36, P, C]: v[a*6+b][p - p0] = (B^T d B)[a][b] of the 6x6 tile p of d.
void sf_wino_input(int64_t N, int64_t H, int64_t W, int64_t C, int64_t p0, int64_t P, const float* d, float* v,
                   int nthreads) {
  (void)N;
  tiles_to_6x6<6, -1, bt6>(H, W, C, p0, P, d, v, nthreads);
}

// g [N, H, W, C] fp32 (channels-last) -> t [36, P, C]: t[a*6+b][p - p0] = (A g A^T)[a][b] of the 4x4 tile p of g
// (rows 4ty .. 4ty+3, columns 4tx .. 4tx+3), for the weight gradient.
void sf_wino_grad_tiles(int64_t N, int64_t H, int64_t W, int64_t C, int64_t p0, int64_t P, const float* g,
                        float* t6, int nthreads) {
  (void)N;
  tiles_to_6x6<4, 0, a46>(H, W, C, p0, P, g, t6, nthreads);
}

// m [36, P, C] -> dx [N, H, W, C] fp32 (channels-last): the 4x4 tile A^T m A of tile p (plus bias[c] unless
// bias is null), rows and columns inside the frame only.
void sf_wino_output(int64_t N, int64_t H, int64_t W, int64_t C, int64_t p0, int64_t P, const float* m,
                    const float* bias, float* dx, int nthreads) {
  const int64_t TH = (H + 3) / 4, TW = (W + 3) / 4;
  const int64_t cblocks = (C + CB - 1) / CB;
  (void)N;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t q = 0; q < P; ++q) {
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      const int64_t p = p0 + q;
      const int64_t n = p / (TH * TW), ty = (p / TW) % TH, tx = p % TW;
      const int64_t c0 = cb * CB, nc = C - c0 < CB ? C - c0 : CB;
      alignas(64) float mm[6][6][CB];
      alignas(64) float t[4][6][CB];  // t[r][b] = (A^T m)[r][b]
      for (int64_t k = 0; k < 36; ++k) load_block(mm[k / 6][k % 6], m + (k * P + q) * C + c0, nc);
      for (int64_t b = 0; b < 6; ++b) {
        float col[6][CB], out[4][CB];
        for (int64_t a = 0; a < 6; ++a)
          for (int64_t c = 0; c < CB; ++c) col[a][c] = mm[a][b][c];
        at6(col, out);
        for (int64_t r = 0; r < 4; ++r)
          for (int64_t c = 0; c < CB; ++c) t[r][b][c] = out[r][c];
      }
      for (int64_t r = 0; r < 4; ++r) {
        const int64_t y = 4 * ty + r;
        if (y >= H) break;
        float out[4][CB];
        at6(t[r], out);
        if (bias) {
          for (int64_t s = 0; s < 4; ++s)
            for (int64_t c = 0; c < nc; ++c) out[s][c] += bias[c0 + c];
        }
        for (int64_t s = 0; s < 4; ++s) {
          const int64_t x = 4 * tx + s;
          if (x >= W) break;
          store_block(dx + ((n * H + y) * W + x) * C + c0, out[s], nc);
        }
      }
    }
  }
}

}  // extern "C"
