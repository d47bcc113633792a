// GFLOP/s of emo::gemm on transformer shapes beside OpenBLAS's own multi-threaded sgemm (measured in the same
// run, alternating), and the throughput of the MoE dispatch (forward + backward) with 1 and 2 threads beside
// the same products run as plain GEMMs, and the inference products of stored weights (kernels/quant.h: fp32,
// bf16, int8) on the AVX2 kernel beside the AVX-512 one (where the CPU has it), alternating in the same run.
// Ends with one JSON line.
//
//   bench_kernels [--quick] [--quant]   (--quant: only the inference products)
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/log.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/moe.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

// The fp32 FMA peak of the 2-core AMD EPYC this project measures on (a register-only FMA loop): per core and
// for the whole machine.
constexpr double kPeakGflopsPerCore = 100.0;
constexpr double kPeakGflopsMachine = 200.0;

std::vector<float> random_vec(int64_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Seconds per call of fn: repeats until a sample lasts `min_seconds`, one sample.
double time_once(const std::function<void()>& fn, double min_seconds) {
  int64_t reps = 0;
  Timer timer;
  do {
    fn();
    ++reps;
  } while (timer.seconds() < min_seconds);
  return timer.seconds() / static_cast<double>(reps);
}

// Median seconds per call of each function, sampled alternately so machine noise hits all of them alike.
std::vector<double> time_alternating(const std::vector<std::function<void()>>& fns, int samples,
                                     double min_seconds) {
  for (const auto& fn : fns) fn();  // warm-up: caches, thread start, BLAS buffers
  std::vector<std::vector<double>> times(fns.size());
  for (int s = 0; s < samples; ++s)
    for (size_t i = 0; i < fns.size(); ++i) times[i].push_back(time_once(fns[i], min_seconds));
  std::vector<double> medians;
  for (auto& t : times) medians.push_back(median(t));
  return medians;
}

void openblas_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
              (int)K, 1.0f, A, (int)lda, B, (int)ldb, 0.0f, C, (int)ldc);
}

struct GemmCase {
  std::string layout;  // NT forward, NN input gradient, TN weight gradient
  int64_t tokens, d, M, N, K;
};

std::vector<GemmCase> gemm_cases(bool quick) {
  std::vector<GemmCase> cases;
  std::vector<int64_t> token_counts =
      quick ? std::vector<int64_t>{512} : std::vector<int64_t>{256, 1024, 2048};
  std::vector<int64_t> widths = quick ? std::vector<int64_t>{512} : std::vector<int64_t>{256, 512, 1024};
  for (int64_t t : token_counts)
    for (int64_t d : widths) {
      // A projection d -> d over t tokens: out = x W^T (NT), dx = dout W (NN), dW = dout^T x (TN).
      cases.push_back({"NT", t, d, t, d, d});
      cases.push_back({"NN", t, d, t, d, d});
      cases.push_back({"TN", t, d, d, d, t});
    }
  return cases;
}

