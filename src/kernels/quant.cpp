// Legend: N = tokens, C = input width, OC = output rows, R = rows per register block, T = tokens per block.
#include "kernels/quant.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/q4.h"
#include "kernels/quant_avx512.h"
#include "kernels/quant_stream.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

// Up to this many tokens each weight row is streamed once for a block of tokens (memory-bound regime);
// beyond it, blocks of rows are dequantised once and multiplied by sgemm (compute-bound regime).
constexpr int64_t kStreamTokens = 8;
// Rows dequantised per sgemm call: about 64 KiB of fp32, so the block stays in L2 while sgemm reuses it.
constexpr int64_t kBlockBytes = 64 * 1024;
constexpr int64_t kChunkBytes = 16 * 1024;

// One kernel format: how a token's x is prepared once per call, and how kStep weights of a row are
// multiplied into an accumulator. fp32: plain FMA. bf16: 16 weights per load, the even ones made fp32 by a
// shift and the odd ones by a mask (x is prepared with each 16-block split into its even then odd elements).
// int8: x is quantised to int16 once per call (scale max|x| / 32767, error about 1.5e-5 of max|x|), then
// 16 weights widen to int16 and multiply-add in integers (vpmaddwd); the int32 sums are flushed to fp32 every
// 4096 columns, before they could overflow (|w x| <= 127 * 32767 per product).
struct F32Format : F32Common {
  using Acc = __m256;
  static constexpr int64_t kStep = 8;
  static constexpr int kRowsFor4 = 2, kRowsFor1 = 4;
  static Acc zero() { return _mm256_setzero_ps(); }
  static Acc step(Acc acc, const float* w, const float* x) {
    return _mm256_fmadd_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(x), acc);
  }
  static float reduce(Acc acc) { return vec::hsum8(acc); }
};

struct BF16Format : BF16Common {
  using X = float;
  using Acc = __m256;
  static constexpr int64_t kStep = 16, kXWidth = 1;
  static constexpr int kRowsFor4 = 2, kRowsFor1 = 4;
  static float prepare(const float* x, int64_t C, float* out) {
    int64_t c = 0;
    for (; c + 16 <= C; c += 16)
      for (int i = 0; i < 8; ++i) out[c + i] = x[c + 2 * i], out[c + 8 + i] = x[c + 2 * i + 1];
    std::copy(x + c, x + C, out + c);
    return 1.0f;
  }
  static Acc zero() { return _mm256_setzero_ps(); }
  static Acc step(Acc acc, const uint16_t* w, const float* x) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xffff0000u))));
    acc = _mm256_fmadd_ps(even, _mm256_loadu_ps(x), acc);
    return _mm256_fmadd_ps(odd, _mm256_loadu_ps(x + 8), acc);
  }
  static float reduce(Acc acc) { return vec::hsum8(acc); }
  static float input(const float* x) { return *x; }
};

struct I8Format : I8Common {
  static constexpr int kRowsFor4 = 2, kRowsFor1 = 4;
  static Acc step(Acc acc, const int8_t* w, const int16_t* x) {
    const __m256i x16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(widen(w), x16));
  }
};

void stream_any(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  switch (w.dtype) {
    case DType::kF32:
      return stream_tokens<F32Format>(y, ldy, x, N, w);
    case DType::kBF16:
      return stream_tokens<BF16Format>(y, ldy, x, N, w);
    case DType::kI8:
      return stream_tokens<I8Format>(y, ldy, x, N, w);
    default:
      fail("quant", cat("no kernel for weights of dtype ", dtype_name(w.dtype)));
  }
}

// Y[N, ldy] for many tokens: fp32 weights straight to sgemm, others dequantised block by block.
void gemm_rows(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  const int64_t C = w.cols;
  if (w.dtype == DType::kF32) {
    gemm_serial(false, true, N, w.rows, C, 1.0f, x, C, static_cast<const float*>(w.data), C, 0.0f, y, ldy);
    return;
  }
  thread_local std::vector<float> block;  // [rows_per_block, C] dequantised weights
  const int64_t rows_per_block = std::max<int64_t>(8, kBlockBytes / static_cast<int64_t>(sizeof(float) * C));
  block.resize(static_cast<size_t>(rows_per_block * C));
  for (int64_t r = 0; r < w.rows; r += rows_per_block) {
    const int64_t end = std::min(w.rows, r + rows_per_block);
    dequantize_rows(block.data(), w, r, end);
    gemm_serial(false, true, N, end - r, C, 1.0f, x, C, block.data(), C, 0.0f, y + r, ldy);
  }
}

