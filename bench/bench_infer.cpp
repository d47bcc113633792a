// Inference speed and memory, each figure beside its physical bound measured in the same run:
//   - decode: batch-1 tokens/s against memory bandwidth (parallel reads of a 256 MiB buffer around the
//     decode) / bytes one token reads (every non-expert matrix, the embedding row, the experts it uses);
//   - prompt: tokens/s of a 128-token prompt against the rate of OpenBLAS sgemm replaying the same matrix
//     products (same shapes: q k v o, router, each expert's share of tokens, the last token's lm_head);
//   - resident memory of a 12.5% run (experts chosen from the prompt, layerwise, in a fresh process, with the
//     checkpoint evicted from the page cache first: the model-larger-than-memory case) beside the bytes of
//     the kept weights plus the KV cache.
// Models: the reference model of bench_train (d 128, 4 layers, 4 heads, 64 experts of width 128, top 4 with
// the shared expert, vocab 4096) and a model of about 1.6 GB of fp32 weights (d 512, 8 layers, 8 heads, 64
// experts of width 512, top 8, vocab 4096), randomly initialised, written once to a temp dir; each in fp32,
// bf16, int8 and q4 (Q4_0 blocks; embeddings and lm_head int8), with all experts and with 12.5% (8 of 64).
//   bench_infer [--quick] [--dir DIR] [--steps N]
//   bench_infer --released DIR [--dtype bf16|q4] [--keep-k 8,16,32] [--steps N]
// With --load-check: what the load-time check for NaN / infinity costs instead. The 1.6 GB model (fp32, bf16,
// int8) opened for inference with every expert loaded, checked (the default) and not (emo --allow-nonfinite),
// from the page cache; the same-run reference is one plain read of the same bytes (an OR over the mapped
// tensors), which the check should match, since it reads each byte once.
// With --kernels: only prompt and decode tokens/s of each model and dtype (all experts) on the AVX2 kernels
// beside the AVX-512 ones (kernels/quant.h), alternating round by round in the same process, and the ratios.
// With --perplexity DATA DIR...: the held-out perplexity of each checkpoint through the inference engine
// (documents of the tokenised split in rows of at most 512 tokens, each row one prompt with every position's
// logits) on the AVX2 kernels and on the AVX-512 ones: what a kernel's arithmetic (bf16 prompts rounding x
// to bf16 on AVX-512) changes in a trained model's quality. `emo eval` runs the training engine instead.
// With --released DIR: the released Emo_1b14b_1T's shapes instead (13.57B parameters in bf16, random values,
// 27 GB written once into DIR, about a minute; --dtype q4: in emo's q4 format, 7.6 GB), run at keep-16 (or
// each k of --keep-k 8,16,32, each in a fresh process) from a cold page cache: peak resident memory beside
// the kept weights + KV cache (the target: "the 27 GB model in about 5 GB") and decode beside its bound. Ends
// with one JSON line. Targets: decode >= 60% of the bound; peak RSS within 15% of kept weights + KV.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "data/dataset.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "infer/quantize.h"
#include "infer/resident.h"
#include "infer/weights.h"
#include "io/safetensors.h"
#include "kernels/gemm.h"
#include "kernels/q4.h"
#include "kernels/quant.h"
#include "model/model.h"
#include "model/weights_check.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using emo::Timer;
using emo::bench::median;
using emo::bench::read_bandwidths;

constexpr int64_t kPromptTokens = 128;

emo::ModelConfig reference_config() {
  emo::ModelConfig c;
  c.vocab_size = 4096;
  c.hidden_size = 128;
  c.intermediate_size = 128;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.num_experts = 64;
  c.num_experts_per_tok = 4;
  c.max_position_embeddings = 4096;
  c.eos_token_id = 4094;
  return c;
}

emo::ModelConfig big_config() {
  emo::ModelConfig c = reference_config();
  c.hidden_size = 512;
  c.intermediate_size = 512;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 8;
  c.num_experts_per_tok = 8;
  return c;
}

constexpr const char* kDtypes[] = {"f32", "bf16", "int8", "q4"};

// Writes the model once (fp32, bf16, int8, q4) into dir/<name>/{f32,bf16,int8,q4}.
void ensure_models(const std::string& dir, const std::string& name, const emo::ModelConfig& config) {
  const fs::path base = fs::path(dir) / name;
  if (fs::exists(base / "q4/config.json")) return;
  Timer t;
  {
    emo::Model model(config);
    model.init_weights(7);
    model.save((base / "f32").string());
  }
  // --force: a run stopped half-way left outputs of its own to replace.
  emo::quantize_checkpoint((base / "f32").string(), (base / "bf16").string(), emo::DType::kBF16,
                           {"quantize", {}, true});
  emo::quantize_checkpoint((base / "f32").string(), (base / "int8").string(), emo::DType::kI8,
                           {"quantize", {}, true});
  emo::quantize_checkpoint((base / "f32").string(), (base / "q4").string(), emo::DType::kQ4_0,
                           {"quantize", {}, true});
  emo::log_info(emo::cat("wrote ", base.string(), " in ", emo::human_duration(t.seconds())));
}

