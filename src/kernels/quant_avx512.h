// The AVX-512 products of kernels/quant.cpp (internal). Compiled with target attributes in quant_avx512.cpp,
// so the one binary still runs on AVX2-only CPUs: call a format's kernel only where
// avx512_format_available(dtype) says the CPU has its instructions.
#pragma once

#include <cstdint>

#include "kernels/quant.h"

namespace emo {

// fp32: AVX-512F; bf16: AVX-512 BF16 (+ BW, VL); int8: AVX-512 VNNI (+ VL); q4: AVX-512 VNNI + VL (its
// kernel is in kernels/q4.cpp). False for other dtypes.
bool avx512_format_available(DType dtype);

// Y[N, ldy] = X[N, C] @ W^T for the view's rows, a few tokens, on the calling thread (fp32, bf16, int8).
void stream_tokens_avx512(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w);

// Y[N, ldy] = X[N, C] @ W^T for bf16 weights and any number of tokens (a prompt), x rounded to bf16, one
// vdpbf16ps per 32 weights; on the calling thread. Only where avx512_format_available(kBF16).
void prompt_bf16_avx512(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w);

}  // namespace emo
