// What every compiled CPU kernel shares: bfloat16 storage, loads and stores in either dtype, rounding to a dtype,
// and the multiply-add that is fused where the CPU has FMA.
//
// The kernels are plain C++ with a C ABI and no PyTorch headers, built together into one shared library by
// spikeformer/kernels/cpu/build.py with the machine's C++ compiler and loaded with ctypes. OpenMP resolves to the
// runtime PyTorch has already loaded, so the kernels share PyTorch's thread pool. Everything is compiled with
// -ffp-contract=off: no multiply-add is fused unless a kernel asks for it (madd), so the kernels that promise
// PyTorch's bits keep its separate roundings.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

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
// Stores a v that the dtype represents exactly (a spike, or a value rnd() has rounded): no second rounding.
inline void st_exact(float* p, int64_t i, float v) { p[i] = v; }
inline void st_exact(bf16* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  p[i] = static_cast<bf16>(u >> 16);
}
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

}  // namespace