std::vector<int32_t> prompt_tokens(int64_t n, int64_t vocab) {
  emo::Rng rng(11);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.uniform_int(0, vocab - 3));
  return t;
}

// Seconds for OpenBLAS sgemm to run the prompt's matrix products at the same shapes (fp32, single-threaded
// inside the pool as the engine's, experts spread over the threads).
double sgemm_replay_seconds(const emo::ModelConfig& c, int64_t N, int64_t experts_used) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, L = c.num_hidden_layers;
  const int64_t per_expert = std::max<int64_t>(1, N * c.num_experts_per_tok / experts_used);
  std::vector<float> x(N * std::max(C, F), 0.5f), w(std::max(C * C, C * V), 0.01f), y(N * std::max(C, F) * 4);
  std::vector<float> ex(static_cast<size_t>(experts_used) * 3 * C * F, 0.01f);
  std::vector<float> out(static_cast<size_t>(experts_used) * per_expert * (2 * F + C));
  Timer t;
  for (int64_t l = 0; l < L; ++l) {
    for (int m = 0; m < 4; ++m)
      emo::gemm(false, true, N, C, C, 1.0f, x.data(), C, w.data(), C, 0.0f, y.data(), C);
    emo::gemm(false, true, N, c.num_experts, C, 1.0f, x.data(), C, w.data(), C, 0.0f, y.data(),
              c.num_experts);
    emo::parallel_tasks(experts_used, [&](int64_t e) {
      const float* we = ex.data() + e * 3 * C * F;
      float* o = out.data() + e * per_expert * (2 * F + C);
      emo::gemm_serial(false, true, per_expert, F, C, 1.0f, x.data(), C, we, C, 0.0f, o, F);
      emo::gemm_serial(false, true, per_expert, F, C, 1.0f, x.data(), C, we + C * F, C, 0.0f,
                       o + per_expert * F, F);
      emo::gemm_serial(false, true, per_expert, C, F, 1.0f, o, F, we + 2 * C * F, F, 0.0f,
                       o + 2 * per_expert * F, C);
    });
  }
  emo::gemm(false, true, 1, V, C, 1.0f, x.data(), C, w.data(), C, 0.0f, y.data(), V);
  return t.seconds();
}

struct RunFigures {
  double prompt_tps = 0, prompt_bound = 0, prompt_ratio = 0, decode_tps = 0, decode_bound = 0,
         decode_ratio = 0;
  int64_t bytes_per_token = 0;
};

// Prompt and decode speed of one checkpoint, full or with keep_k experts per layer (chosen from the prompt).
// Prompt and decode speed of one checkpoint, full or with keep_k experts per layer (chosen from the prompt).
// The machine is shared: each figure is measured `rounds` times right after its bound (sgemm replay,
// bandwidth), and the medians of the figures and of the ratios are reported.
RunFigures measure(const std::string& dir, int64_t keep_k, int64_t steps, const std::vector<float>& buffer,
                   int rounds) {
  auto weights = emo::InferWeights::open(dir);
  const emo::ModelConfig& c = weights->config();
  const auto prompt = prompt_tokens(kPromptTokens, c.vocab_size);
  if (keep_k > 0) emo::select_layerwise(*weights, {prompt}, keep_k, "prompt");
  const int64_t used = keep_k > 0 ? keep_k : c.num_experts;
  const int64_t active = std::min<int64_t>(c.num_experts_per_tok, used);
  RunFigures f;
  std::vector<double> prompt_rates, prompt_bounds, prompt_ratios, decode_rates, decode_bounds, decode_ratios;
  for (int round = 0; round < rounds; ++round) {
    const double bound = kPromptTokens / sgemm_replay_seconds(c, kPromptTokens, used);
    emo::Decoder p(*weights, kPromptTokens);
    Timer t;
    p.forward(prompt);
    prompt_rates.push_back(kPromptTokens / t.seconds());
    prompt_bounds.push_back(bound);
    prompt_ratios.push_back(prompt_rates.back() / bound);

    emo::Decoder d(*weights, kPromptTokens + steps + 1);
    emo::GenerateOptions options;
    options.max_new_tokens = steps + 1;
    // The host's bandwidth drifts (27-59 GB/s between runs here, sometimes within one): the bound is the
    // median of 6 reads taken around the decode it judges, 3 right before and 3 right after.
    std::vector<double> reads = read_bandwidths(buffer, 3);
    emo::GenerateResult r = emo::generate(d, prompt, options);
    for (double rate : read_bandwidths(buffer, 3)) reads.push_back(rate);
    const double bandwidth = median(reads);
    // KV cache read per token at the mean position of the decode.
    f.bytes_per_token = weights->bytes_per_token(active) + d.cache().bytes_used(kPromptTokens + steps / 2);
    decode_rates.push_back(r.decode_tokens_per_second());
    decode_bounds.push_back(bandwidth * 1e9 / static_cast<double>(f.bytes_per_token));
    decode_ratios.push_back(decode_rates.back() / decode_bounds.back());
  }
  f.prompt_tps = median(prompt_rates), f.prompt_bound = median(prompt_bounds),
  f.prompt_ratio = median(prompt_ratios);
  f.decode_tps = median(decode_rates), f.decode_bound = median(decode_bounds),
  f.decode_ratio = median(decode_ratios);
  return f;
}

