#include "io/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

constexpr const char* kOp = "gguf";
constexpr int kSuper = 256;  // weights per super-block of the K types (ggml's QK_K)

float from_half(const uint8_t* p) {
  float v;
  convert_to_f32(DType::kF16, p, &v, 1);
  return v;
}

// Stores v as fp16 at p and returns the value as stored.
float put_half(uint8_t* p, float v) {
  convert_from_f32(DType::kF16, &v, p, 1);
  return from_half(p);
}

int round_clamped(float v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::lround(v)), lo, hi);
}

// Squared error of x[n] as s * q, q = round(x / s) in [qmin, qmax].
float symmetric_error(const float* x, int n, float s, int qmin, int qmax) {
  float err = 0;
  for (int i = 0; i < n; ++i) {
    const float e = x[i] - s * static_cast<float>(round_clamped(x[i] / s, qmin, qmax));
    err += e * e;
  }
  return err;
}

// The scale s of x[n] ~= s * q, q in [qmin, qmax] (qmin = -qmax - 1): candidates put the value of largest
// magnitude near the wide end qmin or the narrow end qmax (a slightly larger step than the extreme needs can
// give the other values a better grid), each refined once by least squares for its rounded q; the one of
// least squared error wins. 0 for an all-zero block.
float fit_symmetric(const float* x, int n, int qmin, int qmax) {
  float extreme = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > std::fabs(extreme)) extreme = x[i];
  if (extreme == 0.0f) return 0.0f;
  float best = extreme / static_cast<float>(qmin);
  float best_err = symmetric_error(x, n, best, qmin, qmax);
  auto consider = [&](float divisor) {
    const float s = extreme / divisor;
    float xq = 0, qq = 0;
    for (int i = 0; i < n; ++i) {
      const float q = static_cast<float>(round_clamped(x[i] / s, qmin, qmax));
      xq += x[i] * q, qq += q * q;
    }
    for (float candidate : {s, qq > 0 ? xq / qq : s}) {
      const float err = symmetric_error(x, n, candidate, qmin, qmax);
      if (candidate != 0.0f && err < best_err) best = candidate, best_err = err;
    }
  };
  for (int k = 0; k <= 20; ++k) consider(static_cast<float>(qmin) - 0.5f + 0.125f * static_cast<float>(k));
  for (int k = 0; k <= 8; ++k) consider(static_cast<float>(qmax) + 0.5f - 0.125f * static_cast<float>(k));
  return best;
}

// x ~= scale * q + offset, q in [0, qmax].
struct Affine {
  float scale = 0, offset = 0;
};

float affine_error(const float* x, int n, Affine a, int qmax) {
  float err = 0;
  for (int i = 0; i < n; ++i) {
    const int q = a.scale > 0 ? round_clamped((x[i] - a.offset) / a.scale, 0, qmax) : 0;
    const float e = x[i] - (a.scale * static_cast<float>(q) + a.offset);
    err += e * e;
  }
  return err;
}

// The affine map of least squared error among candidates: the range [lo, hi] (lo <= 0 when the offset may
// not be positive: the K types store it as a subtracted min) spread over qmax + t steps, t in [-1, 1], each
// refined by least squares (offset and scale together, or the scale alone when the fitted offset would be
// positive and may not be) for its rounded q.
Affine fit_affine(const float* x, int n, int qmax, bool offset_at_most_zero) {
  float lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n);
  if (offset_at_most_zero) lo = std::min(lo, 0.0f);
  if (hi <= lo) return {0.0f, lo};
  Affine best{(hi - lo) / static_cast<float>(qmax), lo};
  float best_err = affine_error(x, n, best, qmax);
  for (int k = -10; k <= 10; ++k) {
    const Affine start{(hi - lo) / (static_cast<float>(qmax) + 0.1f * static_cast<float>(k)), lo};
    double sq = 0, sqq = 0, sx = 0, sxq = 0;
    for (int i = 0; i < n; ++i) {
      const double q = round_clamped((x[i] - start.offset) / start.scale, 0, qmax);
      sq += q, sqq += q * q, sx += x[i], sxq += x[i] * q;
    }
    Affine refit = start;
    const double det = n * sqq - sq * sq;
    if (det > 0) {
      refit.scale = static_cast<float>((n * sxq - sq * sx) / det);
      refit.offset = static_cast<float>((sx - refit.scale * sq) / n);
      if (offset_at_most_zero && refit.offset > 0) refit = {static_cast<float>(sxq / sqq), 0.0f};
    }
    for (Affine a : {start, refit}) {
      if (a.scale <= 0) continue;
      const float err = affine_error(x, n, a, qmax);
      if (err < best_err) best = a, best_err = err;
    }
  }
  return best;
}

