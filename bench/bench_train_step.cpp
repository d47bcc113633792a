// Tokens per second of one full training step (forward, backward, AdamW) of the engine on the reference
// configuration (d 256, 4 layers, 4 heads, 64 experts = 63 routed + 1 shared of width 128, top 4,
// vocab 8192, rows of 512 tokens, batch 8 = one micro-batch of 4096 tokens, EMO pool routing with
// intra-document attention, 2 threads), beside the same step of a PyTorch twin (bench/train_step_torch.py:
// float32, 2 threads, tokens sorted by expert and one matmul per expert, vectorised EMO pools, torch AdamW)
// measured in the same run, alternating, on the same weights, batch and pool sizes (the first step's losses
// of the two are printed side by side as a check that both run the same step).
// Also: the model's matmul FLOP/s (forward + backward = 3x forward) and its fraction of OpenBLAS's sgemm rate
// on the step's own shapes with 2 threads, measured in the same rounds; and a per-kernel breakdown of the
// engine's step (core/profile.h, over the timed steps themselves). Ends with one JSON line.
//
//   bench_train_step [--rounds N] [--threads N] [--no-torch] [--python PATH]     (default 7 rounds, 2
//   threads)
// Run under `flock /tmp/emo-bench.lock` on a shared machine.
#include <cblas.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "model/forward_state.h"
#include "model/model.h"
#include "train/adamw.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kRows = 8, kRowLength = 512;
constexpr int32_t kEos = 8191;
constexpr double kLearningRate = 1e-4;  // small: repeated steps on one batch keep the routing near its start