nlohmann::json bench_gemm(bool quick, double* emo_median, double* ref_median, double* serial_median) {
  nlohmann::json rows = nlohmann::json::array();
  std::vector<double> emo_all, ref_all, serial_all;
  std::printf("%-4s %6s %6s  %10s %10s %12s  %8s\n", "op", "tokens", "d", "emo 1T", "emo pool", "OpenBLAS 2T",
              "pool/ref");
  for (const GemmCase& c : gemm_cases(quick)) {
    const bool ta = c.layout[0] == 'T', tb = c.layout[1] == 'T';
    const int64_t lda = ta ? c.M : c.K, ldb = tb ? c.K : c.N;
    std::vector<float> A = random_vec(c.M * c.K, 1), B = random_vec(c.K * c.N, 2), C(c.M * c.N);
    auto emo_pool = [&] {
      gemm(ta, tb, c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), c.N);
    };
    auto emo_serial = [&] {
      gemm_serial(ta, tb, c.M, c.N, c.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), c.N);
    };
    // OpenBLAS with its own 2 threads; back to 1 thread right after, as emo runs it.
    auto openblas_mt = [&] {
      openblas_set_num_threads(2);
      openblas_sgemm(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, C.data(), c.N);
      openblas_set_num_threads(1);
    };
    std::vector<double> s = time_alternating({emo_serial, emo_pool, openblas_mt}, quick ? 3 : 5, 0.04);
    const double flops = 2.0 * c.M * c.N * c.K;
    double g_serial = flops / s[0] * 1e-9, g_pool = flops / s[1] * 1e-9, g_ref = flops / s[2] * 1e-9;
    std::printf("%-4s %6ld %6ld  %10.1f %10.1f %12.1f  %8.2f\n", c.layout.c_str(), (long)c.tokens, (long)c.d,
                g_serial, g_pool, g_ref, g_pool / g_ref);
    serial_all.push_back(g_serial), emo_all.push_back(g_pool), ref_all.push_back(g_ref);
    rows.push_back({{"op", c.layout},
                    {"tokens", c.tokens},
                    {"d", c.d},
                    {"emo_1t_gflops", g_serial},
                    {"emo_gflops", g_pool},
                    {"openblas_2t_gflops", g_ref}});
  }
  *emo_median = median(emo_all), *ref_median = median(ref_all), *serial_median = median(serial_all);
  std::printf(
      "median GFLOP/s: emo 1T %.1f, emo pool (%d threads) %.1f, OpenBLAS 2T %.1f, ratio %.2f; "
      "FMA peak %.0f per core, %.0f machine\n",
      *serial_median, num_threads(), *emo_median, *ref_median, *emo_median / *ref_median, kPeakGflopsPerCore,
      kPeakGflopsMachine);
  return rows;
}

// The MoE problem of the benchmark: N tokens routed to K distinct experts each, uniformly at random.
struct MoeBench {
  int64_t N = 2048, K = 4, C = 256, F = 128, E = 64;
  std::vector<int32_t> ids;
  std::vector<float> x, weights, params, dparams, dout, out, dx, dweights;
  std::vector<ExpertWeights> experts;
  std::vector<ExpertGrads> grads;
  MoeCache cache;

  MoeBench() {
    Rng rng(7);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<int32_t> chosen;
      while (static_cast<int64_t>(chosen.size()) < K) {
        int32_t e = static_cast<int32_t>(rng.uniform_int(0, E - 1));
        if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
      }
      ids.insert(ids.end(), chosen.begin(), chosen.end());
    }
    x = random_vec(N * C, 1), weights = random_vec(N * K, 2, 0.25), dout = random_vec(N * C, 3);
    params = random_vec(E * 3 * F * C, 4, 0.05), dparams.assign(params.size(), 0.0f);
    out.resize(N * C), dx.resize(N * C), dweights.resize(N * K);
    for (int64_t e = 0; e < E; ++e) {
      const float* p = params.data() + e * 3 * F * C;
      float* g = dparams.data() + e * 3 * F * C;
      experts.push_back({p, p + F * C, p + 2 * F * C});
      grads.push_back({g, g + F * C, g + 2 * F * C});
    }
  }
  void step() {
    moe_forward(out.data(), cache, x.data(), ids.data(), weights.data(), N, K, C, F, experts);
    moe_backward(dx.data(), dweights.data(), grads, dout.data(), ids.data(), weights.data(), cache, experts);
  }
  // 3 products forward (gate, up, down), 6 backward, each 2*C*F flops per assignment.
  double flops() const { return 18.0 * C * F * N * K; }
};

// The same nine products as one expert holding every assignment (A = N*K rows), through emo::gemm: the
// bound that dispatch would reach with no gather/scatter and perfectly even experts.
struct DenseEquivalent {
  int64_t A, C, F;
  std::vector<float> x, w, h, y, dw;
  DenseEquivalent(int64_t rows, int64_t c, int64_t f) : A(rows), C(c), F(f) {
    x = random_vec(A * C, 5), w = random_vec(F * C, 6), h.resize(A * F), y.resize(A * C), dw.resize(F * C);
  }
  void step() {
    for (int i = 0; i < 2; ++i) gemm(false, true, A, F, C, 1.0f, x.data(), C, w.data(), C, 0.0f, h.data(), F);
    gemm(false, true, A, C, F, 1.0f, h.data(), F, w.data(), F, 0.0f, y.data(), C);   // down [C,F]
    gemm(false, false, A, F, C, 1.0f, y.data(), C, w.data(), F, 0.0f, h.data(), F);  // d hidden
    gemm(true, false, C, F, A, 1.0f, y.data(), C, h.data(), F, 1.0f, dw.data(), F);  // d down
    for (int i = 0; i < 2; ++i)
      gemm(true, false, F, C, A, 1.0f, h.data(), F, x.data(), C, 1.0f, dw.data(), C);
    for (int i = 0; i < 2; ++i)
      gemm(false, false, A, C, F, 1.0f, h.data(), F, w.data(), C, 0.0f, y.data(), C);
  }
};