// Q5_0 and Q5_1: q[32] in [0, 31] as 16 bytes of nibbles (element j low, j + 16 high) and 32 fifth bits.
void pack_q5(const int* q, uint8_t* qh, uint8_t* qs) {
  uint32_t high = 0;
  for (int j = 0; j < 32; ++j) high |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(qh, &high, 4);
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
}

void unpack_q5(const uint8_t* qh, const uint8_t* qs, int* q) {
  uint32_t high;
  std::memcpy(&high, qh, 4);
  for (int j = 0; j < 16; ++j) {
    q[j] = (qs[j] & 0xF) | static_cast<int>(((high >> j) & 1) << 4);
    q[j + 16] = (qs[j] >> 4) | static_cast<int>(((high >> (j + 16)) & 1) << 4);
  }
}

void encode_q5_0(const float* x, uint8_t* b) {  // 22 bytes: d, qh[4], qs[16]
  const float d = put_half(b, fit_symmetric(x, 32, -16, 15));
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = d != 0.0f ? round_clamped(x[j] / d, -16, 15) + 16 : 16;
  pack_q5(q, b + 2, b + 6);
}

void decode_q5_0(const uint8_t* b, float* y) {
  const float d = from_half(b);
  int q[32];
  unpack_q5(b + 2, b + 6, q);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(q[j] - 16);
}

void encode_q5_1(const float* x, uint8_t* b) {  // 24 bytes: d, m, qh[4], qs[16]
  const Affine a = fit_affine(x, 32, 31, false);
  const float d = put_half(b, a.scale), m = put_half(b + 2, a.offset);
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = d > 0 ? round_clamped((x[j] - m) / d, 0, 31) : 0;
  pack_q5(q, b + 4, b + 8);
}

void decode_q5_1(const uint8_t* b, float* y) {
  const float d = from_half(b), m = from_half(b + 2);
  int q[32];
  unpack_q5(b + 4, b + 8, q);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(q[j]) + m;
}

// Q4_K / Q5_K's 12 bytes of 6-bit scales and mins (ggml's get_scale_min_k4): sub-blocks 0-3 in the low 6
// bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the
// top bits of bytes 0-7.
void pack_scales_k(const int* sc, const int* mn, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = static_cast<uint8_t>(sc[j]), s[j + 4] = static_cast<uint8_t>(mn[j]);
    } else {
      s[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
      s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      s[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
  }
}

void unpack_scale_k(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63, *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K (bits 4) and Q5_K (bits 5): header d, dmin, scales[12], then (Q5_K) qh[32], then qs[128]. q[256] in
// [0, 2^bits - 1]: chunk c of 64 weights is 32 bytes of qs, sub-block 2c in the low nibbles and 2c + 1 in the
// high ones; Q5_K's fifth bit of sub-block j is bit j of qh[l].
void encode_k_affine(const float* x, uint8_t* b, int bits) {
  const int qmax = (1 << bits) - 1;
  Affine sub[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    sub[j] = fit_affine(x + 32 * j, 32, qmax, true);
    max_scale = std::max(max_scale, sub[j].scale), max_min = std::max(max_min, -sub[j].offset);
  }
  const float d = put_half(b, max_scale / 63.0f), dmin = put_half(b + 2, max_min / 63.0f);
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = d > 0 ? round_clamped(sub[j].scale / d, 0, 63) : 0;
    mn[j] = dmin > 0 ? round_clamped(-sub[j].offset / dmin, 0, 63) : 0;
  }
  pack_scales_k(sc, mn, b + 4);
  uint8_t* qh = b + 16;
  uint8_t* qs = bits == 5 ? b + 48 : b + 16;
  if (bits == 5) std::memset(qh, 0, 32);
  for (int j = 0; j < 8; ++j) {
    const float scale = d * static_cast<float>(sc[j]), min = dmin * static_cast<float>(mn[j]);
    for (int l = 0; l < 32; ++l) {
      const int q = scale > 0 ? round_clamped((x[32 * j + l] + min) / scale, 0, qmax) : 0;
      uint8_t& byte = qs[32 * (j / 2) + l];
      byte = static_cast<uint8_t>(j % 2 == 0 ? (byte & 0xF0) | (q & 0xF) : (byte & 0x0F) | ((q & 0xF) << 4));
      if (bits == 5) qh[l] |= static_cast<uint8_t>(((q >> 4) & 1) << j);
    }
  }
}

void decode_k_affine(const uint8_t* b, float* y, int bits) {
  const float d = from_half(b), dmin = from_half(b + 2);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = bits == 5 ? b + 48 : b + 16;
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    unpack_scale_k(b + 4, j, &sc, &mn);
    for (int l = 0; l < 32; ++l) {
      const uint8_t byte = qs[32 * (j / 2) + l];
      int q = j % 2 == 0 ? byte & 0xF : byte >> 4;
      if (bits == 5) q |= ((qh[l] >> j) & 1) << 4;
      y[32 * j + l] = d * static_cast<float>(sc) * static_cast<float>(q) - dmin * static_cast<float>(mn);
    }
  }
}