ModelConfig reference_config() {
  ModelConfig c;
  c.model_type = "emo";
  c.vocab_size = 8192;
  c.hidden_size = 256;
  c.intermediate_size = 128;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.num_experts = 64;
  c.num_shared_experts = 1;
  c.num_experts_per_tok = 4;  // 3 routed + the shared one
  c.max_position_embeddings = 4096;
  c.eos_token_id = kEos;
  return c;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Packed rows of synthetic documents (lengths 32..479 tokens, EOS-delimited), targets = the next token.
Batch synthetic_batch(uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> tokens(kRows * kRowLength), targets(kRows * kRowLength, -1);
  for (int64_t b = 0; b < kRows; ++b) {
    int64_t next_eos = rng.uniform_int(32, 479);
    for (int64_t t = 0; t < kRowLength; ++t) {
      int32_t token = static_cast<int32_t>(rng.uniform_int(0, kEos - 1));
      if (t == next_eos) token = kEos, next_eos += rng.uniform_int(32, 479);
      tokens[b * kRowLength + t] = token;
    }
    for (int64_t t = 0; t + 1 < kRowLength; ++t) targets[b * kRowLength + t] = tokens[b * kRowLength + t + 1];
  }
  return Batch::from_tokens(kRows, kRowLength, std::move(tokens), std::move(targets), kEos);
}

// EMO training routing with pool sizes drawn once, uniformly from [K, E] per (layer, row, segment), given
// explicitly so that the twin routes with the same sizes.
RoutingOptions emo_routing(const ModelConfig& config, const Batch& batch, uint64_t seed) {
  RoutingOptions r;
  r.mode = RoutingMode::kEmoPool;
  r.training = true;
  r.intra_document_attention = true;
  Rng rng(seed);
  r.pool_sizes.resize(config.num_hidden_layers);
  for (auto& layer : r.pool_sizes)
    for (int64_t b = 0; b < batch.B; ++b) {
      const int32_t segments = batch.doc_ids[b * batch.T + batch.T - 1] + 1;
      std::vector<int32_t> sizes;
      for (int32_t s = 0; s < segments; ++s)
        sizes.push_back(
            static_cast<int32_t>(rng.uniform_int(config.num_experts_per_tok, config.num_experts)));
      layer.push_back(sizes);
    }
  return r;
}

// The batch and pool sizes in the twin's input format (tests/reference/emo_torch.py, "IN").
void write_inputs(const std::string& path, const Batch& batch, const RoutingOptions& routing) {
  size_t max_segments = 0;
  for (const auto& row : routing.pool_sizes[0]) max_segments = std::max(max_segments, row.size());
  const int64_t L = static_cast<int64_t>(routing.pool_sizes.size()), S = static_cast<int64_t>(max_segments);
  std::vector<int32_t> pools(L * batch.B * S, -1);  // [L, B, S]
  for (int64_t l = 0; l < L; ++l)
    for (int64_t b = 0; b < batch.B; ++b)
      for (size_t s = 0; s < routing.pool_sizes[l][b].size(); ++s)
        pools[(l * batch.B + b) * S + static_cast<int64_t>(s)] = routing.pool_sizes[l][b][s];
  write_safetensors(path,
                    {SafetensorsEntry::raw("tokens", DType::kI32, {batch.B, batch.T}, batch.tokens.data()),
                     SafetensorsEntry::raw("targets", DType::kI32, {batch.B, batch.T}, batch.targets.data()),
                     SafetensorsEntry::raw("pool_sizes", DType::kI32, {L, batch.B, S}, pools.data())},
                    {{"eos_id", std::to_string(kEos)}, {"lr", std::to_string(kLearningRate)}});
}

// Matmul FLOPs of one forward (2 per multiply-add): projections, attention products over the (query, key)
// pairs the model defines (causal and inside one document, intra-document attention), router, experts
// (routed slots + shared), LM head. A training step is 3x this (backward = 2x forward).
double forward_matmul_flops(const ModelConfig& c, const Batch& batch) {
  const double N = static_cast<double>(batch.B * batch.T), C = static_cast<double>(c.hidden_size);
  const double hd = static_cast<double>(c.head_dim()), H = static_cast<double>(c.num_attention_heads);
  const double Hkv = static_cast<double>(c.num_key_value_heads), F = static_cast<double>(c.intermediate_size);
  double causal_pairs = 0;  // per query: the keys of its document up to itself
  for (int64_t i = 0, start = 0; i < batch.B * batch.T; ++i) {
    if (i % batch.T == 0 || batch.doc_ids[i] != batch.doc_ids[i - 1]) start = i;
    causal_pairs += static_cast<double>(i - start + 1);
  }
  double layer = 2 * N * C * hd * (2 * H + 2 * Hkv);                               // q, o and k, v
  layer += 2 * 2 * causal_pairs * H * hd;                                          // Q K^T and P V
  layer += 2 * N * C * static_cast<double>(c.num_experts - c.num_shared_experts);  // router
  layer += 3 * 2 * N * static_cast<double>(c.num_experts_per_tok) * C * F;         // gate, up, down
  return static_cast<double>(c.num_hidden_layers) * layer + 2 * N * C * static_cast<double>(c.vocab_size);
}

// One training step of the engine: gradients zeroed, forward, loss, backward, AdamW.
struct EngineStep {
  Model model;
  Batch batch;
  RoutingOptions routing;
  LossWeights weights;
  AdamW adamw;
  std::vector<Param> params;
  ForwardState state;

  EngineStep(const ModelConfig& config, Batch b, RoutingOptions r)
      : model(config), batch(std::move(b)), routing(std::move(r)), adamw(optimizer()) {
    model.init_weights(1);
    params = model.params();
  }
  static OptimizerConfig optimizer() {
    OptimizerConfig o;
    o.lr = kLearningRate;
    return o;  // betas 0.9, 0.95, eps 1e-8, weight decay 0.1 (none on embeddings and norms)
  }
  double run() {  // returns the loss before the update
    {
      EMO_PROFILE_SCOPE("zero gradients");
      model.zero_grads();
    }
    model.forward_into(state, batch, routing);
    const double loss = model.loss(state, weights).total;
    model.backward(state, weights);
    EMO_PROFILE_SCOPE("optimizer (AdamW)");
    adamw.step(params, kLearningRate);
    return loss;
  }
};

// The PyTorch twin as a child process: "step" on its stdin runs one step, it answers "<seconds> <loss>".
class TorchTwin {
 public:
  TorchTwin(const std::string& python, const std::string& script, const std::string& model_dir,
            const std::string& inputs, int threads) {
    int to_child[2], from_child[2];
    EMO_CHECK(::pipe(to_child) == 0 && ::pipe(from_child) == 0, "bench", "pipe failed");
    pid_ = ::fork();
    EMO_CHECK(pid_ >= 0, "bench", "fork failed");
    if (pid_ == 0) {
      ::dup2(to_child[0], 0);
      ::dup2(from_child[1], 1);
      for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) ::close(fd);
      const std::string t = std::to_string(threads);
      ::execl(python.c_str(), python.c_str(), script.c_str(), "--model", model_dir.c_str(), "--inputs",
              inputs.c_str(), "--threads", t.c_str(), static_cast<char*>(nullptr));
      std::perror("exec");
      std::_Exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    in_ = ::fdopen(to_child[1], "w");
    out_ = ::fdopen(from_child[0], "r");
    ready_ = read_line();
    EMO_CHECK(ready_.rfind("ready", 0) == 0, "bench", "twin ", script, " did not start: '", ready_, "'");
  }
  ~TorchTwin() {
    std::fputs("quit\n", in_);
    std::fclose(in_);
    std::fclose(out_);
    ::waitpid(pid_, nullptr, 0);
  }
  const std::string& banner() const { return ready_; }
  // Seconds of one step as the twin timed it, and its loss before the update.
  std::pair<double, double> step() {
    std::fputs("step\n", in_);
    std::fflush(in_);
    const std::string line = read_line();
    double seconds = 0, loss = 0;
    EMO_CHECK(std::sscanf(line.c_str(), "%lf %lf", &seconds, &loss) == 2, "bench", "twin answered '", line,
              "'");
    return {seconds, loss};
  }

 private:
  std::string read_line() {
    char buffer[4096];
    if (!std::fgets(buffer, sizeof buffer, out_)) return "";
    std::string s(buffer);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  }
  pid_t pid_ = -1;
  FILE* in_ = nullptr;
  FILE* out_ = nullptr;
  std::string ready_;
};

// OpenBLAS sgemm with 2 (the run's) threads on the step's own shapes: the forward (NT), input-gradient (NN)
// and weight-gradient (TN) products of a d x d projection over the micro-batch, the LM head, and one
// expert's products at its mean load. Returns GFLOP/s over the whole set (total flops / total time).
struct SgemmSet {
  struct Shape {
    bool ta, tb;
    int64_t M, N, K;
  };
  std::vector<Shape> shapes;
  std::vector<float> a, b, c;
  int threads;

  SgemmSet(const ModelConfig& cfg, int64_t tokens, int run_threads) : threads(run_threads) {
    const int64_t C = cfg.hidden_size, V = cfg.vocab_size, F = cfg.intermediate_size;
    const int64_t expert_rows = tokens * cfg.num_experts_per_tok / cfg.num_experts;  // mean load
    for (auto [M, N, K] : {std::array<int64_t, 3>{tokens, C, C}, {tokens, V, C}, {expert_rows, F, C}}) {
      shapes.push_back({false, true, M, N, K});   // y = x W^T
      shapes.push_back({false, false, M, K, N});  // dx = dy W
      shapes.push_back({true, false, N, K, M});   // dW = dy^T x
    }
    int64_t most = 0;
    for (const Shape& s : shapes) most = std::max({most, s.M * s.K, s.K * s.N, s.M * s.N});
    Rng rng(3);
    a.resize(most), b.resize(most), c.resize(most);
    for (auto* v : {&a, &b})
      for (float& x : *v) x = static_cast<float>(rng.normal());
  }
  double flops() const {
    double f = 0;
    for (const Shape& s : shapes) f += 2.0 * s.M * s.N * s.K;
    return f;
  }
  void run() {
    openblas_set_num_threads(threads);
    for (const Shape& s : shapes)
      cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans,
                  static_cast<int>(s.M), static_cast<int>(s.N), static_cast<int>(s.K), 1.0f, a.data(),
                  static_cast<int>(s.ta ? s.M : s.K), b.data(), static_cast<int>(s.tb ? s.K : s.N), 0.0f,
                  c.data(), static_cast<int>(s.N));
    openblas_set_num_threads(1);  // the engine runs BLAS single-threaded inside its pool
  }
  // Seconds of one pass over the set (the best of `repeats`: a rate, not a latency).
  double seconds(int repeats) {
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      Timer t;
      run();
      best = std::min(best, t.seconds());
    }
    return best;
  }
};

