// llama.cpp's 5-bit and k-quant block layouts, byte for byte (ggml-common.h of ggml; every scale an IEEE
// fp16), encoded by emo's own quantisers and decoded as ggml dequantises them:
//
//   Q5_0 (22 bytes / 32 weights): fp16 d, 4 bytes qh, 16 bytes qs; q = nibble | qh bit << 4, w = d (q - 16).
//   Q5_1 (24 bytes / 32): fp16 d, fp16 m, qh, qs as Q5_0; w = d q + m.
//   Q4_K (144 bytes / 256): fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32,
//        128 bytes of nibbles; w = d sc_j q - dmin m_j, q in [0, 15].
//   Q5_K (176 bytes / 256): Q4_K's header, 32 bytes qh (the fifth bits), 128 bytes of nibbles; q in [0, 31].
//   Q6_K (210 bytes / 256): 128 bytes of low nibbles, 64 bytes of high 2 bits, 16 int8 scales for 16
//        sub-blocks of 16, fp16 d; w = d sc_j (q - 32), q in [0, 63].
//
// The quantisers (not llama.cpp's, which weight each value by its magnitude): every sub-block's scale (and
// min) is searched over candidates around the range's extremes and refined by least squares on the rounded
// values, for the least plain squared error; the K types then round the sub-block scales to 6 (Q6_K: 8)
// bits against the super-block's largest and re-round the weights to the scales as stored.
#pragma once

#include <cstdint>

#include "io/gguf.h"

namespace emo {

// Whether `type` is one of the layouts above.
bool is_ggml_block_type(GgmlType type);
// n weights (whole blocks) of `type` (is_ggml_block_type) from w to dst (ggml_row_bytes(type, n) bytes).
void encode_ggml_blocks(GgmlType type, const float* w, int64_t n, uint8_t* dst);
// The inverse: n weights of `type` at src to fp32.
void decode_ggml_blocks(GgmlType type, const uint8_t* src, int64_t n, float* out);

}  // namespace emo
