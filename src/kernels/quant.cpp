// Legend: N = tokens, C = input width, OC = output rows, R = rows per register block, T = tokens per block.
#include "kernels/quant.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

// Up to this many tokens each weight row is streamed once for a block of tokens (memory-bound regime);
// beyond it, blocks of rows are dequantised once and multiplied by sgemm (compute-bound regime).
constexpr int64_t kStreamTokens = 8;
// Rows dequantised per sgemm call: about 64 KiB of fp32, so the block stays in L2 while sgemm reuses it.
constexpr int64_t kBlockBytes = 64 * 1024;

// Loads 8 consecutive weights of a row as fp32 (int8: the raw integers; the row scale is applied once at the
// end of the dot product).
struct LoadF32 {
  using Elem = float;
  static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float load1(const float* p) { return *p; }
};
struct LoadBF16 {
  using Elem = uint16_t;
  static __m256 load8(const uint16_t* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float load1(const uint16_t* p) { return bf16_to_f32(*p); }
};
struct LoadI8 {
  using Elem = int8_t;
  static __m256 load8(const int8_t* p) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  }
  static float load1(const int8_t* p) { return static_cast<float>(*p); }
};

// y[t * ldy + r] = dot(W[r, :], x[t, :]) * scale[r] for R rows starting at row0 and T tokens: R*T independent
// accumulators, each weight vector loaded once for all T tokens.
template <class L, int R, int T>
void dot_block(float* y, int64_t ldy, const typename L::Elem* w, const float* scales, int64_t row0,
               const float* x, int64_t C) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const typename L::Elem* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w + (row0 + r) * C;
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * C + c);
    for (int r = 0; r < R; ++r) {
      __m256 wv = L::load8(rows[r] + c);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float scale = scales ? scales[row0 + r] : 1.0f;
    for (int t = 0; t < T; ++t) {
      float sum = vec::hsum8(acc[r][t]);
      for (int64_t k = c; k < C; ++k) sum += L::load1(rows[r] + k) * x[t * C + k];
      y[t * ldy + row0 + r] = sum * scale;
    }
  }
}

// Rows [0, rows) of the block for T tokens: blocks of R rows, then single rows.
template <class L, int R, int T>
void dot_rows(float* y, int64_t ldy, const MatrixView& w, const float* x) {
  const auto* data = static_cast<const typename L::Elem*>(w.data);
  int64_t r = 0;
  for (; r + R <= w.rows; r += R) dot_block<L, R, T>(y, ldy, data, w.scales, r, x, w.cols);
  for (; r < w.rows; ++r) dot_block<L, 1, T>(y, ldy, data, w.scales, r, x, w.cols);
}

// Y[N, ldy] (columns = the view's rows) for a few tokens, in blocks of at most 4 tokens.
template <class L>
void stream_tokens(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) dot_rows<L, 2, 4>(y + n * ldy, ldy, w, x + n * w.cols);
  switch (N - n) {
    case 3:
      dot_rows<L, 2, 3>(y + n * ldy, ldy, w, x + n * w.cols);
      break;
    case 2:
      dot_rows<L, 2, 2>(y + n * ldy, ldy, w, x + n * w.cols);
      break;
    case 1:
      dot_rows<L, 4, 1>(y + n * ldy, ldy, w, x + n * w.cols);
      break;
    default:
      break;
  }
}

void stream_any(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  switch (w.dtype) {
    case DType::kF32:
      return stream_tokens<LoadF32>(y, ldy, x, N, w);
    case DType::kBF16:
      return stream_tokens<LoadBF16>(y, ldy, x, N, w);
    case DType::kI8:
      return stream_tokens<LoadI8>(y, ldy, x, N, w);
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

void matmul_rows(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  if (N <= kStreamTokens)
    stream_any(y, ldy, x, N, w);
  else
    gemm_rows(y, ldy, x, N, w);
}

// Rows per parallel chunk: enough work (about 256 KiB of weights streamed once per 8 tokens) to outweigh
// waking a worker of the pool.
int64_t row_grain(const MatrixView& w, int64_t N) {
  const int64_t row_bytes = std::max<int64_t>(1, w.cols * static_cast<int64_t>(dtype_size(w.dtype)));
  const int64_t passes = std::max<int64_t>(1, N / kStreamTokens);
  return std::max<int64_t>(1, (256 * 1024) / (row_bytes * passes));
}

}  // namespace

int64_t MatrixView::nbytes() const {
  int64_t bytes = rows * cols * static_cast<int64_t>(dtype_size(dtype));
  return dtype == DType::kI8 ? bytes + rows * static_cast<int64_t>(sizeof(float)) : bytes;
}

MatrixView MatrixView::row_block(int64_t begin, int64_t end) const {
  MatrixView v = *this;
  v.data = static_cast<const char*>(data) + begin * cols * static_cast<int64_t>(dtype_size(dtype));
  v.scales = scales ? scales + begin : nullptr;
  v.rows = end - begin;
  return v;
}

void check_matrix_view(const MatrixView& w, const char* what) {
  EMO_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kBF16 || w.dtype == DType::kI8, "quant", what,
            ": weights of dtype ", dtype_name(w.dtype), " are not supported (F32, BF16, I8)");
  EMO_CHECK(w.data != nullptr || w.rows * w.cols == 0, "quant", what, ": no weight data");
  EMO_CHECK(w.dtype != DType::kI8 || w.scales != nullptr, "quant", what, ": int8 weights need row scales");
}

void matvec_serial(float* y, const MatrixView& w, const float* x) {
  stream_any(y, w.rows, x, 1, w);
}

void matvec(float* y, const MatrixView& w, const float* x) {
  matmul(y, x, 1, w);
}

void matmul_serial(float* y, const float* x, int64_t N, const MatrixView& w) {
  matmul_rows(y, w.rows, x, N, w);
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
  parallel_for(first.back(), row_grain(ws[0], N), [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < ws.size(); ++i) {
      const int64_t b = std::max(begin, first[i]) - first[i], e = std::min(end, first[i + 1]) - first[i];
      if (b < e) matmul_rows(ys[i] + b, ws[i].rows, x, N, ws[i].row_block(b, e));
    }
  });
}

void dequantize_rows(float* out, const MatrixView& w, int64_t begin, int64_t end) {
  const int64_t C = w.cols, n = (end - begin) * C;
  const char* src = static_cast<const char*>(w.data) + begin * C * static_cast<int64_t>(dtype_size(w.dtype));
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
    for (; c + 8 <= C; c += 8) _mm256_storeu_ps(dst + c, _mm256_mul_ps(LoadI8::load8(row + c), scale));
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