// Prompt and decode tokens/s of one checkpoint (all experts) on the AVX2 and the AVX-512 kernels, the two
// alternating round by round so that the machine's drift hits both alike; medians.
nlohmann::json compare_kernels(const std::string& dir, int64_t steps, int rounds) {
  auto weights = emo::InferWeights::open(dir);
  const auto prompt = prompt_tokens(kPromptTokens, weights->config().vocab_size);
  const emo::QuantKernel kernels[2] = {emo::QuantKernel::kAvx2, emo::QuantKernel::kAvx512};
  std::vector<double> prompt_rates[2], decode_rates[2];
  for (int round = 0; round < rounds; ++round)
    for (int k = 0; k < 2; ++k) {
      emo::set_quant_kernel(kernels[k]);
      emo::Decoder p(*weights, kPromptTokens);
      Timer t;
      p.forward(prompt);
      prompt_rates[k].push_back(kPromptTokens / t.seconds());
      emo::Decoder d(*weights, kPromptTokens + steps + 1);
      emo::GenerateOptions options;
      options.max_new_tokens = steps + 1;
      decode_rates[k].push_back(emo::generate(d, prompt, options).decode_tokens_per_second());
    }
  return {{"prompt_avx2", median(prompt_rates[0])},
          {"prompt_avx512", median(prompt_rates[1])},
          {"prompt_ratio", median(prompt_rates[1]) / median(prompt_rates[0])},
          {"decode_avx2", median(decode_rates[0])},
          {"decode_avx512", median(decode_rates[1])},
          {"decode_ratio", median(decode_rates[1]) / median(decode_rates[0])}};
}

// The closing JSON line of a run: the bench's name, threads, prompt length, decode steps and the runs.
// The closing JSON line; `extra` adds fields of the run (e.g. the dtype).
int print_summary(const char* bench, int64_t steps, const nlohmann::json& runs,
                  const nlohmann::json& extra = nlohmann::json::object()) {
  nlohmann::json summary = {{"bench", bench},
                            {"threads", emo::num_threads()},
                            {"prompt_tokens", kPromptTokens},
                            {"decode_steps", steps},
                            {"runs", runs}};
  summary.update(extra);
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

int kernels_run(const std::string& dir, bool quick, int64_t steps) {
  if (!emo::quant_kernel_available(emo::QuantKernel::kAvx512, emo::DType::kF32)) {
    std::printf("this CPU has no AVX-512F: nothing to compare\n");
    return 0;
  }
  const int rounds = quick ? 3 : 5;
  std::printf(
      "prompt (%lld tokens) and decode (%lld steps) tokens/s, all experts, AVX2 kernels beside AVX-512,\n"
      "alternating, medians of %d rounds\n",
      static_cast<long long>(kPromptTokens), static_cast<long long>(steps), rounds);
  std::printf("%-9s %-5s %11s %11s %6s %11s %11s %6s\n", "model", "dtype", "prompt avx2", "avx512", "ratio",
              "decode avx2", "avx512", "ratio");
  std::vector<std::pair<std::string, emo::ModelConfig>> models = {{"reference", reference_config()}};
  if (!quick) models.emplace_back("big", big_config());
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& [name, config] : models) {
    ensure_models(dir, name, config);
    for (const char* dtype : {"f32", "bf16", "int8"}) {
      nlohmann::json r = compare_kernels((fs::path(dir) / name / dtype).string(), steps, rounds);
      std::printf("%-9s %-5s %11.0f %11.0f %6.2f %11.1f %11.1f %6.2f\n", name.c_str(), dtype,
                  r["prompt_avx2"].get<double>(), r["prompt_avx512"].get<double>(),
                  r["prompt_ratio"].get<double>(), r["decode_avx2"].get<double>(),
                  r["decode_avx512"].get<double>(), r["decode_ratio"].get<double>());
      r["model"] = name;
      r["dtype"] = dtype;
      runs.push_back(r);
    }
  }
  return print_summary("infer_kernels", steps, runs);
}