// Per-label seconds per step of the profiled (timed) engine steps, whose mean is `step_seconds`.
nlohmann::json breakdown(int steps, double step_seconds) {
  double accounted = 0;
  nlohmann::json rows = nlohmann::json::array();
  std::printf("\nwhere the engine's step goes (the %d timed steps, mean %.3f s per step):\n", steps,
              step_seconds);
  for (const auto& [label, total] : profile::totals()) {
    const double per_step = total / steps;
    accounted += per_step;
    rows.push_back({{"kernel", label}, {"seconds", per_step}, {"share", per_step / step_seconds}});
  }
  rows.push_back({{"kernel", "other (unlabelled: slot tables, buffer zeroing, bookkeeping)"},
                  {"seconds", step_seconds - accounted},
                  {"share", (step_seconds - accounted) / step_seconds}});
  std::sort(rows.begin(), rows.end(), [](const nlohmann::json& x, const nlohmann::json& y) {
    return x["seconds"].get<double>() > y["seconds"].get<double>();
  });
  for (const auto& r : rows)
    std::printf("  %-44s %7.1f ms  %5.1f%%\n", r["kernel"].get<std::string>().c_str(),
                1e3 * r["seconds"].get<double>(), 100 * r["share"].get<double>());
  return rows;
}

}  // namespace
}  // namespace emo

