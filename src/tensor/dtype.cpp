#include "tensor/dtype.h"

#include <immintrin.h>

#include "core/error.h"

namespace emo {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI8:
      return 1;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kU8:
      return 1;
    case DType::kQ4_0:
      fail("dtype", "Q4_0 weights have no size per element (18 bytes per block of 32)");
  }
  return 0;
}

uint64_t dtype_bytes(DType t, uint64_t count) {
  if (t != DType::kQ4_0) return count * dtype_size(t);
  EMO_CHECK(count % kQ4BlockWeights == 0, "dtype", "Q4_0 holds whole blocks of ", kQ4BlockWeights,
            " weights, not ", count);
  return count / kQ4BlockWeights * kQ4BlockBytes;
}

std::string dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI8:
      return "I8";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kU8:
      return "U8";
    case DType::kQ4_0:
      return "Q4_0";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "I8") return DType::kI8;
  if (name == "I32") return DType::kI32;
  if (name == "I64") return DType::kI64;
  if (name == "U8") return DType::kU8;
  fail("dtype", "unknown dtype '" + name + "' (supported: F32, BF16, F16, I8, I32, I64, U8)");
}

namespace {

// Q4_0 (llama.cpp's layout): per block an fp16 scale d, then byte j holding element j in its low nibble and
// element j + 16 in its high nibble; the weight is (nibble - 8) * d.
void dequantize_q4_0(const unsigned char* src, float* dst, size_t n) {
  EMO_CHECK(n % kQ4BlockWeights == 0, "dtype", "Q4_0 holds whole blocks of ", kQ4BlockWeights,
            " weights, not ", n);
  constexpr size_t half = kQ4BlockWeights / 2;
  for (size_t b = 0; b < n / kQ4BlockWeights; ++b) {
    const unsigned char* block = src + b * kQ4BlockBytes;
    uint16_t bits;
    std::memcpy(&bits, block, 2);  // blocks are 18 bytes: the scale is only 2-byte aligned at best
    const float d = _cvtsh_ss(bits);
    const unsigned char* nibbles = block + 2;
    float* out = dst + b * kQ4BlockWeights;
    for (size_t j = 0; j < half; ++j) {
      out[j] = static_cast<float>((nibbles[j] & 0x0F) - 8) * d;
      out[j + half] = static_cast<float>((nibbles[j] >> 4) - 8) * d;
    }
  }
}

}  // namespace

float f16_to_f32(uint16_t h) {
  return _cvtsh_ss(h);
}

void convert_to_f32(DType from, const void* src, float* dst, size_t n) {
  switch (from) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::kQ4_0:
      return dequantize_q4_0(static_cast<const unsigned char*>(src), dst, n);
    default:
      fail("dtype", "cannot convert " + dtype_name(from) + " to F32");
  }
}

namespace {

// A float is NaN or infinite when its exponent bits are all ones. Each block is one OR over exponent tests
// with a trip count known at compile time, which the compiler vectorises at -O2; only a block that holds a
// bad value is searched element by element.
template <typename Bits, Bits kExponent>
int64_t first_nonfinite_bits(const unsigned char* bytes, int64_t n) {
  constexpr int64_t kBlock = 256;
  auto bad = [&](int64_t i) {
    Bits b;
    std::memcpy(&b, bytes + i * static_cast<int64_t>(sizeof(Bits)), sizeof(Bits));
    return static_cast<Bits>((b & kExponent) == kExponent);
  };
  auto search = [&](int64_t begin, int64_t end) -> int64_t {
    for (int64_t i = begin; i < end; ++i)
      if (bad(i)) return i;
    return -1;
  };
  int64_t start = 0;
  for (; start + kBlock <= n; start += kBlock) {
    Bits any = 0;
    for (int64_t i = 0; i < kBlock; ++i) any |= bad(start + i);
    if (any) return search(start, start + kBlock);
  }
  return search(start, n);
}

}  // namespace

int64_t first_nonfinite(DType t, const void* data, int64_t n) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  switch (t) {
    case DType::kF32:
      return first_nonfinite_bits<uint32_t, 0x7f800000u>(bytes, n);
    case DType::kBF16:
      return first_nonfinite_bits<uint16_t, 0x7f80u>(bytes, n);
    case DType::kF16:
      return first_nonfinite_bits<uint16_t, 0x7c00u>(bytes, n);
    default:
      return -1;
  }
}

void convert_from_f32(DType to, const float* src, void* dst, size_t n) {
  switch (to) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = _cvtss_sh(src[i], 0);
      return;
    }
    default:
      fail("dtype", "cannot convert F32 to " + dtype_name(to));
  }
}

}  // namespace emo