// Q6_K: ql[128], qh[64], scales[16] (int8), d; q[256] in [0, 63]. Each half w of 128 weights has 64 bytes
// of ql (ql[l] = w[l] | w[l + 64] << 4, ql[l + 32] = w[l + 32] | w[l + 96] << 4, low nibbles, l < 32) and 32
// bytes of qh (bits 2k, 2k + 1 of qh[l] = the top two bits of w[l + 32 k]).
void encode_q6_k(const float* x, uint8_t* b) {
  float sub[16], max_abs = 0;
  for (int j = 0; j < 16; ++j) {
    sub[j] = fit_symmetric(x + 16 * j, 16, -32, 31);
    max_abs = std::max(max_abs, std::fabs(sub[j]));
  }
  const float d = put_half(b + 208, max_abs / 127.0f);
  int8_t* scales = reinterpret_cast<int8_t*>(b + 192);
  int q[kSuper];
  for (int j = 0; j < 16; ++j) {
    scales[j] = static_cast<int8_t>(d > 0 ? round_clamped(sub[j] / d, -128, 127) : 0);
    const float scale = d * static_cast<float>(scales[j]);
    for (int l = 0; l < 16; ++l)
      q[16 * j + l] = scale != 0.0f ? round_clamped(x[16 * j + l] / scale, -32, 31) + 32 : 32;
  }
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  for (int h = 0; h < 2; ++h) {
    const int* w = q + 128 * h;
    for (int l = 0; l < 32; ++l) {
      ql[64 * h + l] = static_cast<uint8_t>((w[l] & 0xF) | ((w[l + 64] & 0xF) << 4));
      ql[64 * h + l + 32] = static_cast<uint8_t>((w[l + 32] & 0xF) | ((w[l + 96] & 0xF) << 4));
      qh[32 * h + l] = static_cast<uint8_t>((w[l] >> 4) | ((w[l + 32] >> 4) << 2) | ((w[l + 64] >> 4) << 4) |
                                            ((w[l + 96] >> 4) << 6));
    }
  }
}

void decode_q6_k(const uint8_t* b, float* y) {
  const float d = from_half(b + 208);
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    float* w = y + 128 * h;
    const int8_t* sc = scales + 8 * h;
    for (int l = 0; l < 32; ++l) {
      const int q[4] = {
          (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4), (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
          (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4), (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)};
      for (int k = 0; k < 4; ++k)
        w[l + 32 * k] = d * static_cast<float>(sc[l / 16 + 2 * k]) * static_cast<float>(q[k] - 32);
    }
  }
}

void encode_one_block(GgmlType type, const float* w, uint8_t* dst) {
  switch (type) {
    case GgmlType::kQ5_0:
      return encode_q5_0(w, dst);
    case GgmlType::kQ5_1:
      return encode_q5_1(w, dst);
    case GgmlType::kQ4_K:
      return encode_k_affine(w, dst, 4);
    case GgmlType::kQ5_K:
      return encode_k_affine(w, dst, 5);
    default:
      return encode_q6_k(w, dst);
  }
}

}  // namespace

bool is_ggml_block_type(GgmlType type) {
  return type == GgmlType::kQ5_0 || type == GgmlType::kQ5_1 || type == GgmlType::kQ4_K ||
         type == GgmlType::kQ5_K || type == GgmlType::kQ6_K;
}

void encode_ggml_blocks(GgmlType type, const float* w, int64_t n, uint8_t* dst) {
  const int64_t block = ggml_block_size(type), bytes = ggml_block_bytes(type);
  EMO_CHECK(is_ggml_block_type(type) && n % block == 0, kOp, ggml_type_name(type), " holds whole blocks of ",
            block, " weights, not ", n);
  // The candidate searches cost some hundred operations a weight: a large model's export is split over the
  // pool (blocks are independent).
  parallel_for(n / block, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) encode_one_block(type, w + i * block, dst + i * bytes);
  });
}

void decode_ggml_blocks(GgmlType type, const uint8_t* src, int64_t n, float* out) {
  const int64_t block = ggml_block_size(type), bytes = ggml_block_bytes(type);
  EMO_CHECK(is_ggml_block_type(type) && n % block == 0, kOp, ggml_type_name(type), " holds whole blocks of ",
            block, " weights, not ", n);
  for (int64_t i = 0; i < n / block; ++i, src += bytes, out += block) {
    switch (type) {
      case GgmlType::kQ5_0:
        decode_q5_0(src, out);
        break;
      case GgmlType::kQ5_1:
        decode_q5_1(src, out);
        break;
      case GgmlType::kQ4_K:
        decode_k_affine(src, out, 4);
        break;
      case GgmlType::kQ5_K:
        decode_k_affine(src, out, 5);
        break;
      default:
        decode_q6_k(src, out);
    }
  }
}

}  // namespace emo