// Activations of a product with q4 weights: int8 blocks of 32, made once per product for all its rows.
struct Q8Activations {
  std::vector<int8_t> q;  // [N, C]
  std::vector<float> d;   // [N, C / 32]
  void prepare(const float* x, int64_t N, int64_t C) {
    q.resize(static_cast<size_t>(N * C));
    d.resize(static_cast<size_t>(N * C / kQ4BlockWeights));
    for (int64_t n = 0; n < N; ++n)
      quantize_row_q8(x + n * C, q.data() + n * C, d.data() + n * C / kQ4BlockWeights, C);
  }
};

bool any_q4(const std::vector<MatrixView>& ws) {
  return std::any_of(ws.begin(), ws.end(), [](const MatrixView& w) { return w.dtype == DType::kQ4_0; });
}

// Whether the AVX-512 kernels run this product.
bool use_avx512(DType dtype) {
  return quant_kernel() == QuantKernel::kAvx512 && avx512_format_available(dtype);
}

// q4 weights take the integer kernel for any number of tokens (x8 prepared); the others stream up to
// kStreamTokens tokens (on AVX-512 where the CPU has the format's instructions) and use sgemm beyond, but
// bf16 on AVX-512, whose prompts round x to bf16 for one vdpbf16ps per 32 weights (docs/inference.md: speed
// and the perplexity change). The hi + lo split of decode ran prompts at 0.67x of dequantised sgemm.
void matmul_rows(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w,
                 const Q8Activations* x8) {
  if (w.dtype == DType::kQ4_0)
    q4_dot_rows(use_avx512(DType::kQ4_0) ? Q4Kernel::kAvx512Vnni : Q4Kernel::kAvx2, y, ldy,
                static_cast<const uint8_t*>(w.data), w.rows, w.cols, x8->q.data(), x8->d.data(), N);
  else if (N <= kStreamTokens && use_avx512(w.dtype))
    stream_tokens_avx512(y, ldy, x, N, w);
  else if (w.dtype == DType::kBF16 && use_avx512(w.dtype))
    prompt_bf16_avx512(y, ldy, x, N, w);
  else if (N <= kStreamTokens)
    stream_any(y, ldy, x, N, w);
  else
    gemm_rows(y, ldy, x, N, w);
}

std::atomic<int> selected_kernel{-1};

QuantKernel default_kernel() {
  const char* forced = std::getenv("EMO_QUANT_KERNEL");
  if (forced && std::string(forced) == quant_kernel_name(QuantKernel::kAvx2)) return QuantKernel::kAvx2;
  return avx512_format_available(DType::kF32) ? QuantKernel::kAvx512 : QuantKernel::kAvx2;
}

// Rows per parallel chunk: about 16 KiB of weights streamed once per 8 tokens, well above the cost of handing
// a chunk to a polling worker (0.1-0.4 us). Measured on decode (bench_infer models): 16 KiB beat 256 KiB by
// 25% on the reference model in int8 and by 20% on the 1.6 GB model in int8; 4-8 KiB were no better.
int64_t row_grain(const MatrixView& w, int64_t N) {
  const int64_t row_bytes = std::max<int64_t>(1, matrix_row_bytes(w.dtype, w.cols));
  const int64_t passes = std::max<int64_t>(1, N / kStreamTokens);
  return std::max<int64_t>(1, kChunkBytes / (row_bytes * passes));
}

}  // namespace

const char* quant_kernel_name(QuantKernel kernel) {
  return kernel == QuantKernel::kAvx512 ? "avx512" : "avx2";
}

bool quant_kernel_available(QuantKernel kernel, DType dtype) {
  const bool format =
      dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kI8 || dtype == DType::kQ4_0;
  return format && (kernel == QuantKernel::kAvx2 || avx512_format_available(dtype));
}

QuantKernel quant_kernel() {
  int k = selected_kernel.load(std::memory_order_relaxed);
  if (k < 0) {
    k = static_cast<int>(default_kernel());
    selected_kernel.store(k, std::memory_order_relaxed);
  }
  return static_cast<QuantKernel>(k);
}

void set_quant_kernel(QuantKernel kernel) {
  EMO_CHECK(kernel == QuantKernel::kAvx2 || avx512_format_available(DType::kF32), "quant", "the ",
            quant_kernel_name(kernel), " kernels need instructions this CPU does not have (AVX-512F)");
  selected_kernel.store(static_cast<int>(kernel), std::memory_order_relaxed);
}

int64_t matrix_row_bytes(DType dtype, int64_t cols) {
  return dtype == DType::kQ4_0 ? q4_row_bytes(cols) : cols * static_cast<int64_t>(dtype_size(dtype));
}

int64_t MatrixView::nbytes() const {
  int64_t bytes = rows * matrix_row_bytes(dtype, cols);
  return dtype == DType::kI8 ? bytes + rows * static_cast<int64_t>(sizeof(float)) : bytes;
}