// Runs this program as `--resident DIR K` in a fresh process and returns its JSON line.
nlohmann::json resident_in_child(const char* self, const std::string& dir, int64_t keep_k, int64_t steps) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  posix_spawn_file_actions_addclose(&actions, pipefd[0]);
  const std::string k = std::to_string(keep_k), s = std::to_string(steps);
  std::vector<char*> argv = {const_cast<char*>(self),        const_cast<char*>("--resident"),
                             const_cast<char*>(dir.c_str()), const_cast<char*>(k.c_str()),
                             const_cast<char*>(s.c_str()),   nullptr};
  pid_t pid;
  const int rc = posix_spawn(&pid, self, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipefd[1]);
  std::string output;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) output.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  if (rc != 0) return {};
  int status = 0;
  ::waitpid(pid, &status, 0);
  return nlohmann::json::parse(output, nullptr, false);
}

void evict(const fs::path& dir) {
  for (const auto& item : fs::directory_iterator(dir)) {
    if (item.path().extension() != ".safetensors") continue;
    int fd = ::open(item.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// The child: a 12.5% generation from a cold page cache, reporting peak RSS beside kept weights + KV.
int resident_child(const std::string& dir, int64_t keep_k, int64_t steps) {
  const int64_t rss_start = emo::current_rss_bytes();
  evict(dir);
  auto weights = emo::InferWeights::open(dir);
  const auto prompt = prompt_tokens(kPromptTokens, weights->config().vocab_size);
  emo::Decoder d(*weights, kPromptTokens + steps + 1);
  emo::GenerateOptions options;
  options.max_new_tokens = steps + 1;
  options.auto_experts = keep_k;
  const emo::GenerateResult result = emo::generate(d, prompt, options);
  std::vector<emo::MemoryRange> ranges = weights->memory_ranges(true);
  for (const auto& r : d.cache().memory_ranges()) ranges.push_back(r);
  emo::ResidentReport report = emo::resident_report(ranges);
  nlohmann::json j = {{"rss_start", rss_start},
                      {"peak_rss", report.peak_rss},
                      {"kept_weights", weights->kept_weight_bytes()},
                      {"kv_cache", d.cache().bytes_used(d.length())},
                      {"decode_tokens_per_second", result.decode_tokens_per_second()},
                      {"prompt_tokens_per_second", result.prompt_tokens_per_second()},
                      {"bytes_per_token", weights->bytes_per_token(weights->config().num_experts_per_tok) +
                                              d.cache().bytes_used(kPromptTokens + steps / 2)},
                      {"resident_by_component", report.to_json()}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

// The released Emo_1b14b_1T's shapes (docs/emo.md §1-2: d 2048, 16 layers, 16 heads, 128 experts of
// width 1024, top 8 with the shared one, vocab 100352; 13.57B parameters) with random values, in bf16 (27 GB
// in 5 GB shards) or, with q4, written directly in emo quantize --dtype q4's format (7.6 GB: attention and
// experts in Q4_0 blocks with the fitted scales, embedding and lm_head int8 per row, routers and norms fp32,
// the same config and metadata, by quantize's own functions). Weights of one shape share one random block
// (the values do not matter for memory and speed; routers are distinct, so the prompt still picks different
// experts per layer): q4 quantises each block once instead of reading a 27 GB bf16 copy.
emo::ModelConfig released_config() {
  emo::ModelConfig c;
  c.vocab_size = 100352, c.hidden_size = 2048, c.intermediate_size = 1024, c.num_hidden_layers = 16;
  c.num_attention_heads = 16, c.num_key_value_heads = 16, c.num_experts = 128, c.num_experts_per_tok = 8;
  c.eos_token_id = 100257, c.pad_token_id = 100277, c.torch_dtype = "bfloat16";
  return c;
}

// One shared block of random weights [rows, cols] (scale 0.02) in the stored format: bf16, or for q4 the
// Q4_0 blocks of a projection or the int8 rows + scales of the embedding / lm_head.
struct SharedBlock {
  int64_t rows = 0, cols = 0;
  std::vector<uint16_t> bf16;
  std::vector<uint8_t> q4;
  std::vector<int8_t> int8;
  std::vector<float> scales, fp32;
};

enum class BlockFormat { kBf16, kQ4, kInt8, kFp32 };

SharedBlock shared_block(emo::Rng& rng, int64_t rows, int64_t cols, BlockFormat format) {
  SharedBlock b;
  b.rows = rows, b.cols = cols;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (auto& x : w) x = emo::bf16_to_f32(emo::f32_to_bf16(static_cast<float>(rng.normal()) * 0.02f));
  if (format == BlockFormat::kBf16) {
    b.bf16.resize(w.size());
    for (size_t i = 0; i < w.size(); ++i) b.bf16[i] = emo::f32_to_bf16(w[i]);
  } else if (format == BlockFormat::kQ4) {
    b.q4.resize(static_cast<size_t>(rows * emo::q4_row_bytes(cols)));
    emo::quantize_rows_q4_0(b.q4.data(), w.data(), rows, cols, emo::Q4Scale::kFitted);
  } else if (format == BlockFormat::kInt8) {
    b.int8.resize(w.size()), b.scales.resize(static_cast<size_t>(rows));
    emo::quantize_rows_int8(b.int8.data(), b.scales.data(), w.data(), rows, cols);
  } else {
    b.fp32 = std::move(w);
  }
  return b;
}

void add_block(std::vector<emo::SafetensorsEntry>& out, const std::string& name, const SharedBlock& b) {
  using emo::DType;
  const emo::Shape shape = {b.rows, b.cols};
  if (!b.bf16.empty()) {
    out.push_back(emo::SafetensorsEntry::raw(name, DType::kBF16, shape, b.bf16.data()));
  } else if (!b.q4.empty()) {
    out.push_back(emo::SafetensorsEntry::raw(name, DType::kQ4_0, shape, b.q4.data()));
  } else if (!b.int8.empty()) {
    out.push_back(emo::SafetensorsEntry::raw(name, DType::kI8, shape, b.int8.data()));
    out.emplace_back(name + "_scale", DType::kF32, emo::Shape{b.rows}, b.scales.data());
  } else {
    out.emplace_back(name, DType::kF32, shape, b.fp32.data());
  }
}

void ensure_released_shape(const std::string& dir, bool q4) {
  if (fs::exists(fs::path(dir) / "config.json")) return;
  Timer t;
  emo::ModelConfig c = released_config();
  const int64_t d = c.hidden_size, f = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  emo::Rng rng(5);
  const BlockFormat matrix = q4 ? BlockFormat::kQ4 : BlockFormat::kBf16;
  const SharedBlock vocab = shared_block(rng, V, d, q4 ? BlockFormat::kInt8 : BlockFormat::kBf16);
  const SharedBlock square = shared_block(rng, d, d, matrix);
  const SharedBlock expert = shared_block(rng, f, d, matrix), expert_down = shared_block(rng, d, f, matrix);
  SharedBlock ones;
  ones.rows = 1, ones.cols = d;
  if (q4)
    ones.fp32.assign(static_cast<size_t>(d), 1.0f);
  else
    ones.bf16.assign(static_cast<size_t>(d), 0x3f80);
  std::vector<SharedBlock> routers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    routers.push_back(shared_block(rng, E, d, q4 ? BlockFormat::kFp32 : BlockFormat::kBf16));
  std::vector<emo::SafetensorsEntry> tensors;
  add_block(tensors, "model.embed_tokens.weight", vocab);
  auto norm = [&](const std::string& name) {  // [d], not [1, d]
    add_block(tensors, name, ones);
    tensors.back().shape = {d};
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    norm(p + "pre_attention_layernorm.weight");
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"})
      add_block(tensors, p + "self_attn." + m + ".weight", square);
    norm(p + "pre_feedforward_layernorm.weight");
    add_block(tensors, p + "mlp.gate.weight", routers[l]);
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      add_block(tensors, x + "gate_proj.weight", expert);
      add_block(tensors, x + "up_proj.weight", expert);
      add_block(tensors, x + "down_proj.weight", expert_down);
    }
  }
  norm("model.norm.weight");
  add_block(tensors, "lm_head.weight", vocab);
  fs::create_directories(dir);
  emo::QuantizeTarget target(q4 ? emo::DType::kQ4_0 : emo::DType::kBF16);
  emo::write_safetensors_sharded(dir, tensors, int64_t(5) << 30,
                                 q4 ? emo::quantized_metadata(target) : emo::SafetensorsMetadata{});
  if (q4) emo::describe_quantization(c, target);
  c.save((fs::path(dir) / "config.json").string());
  emo::log_warn(emo::cat("wrote the released-shape checkpoint (", q4 ? "q4" : "bf16", ") to ", dir, " in ",
                         emo::human_duration(t.seconds())));
}

// One keep-k run of the released shapes (k of 128 experts per layer chosen from the prompt) in a fresh
// process from a cold page cache: peak resident memory beside the kept weights + KV cache, and decode speed
// beside the bandwidth bound. Returns the child's JSON line with the ratios added (null if it failed).
nlohmann::json released_keep_run(const char* self, const std::string& dir, int64_t keep_k, int64_t steps,
                                 const std::vector<float>& buffer) {
  std::vector<double> reads = read_bandwidths(buffer, 3);
  nlohmann::json r = resident_in_child(self, dir, keep_k, steps);
  for (double rate : read_bandwidths(buffer, 3)) reads.push_back(rate);
  if (!r.is_object()) return nullptr;
  const double kept = r["kept_weights"].get<double>() + r["kv_cache"].get<double>();
  const double peak = r["peak_rss"].get<double>(), start = r["rss_start"].get<double>();
  const double bound = median(reads) * 1e9 / r["bytes_per_token"].get<double>();
  const double decode = r["decode_tokens_per_second"].get<double>();
  std::printf(
      "keep-%-3lld peak RSS %6.2f GB beside kept weights + KV %6.2f GB: ratio %.3f ((peak - start) "
      "%.3f)\n",
      static_cast<long long>(keep_k), peak / 1e9, kept / 1e9, peak / kept, (peak - start) / kept);
  std::printf(
      "         decode %.2f tok/s beside bandwidth %.1f GB/s / %.2f GB per token = %.2f tok/s: "
      "ratio %.2f; prompt %.1f tok/s (each layer's experts read from disk as it is reached)\n",
      decode, median(reads), r["bytes_per_token"].get<double>() / 1e9, bound, decode / bound,
      r["prompt_tokens_per_second"].get<double>());
  r["keep_k"] = keep_k;
  r["peak_over_kept"] = peak / kept;
  r["decode_bandwidth_bound"] = bound;
  r["decode_ratio"] = decode / bound;
  r["bandwidth_gbs"] = median(reads);
  return r;
}

// The released shapes at each k of keep_ks, each in its own process from a cold page cache. The target:
// the 27 GB model in about 5 GB at keep-16.
int released_run(const char* self, const std::string& dir, bool q4, const std::vector<int64_t>& keep_ks,
                 int64_t steps, const std::vector<float>& buffer) {
  ensure_released_shape(dir, q4);
  std::printf(
      "released shapes (13.57B parameters, %s, %s), experts chosen from a %lld-token prompt, "
      "cold page cache, %lld decode steps:\n",
      q4 ? "q4" : "bf16", dir.c_str(), static_cast<long long>(kPromptTokens), static_cast<long long>(steps));
  nlohmann::json runs = nlohmann::json::array();
  for (int64_t keep_k : keep_ks) {
    nlohmann::json r = released_keep_run(self, dir, keep_k, steps, buffer);
    if (r.is_null()) {
      std::printf("the keep-%lld run failed\n", static_cast<long long>(keep_k));
      return 1;
    }
    runs.push_back(std::move(r));
  }
  return print_summary("infer_released", steps, runs, {{"dtype", q4 ? "q4" : "bf16"}});
}

// "8,16,32" -> {8, 16, 32}; each k within the released model's 1..128 experts.
std::vector<int64_t> parse_keep_list(const std::string& text) {
  std::vector<int64_t> keep_ks;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    char* end = nullptr;
    const long long k = std::strtoll(item.c_str(), &end, 10);
    EMO_CHECK(!item.empty() && *end == '\0' && k >= 1 && k <= 128, "bench_infer", "--keep-k: '", item,
              "' is not an expert count in 1..128 (give e.g. 8,16,32)");
    keep_ks.push_back(k);
    start = comma + 1;
  }
  return keep_ks;
}
// Seconds of InferWeights::open plus loading every expert (what a run with all experts uses).
double open_and_load_all(const std::string& dir) {
  Timer t;
  auto weights = emo::InferWeights::open(dir);
  const emo::ModelConfig& c = weights->config();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (int64_t e = 0; e < c.experts_in_layer(l); ++e) weights->load_expert(l, e);
  return t.seconds();
}

// Seconds of one plain read (an OR of 32-byte loads) over every tensor of the mapped checkpoint; *bytes set.
double plain_read(const std::string& dir, double* bytes) {
  const emo::SafetensorsCheckpoint checkpoint = emo::SafetensorsCheckpoint::open(dir);
  Timer t;
  __m256i any = _mm256_setzero_si256();
  *bytes = 0;
  for (const std::string& name : checkpoint.names()) {
    const emo::TensorInfo& info = checkpoint.info(name);
    const char* p = static_cast<const char*>(info.data);
    for (size_t i = 0; i + 32 <= info.nbytes; i += 32)
      any = _mm256_or_si256(any, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    *bytes += static_cast<double>(info.nbytes);
  }
  const double seconds = t.seconds();
  if (_mm256_testz_si256(any, any)) std::printf(" ");  // keep the reads alive
  return seconds;
}

int load_check_run(const std::string& dir, int rounds) {
  ensure_models(dir, "big", big_config());
  nlohmann::json out = {{"bench", "infer_load_check"}, {"rounds", rounds}};
  for (const char* dtype : {"f32", "bf16", "int8"}) {
    const std::string path = (fs::path(dir) / "big" / dtype).string();
    double bytes = 0;
    plain_read(path, &bytes);  // into the page cache
    std::vector<double> checked, unchecked, reads;
    for (int r = 0; r < rounds; ++r) {
      emo::set_allow_nonfinite_weights(false);
      checked.push_back(open_and_load_all(path));
      emo::set_allow_nonfinite_weights(true);
      unchecked.push_back(open_and_load_all(path));
      reads.push_back(plain_read(path, &bytes));
    }
    emo::set_allow_nonfinite_weights(false);
    const double cost = median(checked) - median(unchecked), reference = median(reads);
    std::printf(
        "%-4s %.2f GB: open + every expert %.1f ms checked, %.1f ms with --allow-nonfinite: the check costs "
        "%.1f ms; one plain read of the bytes %.1f ms; ratio %.2f\n",
        dtype, bytes / 1e9, 1e3 * median(checked), 1e3 * median(unchecked), 1e3 * cost, 1e3 * reference,
        cost / reference);
    out[dtype] = {{"bytes", bytes},
                  {"checked_ms", 1e3 * median(checked)},
                  {"unchecked_ms", 1e3 * median(unchecked)},
                  {"check_ms", 1e3 * cost},
                  {"plain_read_ms", 1e3 * reference},
                  {"ratio", cost / reference}};
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// Perplexity of one checkpoint through the decoder: every document in rows of at most kRow tokens, each
// row's positions scored on the next token.
double decoder_perplexity(const std::string& dir, const emo::data::Dataset& data) {
  constexpr int64_t kRow = 512;
  auto weights = emo::InferWeights::open(dir);
  emo::Decoder decoder(*weights, kRow);
  double nll = 0;
  int64_t scored = 0;
  for (int64_t d = 0; d < data.num_documents(); ++d) {
    const std::span<const uint32_t> doc = data.document(d);
    for (size_t begin = 0; begin + 1 < doc.size(); begin += kRow) {
      const size_t end = std::min(doc.size(), begin + kRow);
      const std::vector<int32_t> row(doc.begin() + begin, doc.begin() + end);
      decoder.reset();
      const emo::Tensor& logits = decoder.forward(row, true);  // [n, V]
      const int64_t V = logits.shape()[1];
      for (size_t t = 0; t + 1 < row.size(); ++t) {
        const float* l = logits.data() + t * V;
        const double top = *std::max_element(l, l + V);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(double(l[v]) - top);
        nll += top + std::log(sum) - l[row[t + 1]];
        ++scored;
      }
    }
  }
  return std::exp(nll / static_cast<double>(scored));
}

int perplexity_run(const std::string& data_path, const std::vector<std::string>& dirs) {
  if (!emo::quant_kernel_available(emo::QuantKernel::kAvx512, emo::DType::kF32)) {
    std::printf("this CPU has no AVX-512F: nothing to compare\n");
    return 0;
  }
  const emo::data::Dataset data = emo::data::Dataset::open(data_path);
  const emo::QuantKernel chosen = emo::quant_kernel();
  std::printf("held-out perplexity through the decoder, %lld tokens of %s\n",
              static_cast<long long>(data.num_tokens()), data_path.c_str());
  std::printf("%-40s %12s %12s %9s\n", "checkpoint", "avx2", "avx512", "change");
  nlohmann::json runs = nlohmann::json::array();
  for (const std::string& dir : dirs) {
    double ppl[2];
    for (emo::QuantKernel kernel : {emo::QuantKernel::kAvx2, emo::QuantKernel::kAvx512}) {
      emo::set_quant_kernel(kernel);
      ppl[kernel == emo::QuantKernel::kAvx512] = decoder_perplexity(dir, data);
    }
    const double change = 100.0 * (ppl[1] / ppl[0] - 1.0);
    std::printf("%-40s %12.4f %12.4f %+8.4f%%\n", dir.c_str(), ppl[0], ppl[1], change);
    runs.push_back({{"checkpoint", dir}, {"avx2", ppl[0]}, {"avx512", ppl[1]}, {"change_percent", change}});
  }
  emo::set_quant_kernel(chosen);
  std::printf("%s\n",
              nlohmann::json{{"bench", "infer_perplexity"}, {"tokens", data.num_tokens()}, {"runs", runs}}
                  .dump()
                  .c_str());
  return 0;
}

int run(int argc, char** argv) {
  if (argc >= 4 && std::strcmp(argv[1], "--perplexity") == 0)
    return perplexity_run(argv[2], std::vector<std::string>(argv + 3, argv + argc));
  if (argc >= 5 && std::strcmp(argv[1], "--resident") == 0)
    return resident_child(argv[2], std::stoll(argv[3]), std::stoll(argv[4]));
  bool quick = false;
  std::string dir = (fs::temp_directory_path() / "emo_bench_infer").string();
  int64_t steps = 64;
  std::string released, released_dtype = "bf16";
  std::vector<int64_t> keep_ks = {16};
  bool load_check = false;
  bool kernels = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--load-check") == 0) load_check = true;
    if (std::strcmp(argv[i], "--released") == 0 && i + 1 < argc) released = argv[++i];
    if (std::strcmp(argv[i], "--keep-k") == 0 && i + 1 < argc) keep_ks = parse_keep_list(argv[++i]);
    if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) released_dtype = argv[++i];
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--kernels") == 0) kernels = true;
    if (std::strcmp(argv[i], "--dir") == 0 && i + 1 < argc) dir = argv[++i];
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = std::stoll(argv[++i]);
  }
  emo::set_log_level(emo::LogLevel::kWarn);
  std::printf("emo inference benchmark: %d threads, models in %s (absolute figures: a shared machine)\n",
              emo::num_threads(), dir.c_str());
  const std::vector<float> buffer(static_cast<size_t>(1) << 26, 1.0f);  // 256 MiB, far beyond the caches
  if (kernels) return kernels_run(dir, quick, steps);
  EMO_CHECK(released_dtype == "bf16" || released_dtype == "q4", "bench_infer", "--dtype '", released_dtype,
            "' is not bf16 or q4 (the released shapes' formats)");
  if (!released.empty())
    return released_run(argv[0], released, released_dtype == "q4", keep_ks, steps, buffer);
  if (load_check) return load_check_run(dir, quick ? 1 : 5);
  const std::vector<double> start_reads = read_bandwidths(buffer, quick ? 2 : 5);
  const double bandwidth = *std::max_element(start_reads.begin(), start_reads.end());
  std::printf(
      "memory bandwidth (parallel read of 256 MiB, best of 5): %.1f GB/s; each decode figure below is\n"
      "the median of 5 rounds, each beside the median of 6 bandwidth reads around it (3 before, 3 after)\n\n",
      bandwidth);

  std::vector<std::pair<std::string, emo::ModelConfig>> models = {{"reference", reference_config()}};
  if (!quick) models.emplace_back("big", big_config());
  nlohmann::json runs = nlohmann::json::array(), resident = nlohmann::json::array();
  std::printf("%-9s %-5s %-7s %10s %10s %6s %10s %10s %6s %10s\n", "model", "dtype", "experts", "prompt/s",
              "bound", "ratio", "decode/s", "bound", "ratio", "MB/token");
  for (const auto& [name, config] : models) {
    ensure_models(dir, name, config);
    for (const char* dtype : kDtypes) {
      const std::string path = (fs::path(dir) / name / dtype).string();
      for (int64_t keep_k : {int64_t(0), config.num_experts / 8}) {
        RunFigures f = measure(path, keep_k, steps, buffer, quick ? 1 : 5);
        std::printf("%-9s %-5s %-7s %10.0f %10.0f %6.2f %10.1f %10.1f %6.2f %10.2f\n", name.c_str(), dtype,
                    keep_k ? "12.5%" : "all", f.prompt_tps, f.prompt_bound, f.prompt_ratio, f.decode_tps,
                    f.decode_bound, f.decode_ratio, f.bytes_per_token / 1e6);
        runs.push_back({{"model", name},
                        {"dtype", dtype},
                        {"keep_k", keep_k},
                        {"prompt_tokens_per_second", f.prompt_tps},
                        {"prompt_sgemm_bound", f.prompt_bound},
                        {"prompt_ratio", f.prompt_ratio},
                        {"decode_tokens_per_second", f.decode_tps},
                        {"decode_bandwidth_bound", f.decode_bound},
                        {"decode_ratio", f.decode_ratio},
                        {"bytes_per_token", f.bytes_per_token}});
      }
    }
  }
  std::printf("\n12.5%% runs in a fresh process, checkpoint evicted from the page cache first:\n");
  std::printf("%-9s %-5s %12s %12s %12s %8s %12s\n", "model", "dtype", "peak RSS MB", "kept+KV MB",
              "start RSS MB", "ratio", "(peak-start)");
  for (const auto& [name, config] : models) {
    for (const char* dtype : kDtypes) {
      const std::string path = (fs::path(dir) / name / dtype).string();
      nlohmann::json r = resident_in_child(argv[0], path, config.num_experts / 8, steps);
      if (!r.is_object()) continue;
      const double kept = r["kept_weights"].get<double>() + r["kv_cache"].get<double>();
      const double peak = r["peak_rss"].get<double>(), start = r["rss_start"].get<double>();
      std::printf("%-9s %-5s %12.1f %12.1f %12.1f %8.3f %12.3f\n", name.c_str(), dtype, peak / 1e6,
                  kept / 1e6, start / 1e6, peak / kept, (peak - start) / kept);
      r["model"] = name;
      r["dtype"] = dtype;
      r["peak_over_kept"] = peak / kept;
      r["peak_minus_start_over_kept"] = (peak - start) / kept;
      resident.push_back(r);
    }
  }
  nlohmann::json summary = {{"bench", "infer"},           {"threads", emo::num_threads()},
                            {"bandwidth_gbs", bandwidth}, {"prompt_tokens", kPromptTokens},
                            {"decode_steps", steps},      {"runs", runs},
                            {"resident", resident}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