nlohmann::json bench_moe(bool quick) {
  MoeBench moe;
  DenseEquivalent dense(moe.N * moe.K, moe.C, moe.F);
  nlohmann::json result = {{"experts", moe.E}, {"k", moe.K}, {"d", moe.C}, {"f", moe.F}, {"tokens", moe.N}};
  std::printf(
      "\nMoE dispatch forward+backward: %ld tokens, %ld experts, K=%ld, d=%ld, F=%ld (%.2f GFLOP/step)\n",
      (long)moe.N, (long)moe.E, (long)moe.K, (long)moe.C, (long)moe.F, moe.flops() * 1e-9);
  std::printf("%-8s %12s %10s %14s %10s\n", "threads", "tokens/s", "GFLOP/s", "dense GFLOP/s", "moe/dense");
  const int saved = num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::vector<double> s =
        time_alternating({[&] { moe.step(); }, [&] { dense.step(); }}, quick ? 3 : 5, quick ? 0.1 : 0.3);
    double gflops = moe.flops() / s[0] * 1e-9, dense_gflops = moe.flops() / s[1] * 1e-9;
    double tokens_per_s = moe.N / s[0];
    std::printf("%-8d %12.0f %10.1f %14.1f %10.2f\n", threads, tokens_per_s, gflops, dense_gflops,
                gflops / dense_gflops);
    std::string key = std::to_string(threads) + "t";
    result["tokens_per_s_" + key] = tokens_per_s;
    result["gflops_" + key] = gflops;
    result["dense_gflops_" + key] = dense_gflops;
  }
  set_num_threads(saved);
  result["speedup_2t"] = result["tokens_per_s_2t"].get<double>() / result["tokens_per_s_1t"].get<double>();
  std::printf("2-thread speedup %.2fx\n", result["speedup_2t"].get<double>());
  return result;
}

// One weight matrix in a stored format, as the inference engine reads it.
struct StoredMatrix {
  std::vector<float> f32, scales;
  std::vector<uint16_t> bf16;
  std::vector<int8_t> i8;
  MatrixView view;
  StoredMatrix(DType dtype, int64_t rows, int64_t cols) : f32(random_vec(rows * cols, 5, 0.05)) {
    view = {dtype, f32.data(), nullptr, rows, cols};
    if (dtype == DType::kBF16) {
      bf16.resize(f32.size());
      convert_from_f32(DType::kBF16, f32.data(), bf16.data(), f32.size());
      view.data = bf16.data();
    }
    if (dtype == DType::kI8) {
      i8.resize(f32.size());
      scales.resize(static_cast<size_t>(rows));
      quantize_rows_int8(i8.data(), scales.data(), f32.data(), rows, cols);
      view.data = i8.data(), view.scales = scales.data();
    }
    if (dtype != DType::kF32) f32 = {};
  }
};