int main(int argc, char** argv) {
  using namespace emo;
  int rounds = 7, threads = 2;
  bool torch = true;
  std::string python = "/usr/bin/python3";
  std::string script = (fs::path(__FILE__).parent_path() / "train_step_torch.py").string();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc)
      rounds = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (a == "--python" && i + 1 < argc)
      python = argv[++i];
    else if (a == "--script" && i + 1 < argc)
      script = argv[++i];
    else if (a == "--no-torch")
      torch = false;
    else {
      std::fprintf(stderr, "usage: bench_train_step [--rounds N] [--threads N] [--no-torch] [--python P]\n");
      return 2;
    }
  }
  set_log_level(LogLevel::kWarn);
  set_num_threads(threads);
  blas_init();

  const ModelConfig config = reference_config();
  Batch batch = synthetic_batch(42);
  RoutingOptions routing = emo_routing(config, batch, 7);
  EngineStep engine(config, batch, routing);
  const int64_t tokens = batch.B * batch.T;
  const double step_flops = 3 * forward_matmul_flops(config, batch);
  std::printf(
      "train step: d 256, 4 layers, 4 heads, 64 experts (63 routed + 1 shared) x 128, top 4, vocab 8192, "
      "%lld rows x %lld tokens, EMO pools + intra-document attention, %d threads; %.1f GFLOP of matmuls per "
      "step; %d rounds alternating engine / torch / sgemm\n",
      static_cast<long long>(batch.B), static_cast<long long>(batch.T), threads, step_flops * 1e-9, rounds);

  const fs::path scratch = fs::temp_directory_path() / ("emo_bench_train_step_" + std::to_string(::getpid()));
  std::unique_ptr<TorchTwin> twin;
  if (torch) {
    fs::create_directories(scratch);
    engine.model.save((scratch / "model").string());
    write_inputs((scratch / "inputs.safetensors").string(), batch, routing);
    twin = std::make_unique<TorchTwin>(python, script, (scratch / "model").string(),
                                       (scratch / "inputs.safetensors").string(), threads);
    std::printf("twin: %s\n", twin->banner().c_str());
  }
  SgemmSet sgemm(config, tokens, threads);

  // Warm-up (allocation, first-touch pages, BLAS buffers); the first step's losses agree if both run the
  // same step on the same weights.
  const double engine_first_loss = engine.run();
  const double torch_first_loss = twin ? twin->step().second : 0.0;
  sgemm.run();
  std::vector<double> engine_s, torch_s, sgemm_gflops, ratios;
  // The timed engine steps are profiled (a scope costs well under a microsecond, a step holds ~300).
  profile::reset();
  profile::set_enabled(true);
  for (int r = 0; r < rounds; ++r) {
    Timer t;
    engine.run();
    engine_s.push_back(t.seconds());
    if (twin) torch_s.push_back(twin->step().first);
    if (twin) ratios.push_back(torch_s.back() / engine_s.back());
    profile::set_enabled(false);
    sgemm_gflops.push_back(sgemm.flops() / sgemm.seconds(3) * 1e-9);
    profile::set_enabled(true);
    std::printf("  round %d: engine %.3f s, torch %.3f s (%.2fx), sgemm %.1f GFLOP/s\n", r + 1,
                engine_s.back(), twin ? torch_s.back() : 0.0, twin ? ratios.back() : 0.0,
                sgemm_gflops.back());
  }
  profile::set_enabled(false);
  double mean_step_s = 0;
  for (double s : engine_s) mean_step_s += s / static_cast<double>(engine_s.size());
  nlohmann::json kernels = breakdown(rounds, mean_step_s);
  twin.reset();
  fs::remove_all(scratch);

  const double engine_tok_s = tokens / median(engine_s);
  const double torch_tok_s = torch_s.empty() ? 0.0 : tokens / median(torch_s);
  const double model_gflops = step_flops / median(engine_s) * 1e-9;
  const double sgemm_rate = median(sgemm_gflops);
  std::printf("\nfirst-step loss: engine %.6f, torch %.6f (same weights, batch and pools)\n",
              engine_first_loss, torch_first_loss);
  std::printf(
      "engine %8.0f tok/s | torch %8.0f tok/s | ratio %.2fx of medians, %.2fx median of the rounds' ratios "
      "(target >= 1.5x)\n",
      engine_tok_s, torch_tok_s, torch_tok_s > 0 ? engine_tok_s / torch_tok_s : 0.0,
      ratios.empty() ? 0.0 : median(ratios));
  std::printf(
      "engine model FLOP/s %.1f GFLOP/s = %.0f%% of OpenBLAS sgemm (%d threads, step shapes) %.1f "
      "GFLOP/s; torch %.1f GFLOP/s\n",
      model_gflops, 100 * model_gflops / sgemm_rate, threads, sgemm_rate,
      torch_tok_s > 0 ? step_flops / median(torch_s) * 1e-9 : 0.0);
  nlohmann::json line = {{"bench", "train_step"},
                         {"threads", threads},
                         {"rounds", rounds},
                         {"tokens_per_step", tokens},
                         {"step_gflop", step_flops * 1e-9},
                         {"engine_tok_s", engine_tok_s},
                         {"torch_tok_s", torch_tok_s},
                         {"ratio", torch_tok_s > 0 ? engine_tok_s / torch_tok_s : 0.0},
                         {"ratio_median_of_rounds", ratios.empty() ? 0.0 : median(ratios)},
                         {"engine_step_s", median(engine_s)},
                         {"torch_step_s", torch_s.empty() ? 0.0 : median(torch_s)},
                         {"engine_gflops", model_gflops},
                         {"sgemm_gflops", sgemm_rate},
                         {"fraction_of_sgemm", model_gflops / sgemm_rate},
                         {"first_loss_engine", engine_first_loss},
                         {"first_loss_torch", torch_first_loss},
                         {"breakdown", kernels}};
  std::printf("%s\n", line.dump().c_str());
  return 0;
}
