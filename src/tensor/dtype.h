// Element types emo stores and reads: fp32 (compute), bf16 (storage, released checkpoints), f16 (read only),
// int8 with per-row scales (quantised inference), and kQ4_0: blocks of 32 4-bit weights in llama.cpp's Q4_0
// layout (kernels/q4.h), a kernel-side format stored in safetensors as U8 bytes, never a safetensors dtype.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace emo {

enum class DType { kF32, kBF16, kF16, kI8, kI32, kI64, kU8, kQ4_0 };

// kQ4_0: blocks of 32 weights along a row, each 18 bytes (an fp16 scale and 16 bytes of nibbles).
constexpr int64_t kQ4BlockWeights = 32;
constexpr int64_t kQ4BlockBytes = 18;

// Bytes per element; throws for kQ4_0 (18 bytes per 32 weights: see dtype_bytes).
size_t dtype_size(DType t);
// Bytes of `count` elements (kQ4_0: count / 32 whole blocks; count must be a multiple of 32).
uint64_t dtype_bytes(DType t, uint64_t count);
// The safetensors spelling: "F32", "BF16", "F16", "I8", "I32", "I64", "U8" ("Q4_0" for kQ4_0, which
// dtype_from_name does not accept).
std::string dtype_name(DType t);
// Parses the safetensors spelling; throws "[dtype] unknown dtype 'X'" otherwise.
DType dtype_from_name(const std::string& name);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as PyTorch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);

// Converts n elements of type `from` at src to fp32 at dst (kQ4_0: n / 32 blocks dequantised, n a multiple
// of 32; src needs no alignment).
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Converts n fp32 values to `to` (kF32, kBF16 or kF16).
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

// Index of the first NaN or infinity among n elements of type t at data (any alignment), or -1 when all are
// finite; integer types (and kQ4_0, whose scales are f16 inside its blocks: not scanned) hold none.
// Vectorised: it runs at about the speed memory delivers the bytes.
int64_t first_nonfinite(DType t, const void* data, int64_t n);

}  // namespace emo