// Y[N, rows] = X[N, cols] @ W^T with the AVX2 and the AVX-512 kernels, alternating: a matrix that stays in
// the caches (512 x 512: an expert or attention matrix of bench_infer's 1.6 GB model) and one far beyond
// them (16384 x 2048: decode is bound by memory bandwidth).
nlohmann::json bench_quant(bool quick) {
  nlohmann::json rows = nlohmann::json::array();
  const bool avx512 = quant_kernel_available(QuantKernel::kAvx512, DType::kF32);
  const QuantKernel chosen = quant_kernel();
  std::printf("\ninference products (kernels/quant.h), all threads: AVX2 kernel beside AVX-512%s\n",
              avx512 ? "" : " (not on this CPU: AVX2 only)");
  std::printf("%-5s %-11s %6s %12s %10s %12s %10s %8s\n", "dtype", "matrix", "tokens", "avx2 GFLOP/s",
              "avx2 GB/s", "avx512 GFLOP/s", "avx512 GB/s", "ratio");
  struct Case {
    int64_t rows, cols;
    std::vector<int64_t> tokens;
  };
  const std::vector<Case> cases = {{512, 512, {1, 4, 8, 16, 128, 512}}, {16384, 2048, {1, 4}}};
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI8})
    for (const Case& c : cases) {
      StoredMatrix m(dtype, c.rows, c.cols);
      for (int64_t N : c.tokens) {
        const std::vector<float> x = random_vec(N * c.cols, 6);
        std::vector<float> y(static_cast<size_t>(N * c.rows));
        auto run = [&](QuantKernel kernel) {
          return [&, kernel] {
            set_quant_kernel(kernel);
            matmul(y.data(), x.data(), N, m.view);
          };
        };
        std::vector<std::function<void()>> fns = {run(QuantKernel::kAvx2)};
        if (avx512) fns.push_back(run(QuantKernel::kAvx512));
        const std::vector<double> s = time_alternating(fns, quick ? 3 : 7, quick ? 0.05 : 0.1);
        const double flops = 2.0 * static_cast<double>(N * c.rows * c.cols);
        const double bytes = static_cast<double>(m.view.nbytes());
        const std::string shape = std::to_string(c.rows) + "x" + std::to_string(c.cols);
        nlohmann::json row = {{"dtype", dtype_name(dtype)},
                              {"rows", c.rows},
                              {"cols", c.cols},
                              {"tokens", N},
                              {"avx2_gflops", flops / s[0] * 1e-9},
                              {"avx2_gbs", bytes / s[0] * 1e-9}};
        std::printf("%-5s %-11s %6ld %12.1f %10.1f", dtype_name(dtype).c_str(), shape.c_str(), (long)N,
                    flops / s[0] * 1e-9, bytes / s[0] * 1e-9);
        if (avx512) {
          row["avx512_gflops"] = flops / s[1] * 1e-9;
          row["avx512_gbs"] = bytes / s[1] * 1e-9;
          row["ratio_avx512_over_avx2"] = s[0] / s[1];
          std::printf(" %12.1f %10.1f %8.2f", flops / s[1] * 1e-9, bytes / s[1] * 1e-9, s[0] / s[1]);
        }
        std::printf("\n");
        rows.push_back(row);
      }
    }
  set_quant_kernel(chosen);
  return rows;
}

}  // namespace
}  // namespace emo

int main(int argc, char** argv) {
  using namespace emo;
  bool quick = false, quant_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--quant") == 0) quant_only = true;
  }
  blas_init();
  std::printf("emo kernels benchmark: pool of %d threads, OpenBLAS single-threaded inside it\n\n",
              num_threads());
  if (quant_only) {
    nlohmann::json summary = {
        {"bench", "kernels"}, {"threads", num_threads()}, {"quant", bench_quant(quick)}};
    std::printf("%s\n", summary.dump().c_str());
    return 0;
  }
  double emo_median = 0, ref_median = 0, serial_median = 0;
  nlohmann::json gemm_rows = bench_gemm(quick, &emo_median, &ref_median, &serial_median);
  nlohmann::json moe = bench_moe(quick);
  nlohmann::json quant = bench_quant(quick);
  nlohmann::json summary = {{"bench", "kernels"},
                            {"threads", num_threads()},
                            {"peak_gflops_per_core", kPeakGflopsPerCore},
                            {"peak_gflops_machine", kPeakGflopsMachine},
                            {"gemm_median_gflops_emo_1t", serial_median},
                            {"gemm_median_gflops_emo", emo_median},
                            {"gemm_median_gflops_openblas_2t", ref_median},
                            {"gemm_ratio_emo_over_openblas", emo_median / ref_median},
                            {"gemm", gemm_rows},
                            {"moe", moe},
                            {"quant", quant}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}