MatrixView MatrixView::row_block(int64_t begin, int64_t end) const {
  MatrixView v = *this;
  v.data = static_cast<const char*>(data) + begin * matrix_row_bytes(dtype, cols);
  v.scales = scales ? scales + begin : nullptr;
  v.rows = end - begin;
  return v;
}

void check_matrix_view(const MatrixView& w, const char* what) {
  EMO_CHECK(
      w.dtype == DType::kF32 || w.dtype == DType::kBF16 || w.dtype == DType::kI8 || w.dtype == DType::kQ4_0,
      "quant", what, ": weights of dtype ", dtype_name(w.dtype), " are not supported (F32, BF16, I8, Q4_0)");
  EMO_CHECK(w.dtype != DType::kQ4_0 || w.cols % kQ4BlockWeights == 0, "quant", what, ": ", w.cols,
            " columns are not whole q4 blocks of ", kQ4BlockWeights);
  EMO_CHECK(w.data != nullptr || w.rows * w.cols == 0, "quant", what, ": no weight data");
  EMO_CHECK(w.dtype != DType::kI8 || w.scales != nullptr, "quant", what, ": int8 weights need row scales");
}

void matvec_serial(float* y, const MatrixView& w, const float* x) {
  matmul_serial(y, x, 1, w);
}

void matvec(float* y, const MatrixView& w, const float* x) {
  matmul(y, x, 1, w);
}

void matmul_serial(float* y, const float* x, int64_t N, const MatrixView& w) {
  thread_local Q8Activations x8;
  if (w.dtype == DType::kQ4_0) x8.prepare(x, N, w.cols);
  matmul_rows(y, w.rows, x, N, w, &x8);
}

void matmul(float* y, const float* x, int64_t N, const MatrixView& w) {
  matmul_group({y}, x, N, {w});
}

void matmul_group(const std::vector<float*>& ys, const float* x, int64_t N,
                  const std::vector<MatrixView>& ws) {
  EMO_CHECK(ys.size() == ws.size() && !ws.empty(), "quant", "matmul_group needs one output per matrix");
  std::vector<int64_t> first(ws.size() + 1, 0);  // first global row of each matrix
  for (size_t i = 0; i < ws.size(); ++i) {
    EMO_CHECK(ws[i].cols == ws[0].cols, "quant", "matmul_group: matrices of ", ws[0].cols, " and ",
              ws[i].cols, " columns");
    first[i + 1] = first[i] + ws[i].rows;
  }
  thread_local Q8Activations caller_x8;  // written before the region below, read by every worker of it
  if (any_q4(ws)) caller_x8.prepare(x, N, ws[0].cols);
  // By pointer: a thread_local named inside the lambda would be each worker's own (empty) instance.
  const Q8Activations* x8 = &caller_x8;
  parallel_for(first.back(), row_grain(ws[0], N), [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < ws.size(); ++i) {
      const int64_t b = std::max(begin, first[i]) - first[i], e = std::min(end, first[i + 1]) - first[i];
      if (b < e) matmul_rows(ys[i] + b, ws[i].rows, x, N, ws[i].row_block(b, e), x8);
    }
  });
}

void dequantize_rows(float* out, const MatrixView& w, int64_t begin, int64_t end) {
  const int64_t C = w.cols, n = (end - begin) * C;
  const char* src = static_cast<const char*>(w.data) + begin * matrix_row_bytes(w.dtype, C);
  if (w.dtype == DType::kQ4_0) {
    for (int64_t r = 0; r < end - begin; ++r)
      dequantize_row_q4_0(reinterpret_cast<const BlockQ4_0*>(src + r * q4_row_bytes(C)), out + r * C, C);
    return;
  }
  if (w.dtype != DType::kI8) {
    convert_to_f32(w.dtype, src, out, static_cast<size_t>(n));
    return;
  }
  const auto* q = reinterpret_cast<const int8_t*>(src);
  for (int64_t r = 0; r < end - begin; ++r) {
    const __m256 scale = _mm256_set1_ps(w.scales[begin + r]);
    const int8_t* row = q + r * C;
    float* dst = out + r * C;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c));
      _mm256_storeu_ps(dst + c, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale));
    }
    for (; c < C; ++c) dst[c] = static_cast<float>(row[c]) * w.scales[begin + r];
  }
}

void quantize_rows_int8(int8_t* q, float* scales, const float* w, int64_t rows, int64_t cols) {
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = w + r * cols;  // [cols]
      float max_abs = 0.0f;
      for (int64_t c = 0; c < cols; ++c) max_abs = std::max(max_abs, std::fabs(row[c]));
      const float scale = max_abs > 0.0f ? max_abs / 127.0f : 1.0f;
      scales[r] = scale;
      for (int64_t c = 0; c < cols; ++c) {
        const float v = std::nearbyint(row[c] / scale);
        q[r * cols + c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
      }
    }
  });
}

}  // namespace emo
