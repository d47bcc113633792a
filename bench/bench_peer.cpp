// emo beside llama.cpp on the same weights (bench/llama_peer.sh builds llama.cpp's llama-bench and runs
// this). The model (bench/scaled_model.h peer_config: d 1024, 16 layers, 32 experts of width 512, 7 routed +
// 1 shared per token, vocab 32768; random weights) and the same model pruned to 12.5% of its experts (4 of 32
// per layer, chosen layerwise from a random prompt), each as emo checkpoints in f32 / bf16 / int8 / q4 and as
// GGUF exports (emo export gguf) in f32 / bf16 / Q8_0 / Q4_0 / Q4_K_M (emo's q4 is paired with both 4-bit
// files). Per format and round, alternating which engine goes first:
//   - emo in a fresh process (this program, --emo DIR) and llama-bench in a fresh process, both on 2 threads
//     (OMP_WAIT_POLICY=passive for llama.cpp), each timing prompt processing of 128 and 512 tokens and the
//     decode of 64 tokens from an empty context after a warmup run (llama-bench's method: random tokens,
//     logits of the last token), and the peak resident memory of the process (wait4);
//   - the memory bandwidth (bench/bandwidth.h) read 3 times before and 3 after the pair: each engine's decode
//     beside bandwidth / bytes one token reads (its weights in its format, KV cache at the mean position).
// Reported: per format the medians over rounds of each figure and of each paired ratio emo / llama.cpp.
//   bench_peer --write DIR                       writes the models once (about 10 GB, a few minutes)
//   bench_peer --gguf-types A.gguf B.gguf        the tensor types of two GGUF files side by side
//   bench_peer --models DIR --llama-bench PATH [--rounds N] [--threads N] [--sets full,pruned]
//              [--formats f32,bf16,int8,q4] [--llama-wait-policy passive|active]
// Ends with one JSON line.
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "export/gguf_export.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "infer/quantize.h"
#include "io/gguf.h"
#include "io/json_file.h"
#include "model/model.h"
#include "scaled_model.h"
#include "select/prune.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using emo::cat;
using emo::Timer;
using emo::bench::median;

constexpr int64_t kPromptLengths[] = {128, 512};
constexpr int64_t kDecodeTokens = 64;
const std::string kTokenizer = std::string(EMO_SOURCE_DIR) + "/fuzz/corpus/tokenizer_json/trained300.json";

// One pairing: emo's checkpoint format and the GGUF format llama.cpp runs it in.
struct Format {
  std::string emo, gguf;
};
// emo's q4 (Q4_0 blocks) is paired twice: with the q4_0 export of the same blocks, and with the q4_k export
// (llama-quantize's Q4_K_M mix), the 4-bit file a llama.cpp user would pick.
const std::vector<Format> kFormats = {
    {"f32", "f32"}, {"bf16", "bf16"}, {"int8", "q8_0"}, {"q4", "q4_0"}, {"q4", "q4_k"}};

// A pair's key in the results: "set/emo/gguf".
std::string pair_key(const std::string& set, const Format& f) {
  return cat(set, "/", f.emo, "/", f.gguf);
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  emo::Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.uniform_int(0, vocab - 1));
  return t;
}

std::string gguf_path(const fs::path& dir, const std::string& set, const std::string& format) {
  return (dir / "gguf" / cat(set, "-", format, ".gguf")).string();
}

// Bytes one llama.cpp decode step reads from the GGUF file: every tensor, the embedding as one row, the
// stacked routed experts in the share of them a token uses.
int64_t gguf_bytes_per_token(const std::string& path) {
  const emo::GgufFile file = emo::GgufFile::open(path);
  const double used = static_cast<double>(file.get("qwen2moe.expert_used_count").integer) /
                      static_cast<double>(file.get("qwen2moe.expert_count").integer);
  double bytes = 0;
  for (const emo::GgufTensorInfo& t : file.tensors()) {
    if (t.name == "token_embd.weight")
      bytes += static_cast<double>(t.nbytes) / static_cast<double>(t.dims[1]);
    else if (t.name.find("_exps.") != std::string::npos)
      bytes += static_cast<double>(t.nbytes) * used;
    else
      bytes += static_cast<double>(t.nbytes);
  }
  return static_cast<int64_t>(bytes);
}

void export_one(const fs::path& dir, const std::string& set, const std::string& from,
                const std::string& dtype, nlohmann::json& manifest) {
  const std::string out = gguf_path(dir, set, dtype);
  emo::GgufExportOptions options;
  options.dtype = dtype;
  const emo::GgufExportSummary s = emo::export_gguf((dir / set / from).string(), out, options);
  manifest["gguf"][cat(set, "-", dtype)] = {
      {"bytes", s.bytes}, {"used_experts", s.used_experts}, {"bytes_per_token", gguf_bytes_per_token(out)}};
}

// DIR/{full,pruned}/q4 (emo quantize --dtype q4 of the f32 checkpoint) and its GGUF pairs q4_0 (the same
// blocks) and q4_k, from the same f32; recorded in the manifest.
void write_q4_models(const fs::path& dir, nlohmann::json& manifest) {
  for (const char* set : {"full", "pruned"}) {
    emo::quantize_checkpoint((dir / set / "f32").string(), (dir / set / "q4").string(), emo::DType::kQ4_0,
                             {"quantize", {}, true});
    export_one(dir, set, "f32", "q4_0", manifest);
    export_one(dir, set, "f32", "q4_k", manifest);
  }
}

// Writes DIR/{full,pruned}/{f32,bf16,int8,q4} and DIR/gguf/{full,pruned}-{f32,bf16,q8_0,q4_0,q4_k}.gguf once;
// the manifest (DIR/peer-models.json, written last) marks a complete set. A set written before the q4 pairs
// existed gets them added (the manifest then rewritten).
void write_models(const fs::path& dir) {
  const fs::path manifest_path = dir / "peer-models.json";
  if (fs::exists(manifest_path)) {
    nlohmann::json manifest = emo::read_json_file(manifest_path.string(), "bench_peer");
    if (manifest.at("gguf").contains("pruned-q4_k")) return;
    Timer t;
    write_q4_models(dir, manifest);
    emo::write_json_file(manifest_path.string(), manifest);
    std::printf("wrote the q4 models to %s in %s\n", dir.c_str(), emo::human_duration(t.seconds()).c_str());
    return;
  }
  Timer t;
  const emo::ModelConfig config = emo::bench::peer_config();
  {
    emo::Model model(config);
    model.init_weights(7);
    model.save((dir / "full/f32").string());
  }
  fs::copy_file(kTokenizer, dir / "full/f32/tokenizer.json", fs::copy_options::overwrite_existing);
  {
    // 12.5%: 4 of 32 experts per layer (3 routed + the shared one), chosen layerwise from a random prompt.
    auto weights = emo::InferWeights::open((dir / "full/f32").string());
    const emo::ExpertSubset subset = emo::select_layerwise(
        *weights, {random_tokens(128, config.vocab_size, 11)}, config.num_experts / 8, "random prompt");
    emo::prune_checkpoint((dir / "full/f32").string(), subset, (dir / "pruned/f32").string(), nullptr,
                          {"prune", {}, true});
  }
  nlohmann::json manifest = {{"config", config.to_json()}};
  fs::create_directories(dir / "gguf");
  for (const char* set : {"full", "pruned"}) {
    // --force: a run stopped half-way left outputs of its own to replace.
    emo::quantize_checkpoint((dir / set / "f32").string(), (dir / set / "bf16").string(), emo::DType::kBF16,
                             {"quantize", {}, true});
    emo::quantize_checkpoint((dir / set / "f32").string(), (dir / set / "int8").string(), emo::DType::kI8,
                             {"quantize", {}, true});
    export_one(dir, set, "f32", "f32", manifest);
    export_one(dir, set, "bf16", "bf16", manifest);  // a copy of the bf16 checkpoint's values
    export_one(dir, set, "f32", "q8_0", manifest);   // both 8-bit formats quantised from the same f32
  }
  write_q4_models(dir, manifest);
  emo::write_json_file(manifest_path.string(), manifest);
  std::printf("wrote the models to %s in %s\n", dir.c_str(), emo::human_duration(t.seconds()).c_str());
}

// Where emo's decode time goes: the same tokens again, stage by stage (Decoder's staged pass), each stage's
// seconds and the weight bytes it reads per token (attention: q k v o and the KV cache; router; the experts
// a token uses; embedding row, final norm and lm_head).
nlohmann::json decode_stages(emo::InferWeights& weights, emo::Decoder& d,
                             const std::vector<int32_t>& tokens) {
  const emo::ModelConfig& c = weights.config();
  std::map<std::string, double> seconds;
  d.reset();
  for (int32_t token : tokens) {
    Timer step;
    d.begin({token});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      Timer a;
      d.attention(l);
      seconds["attention"] += a.seconds();
      Timer r;
      d.router(l);
      seconds["router"] += r.seconds();
      Timer e;
      d.experts(l);
      seconds["experts"] += e.seconds();
    }
    d.finish();
    seconds["step"] += step.seconds();
  }
  int64_t attention = 0, router = 0;  // weight bytes per token
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const emo::LayerView& lw = weights.layer(l);
    attention += lw.q.nbytes() + lw.k.nbytes() + lw.v.nbytes() + lw.o.nbytes();
    router += lw.router.nbytes();
  }
  const int64_t non_expert = weights.bytes_per_token(0), kv = d.cache().bytes_used(kDecodeTokens / 2);
  const double n = static_cast<double>(tokens.size());
  auto stage = [&](double s, int64_t bytes) { return nlohmann::json{{"seconds", s / n}, {"bytes", bytes}}; };
  return {{"attention", stage(seconds["attention"], attention + kv)},
          {"router", stage(seconds["router"], router)},
          {"experts", stage(seconds["experts"], weights.bytes_per_token(c.num_experts_per_tok) - non_expert)},
          // The rest of a step: the embedding row, the final norm, lm_head, the layers' norms.
          {"embedding_lm_head",
           stage(seconds["step"] - seconds["attention"] - seconds["router"] - seconds["experts"],
                 non_expert - attention - router)}};
}

// The child: emo's figures for one checkpoint, measured as llama-bench measures (warmup, then timed).
int emo_child(const std::string& dir) {
  auto weights = emo::InferWeights::open(dir);
  const emo::ModelConfig& c = weights->config();
  nlohmann::json out;
  for (int64_t n : kPromptLengths) {
    const std::vector<int32_t> prompt = random_tokens(n, c.vocab_size, 100 + n);
    emo::Decoder d(*weights, n);
    d.forward(prompt);  // warmup
    d.reset();
    Timer t;
    d.forward(prompt);
    out[cat("prompt_", n)] = static_cast<double>(n) / t.seconds();
  }
  const std::vector<int32_t> tokens = random_tokens(kDecodeTokens, c.vocab_size, 5);
  emo::Decoder d(*weights, kDecodeTokens);
  d.forward({tokens[0]});  // warmup
  d.reset();
  Timer t;
  for (int32_t token : tokens) d.forward({token});
  out["decode"] = static_cast<double>(kDecodeTokens) / t.seconds();
  out["bytes_per_token"] =
      weights->bytes_per_token(c.num_experts_per_tok) + d.cache().bytes_used(kDecodeTokens / 2);
  out["decode_stages"] = decode_stages(*weights, d, tokens);
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

struct ChildResult {
  std::string output;
  int64_t peak_rss = 0;  // bytes
  double seconds = 0;
};

// Runs argv with `extra_env` added, stdout captured, stderr appended to `log`; the peak RSS from wait4.
ChildResult run_child(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
                      const std::string& log) {
  std::vector<std::string> env_strings(extra_env);
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  for (const auto& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  argv.push_back(nullptr);
  envp.push_back(nullptr);
  int pipefd[2];
  EMO_CHECK(::pipe(pipefd) == 0, "bench_peer", "pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  posix_spawn_file_actions_addclose(&actions, pipefd[0]);
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  Timer t;
  pid_t pid;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipefd[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) r.output.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  EMO_CHECK(rc == 0, "bench_peer", "cannot run ", args[0], ": ", std::strerror(rc));
  int status = 0;
  struct rusage usage {};
  ::wait4(pid, &status, 0, &usage);
  EMO_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "bench_peer", args[0], " ",
            args.size() > 2 ? args[2] : "", " failed (see ", log, ")");
  r.peak_rss = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  r.seconds = t.seconds();
  return r;
}

// One engine's figures in one round.
struct Figures {
  double prompt_128 = 0, prompt_512 = 0, decode = 0, peak_rss = 0, bytes_per_token = 0;
  nlohmann::json stages;  // emo only: decode_stages()
};

Figures run_emo(const char* self, const std::string& checkpoint, int threads, const std::string& log) {
  const ChildResult r = run_child({self, "--emo", checkpoint}, {cat("EMO_THREADS=", threads)}, log);
  const nlohmann::json j = emo::parse_json(r.output, cat("bench_peer --emo ", checkpoint), "bench_peer");
  return {j.at("prompt_128").get<double>(),      j.at("prompt_512").get<double>(),
          j.at("decode").get<double>(),          static_cast<double>(r.peak_rss),
          j.at("bytes_per_token").get<double>(), j.at("decode_stages")};
}

// llama-bench's three tests in one process (one model load), one repetition each after its warmup.
Figures run_llama(const std::string& llama_bench, const std::string& gguf, int threads,
                  const std::string& wait_policy, double weight_bytes_per_token,
                  const emo::ModelConfig& config, const std::string& log) {
  const ChildResult r = run_child({llama_bench, "-m", gguf, "-t", cat(threads), "-p", "128,512", "-n",
                                   cat(kDecodeTokens), "-r", "1", "-o", "json"},
                                  {cat("OMP_WAIT_POLICY=", wait_policy)}, log);
  const nlohmann::json j = emo::parse_json(r.output, cat("llama-bench -m ", gguf), "bench_peer");
  Figures f;
  for (const nlohmann::json& test : j) {
    const int64_t n_prompt = test.at("n_prompt").get<int64_t>(), n_gen = test.at("n_gen").get<int64_t>();
    const double rate = test.at("avg_ts").get<double>();
    if (n_gen > 0) f.decode = rate;
    if (n_prompt == 128 && n_gen == 0) f.prompt_128 = rate;
    if (n_prompt == 512 && n_gen == 0) f.prompt_512 = rate;
  }
  EMO_CHECK(f.decode > 0 && f.prompt_128 > 0 && f.prompt_512 > 0, "bench_peer", "llama-bench -m ", gguf,
            " did not report pp128, pp512 and tg64: ", r.output);
  f.peak_rss = static_cast<double>(r.peak_rss);
  // llama.cpp's KV cache is f16: 2 (K, V) x layers x kv width x 2 bytes per position, at the mean position.
  const double kv_width = static_cast<double>(config.num_key_value_heads * config.head_dim());
  f.bytes_per_token = weight_bytes_per_token + 2.0 * static_cast<double>(config.num_hidden_layers) *
                                                   kv_width * 2.0 * (kDecodeTokens / 2);
  return f;
}

struct PairRounds {
  std::vector<Figures> emo, llama;
  std::vector<double> bandwidth;  // GB/s, median of the reads around each round's pair
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  for (size_t start = 0; start <= s.size();) {
    const size_t comma = std::min(s.find(',', start), s.size());
    if (comma > start) out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// Medians over rounds of a figure of each engine and of its paired ratio.
struct Compared {
  double emo = 0, llama = 0, ratio = 0;
};
Compared compare(const PairRounds& r, double Figures::*field) {
  std::vector<double> e, l, ratio;
  for (size_t i = 0; i < r.emo.size(); ++i) {
    e.push_back(r.emo[i].*field), l.push_back(r.llama[i].*field);
    ratio.push_back(e.back() / l.back());
  }
  return {median(e), median(l), median(ratio)};
}

// Each engine's decode over its bandwidth bound in the same round (median over rounds).
std::pair<double, double> bound_shares(const PairRounds& r) {
  std::vector<double> e, l;
  for (size_t i = 0; i < r.emo.size(); ++i) {
    e.push_back(r.emo[i].decode * r.emo[i].bytes_per_token / (r.bandwidth[i] * 1e9));
    l.push_back(r.llama[i].decode * r.llama[i].bytes_per_token / (r.bandwidth[i] * 1e9));
  }
  return {median(e), median(l)};
}

// emo's decode step by stage (medians over rounds): time, bytes read, the rate they are read at, and the
// time the bytes would take at the round's bandwidth.
nlohmann::json print_stages(const std::vector<std::pair<std::string, Format>>& runs,
                            std::map<std::string, PairRounds>& results) {
  nlohmann::json out = nlohmann::json::array();
  std::printf(
      "\nemo's decode step by stage (medians over rounds; at bandwidth = bytes / the round's bandwidth):\n");
  std::printf("%-6s %-5s %-18s %9s %9s %8s %14s\n", "model", "emo", "stage", "ms/token", "MB/token", "GB/s",
              "at bandwidth");
  for (const auto& [set, format] : runs) {
    const PairRounds& r = results[pair_key(set, format)];
    for (const char* stage : {"attention", "router", "experts", "embedding_lm_head"}) {
      std::vector<double> ms, streamed;
      for (size_t i = 0; i < r.emo.size(); ++i) {
        const nlohmann::json& s = r.emo[i].stages.at(stage);
        ms.push_back(s.at("seconds").get<double>() * 1e3);
        streamed.push_back(s.at("bytes").get<double>() / (r.bandwidth[i] * 1e9) * 1e3);
      }
      const double mb = r.emo[0].stages.at(stage).at("bytes").get<double>() / 1e6;
      std::printf("%-6s %-5s %-18s %9.2f %9.1f %8.1f %11.2f ms\n", set.c_str(), format.emo.c_str(), stage,
                  median(ms), mb, mb / median(ms), median(streamed));
      out.push_back({{"model", set},
                     {"emo_format", format.emo},
                     {"stage", stage},
                     {"ms_per_token", median(ms)},
                     {"bytes_per_token", mb * 1e6},
                     {"ms_at_bandwidth", median(streamed)}});
    }
  }
  return out;
}

struct Options {
  fs::path models;
  std::string llama_bench;
  int rounds = 5, threads = 2;
  // OpenMP's wait policy for llama.cpp's threads: passive (they sleep between graph nodes, the polite choice
  // on a shared machine) or active (they spin, as emo's pool does between the tasks of a step).
  std::string llama_wait_policy = "passive";
  std::vector<std::string> sets = {"full", "pruned"}, formats = {"f32", "bf16", "int8", "q4"};
};

int compare_engines(const char* self, const Options& o) {
  const nlohmann::json manifest = emo::read_json_file((o.models / "peer-models.json").string(), "bench_peer");
  const emo::ModelConfig config = emo::bench::peer_config();
  const std::string log = (o.models / "peer-children.log").string();
  const std::vector<float> buffer(static_cast<size_t>(1) << 26, 1.0f);  // 256 MiB, far beyond the caches
  std::printf(
      "emo vs llama.cpp (llama-bench %s, OMP_WAIT_POLICY=%s), %d threads, %d rounds alternating which engine "
      "goes first;\nmodels in %s (children's stderr in %s)\n",
      o.llama_bench.c_str(), o.llama_wait_policy.c_str(), o.threads, o.rounds, o.models.c_str(), log.c_str());
  std::map<std::string, PairRounds> results;  // pair_key
  std::vector<std::pair<std::string, Format>> runs;
  for (const auto& set : o.sets)
    for (const Format& f : kFormats)
      if (std::find(o.formats.begin(), o.formats.end(), f.emo) != o.formats.end()) runs.emplace_back(set, f);
  Timer total;
  for (int round = 0; round < o.rounds; ++round) {
    for (const auto& [set, format] : runs) {
      const std::string checkpoint = (o.models / set / format.emo).string();
      const std::string gguf = gguf_path(o.models, set, format.gguf);
      const double llama_weight_bytes =
          manifest.at("gguf").at(cat(set, "-", format.gguf)).at("bytes_per_token").get<double>();
      PairRounds& r = results[pair_key(set, format)];
      std::vector<double> reads = emo::bench::read_bandwidths(buffer, 3);
      if (round % 2 == 0) {
        r.emo.push_back(run_emo(self, checkpoint, o.threads, log));
        r.llama.push_back(
            run_llama(o.llama_bench, gguf, o.threads, o.llama_wait_policy, llama_weight_bytes, config, log));
      } else {
        r.llama.push_back(
            run_llama(o.llama_bench, gguf, o.threads, o.llama_wait_policy, llama_weight_bytes, config, log));
        r.emo.push_back(run_emo(self, checkpoint, o.threads, log));
      }
      for (double rate : emo::bench::read_bandwidths(buffer, 3)) reads.push_back(rate);
      r.bandwidth.push_back(median(reads));
      std::printf("  round %d %-6s %-4s/%-4s: decode %.1f / %.1f tok/s, pp512 %.0f / %.0f, %.1f GB/s (%s)\n",
                  round + 1, set.c_str(), format.emo.c_str(), format.gguf.c_str(), r.emo.back().decode,
                  r.llama.back().decode, r.emo.back().prompt_512, r.llama.back().prompt_512,
                  r.bandwidth.back(), emo::human_duration(total.seconds()).c_str());
      std::fflush(stdout);
    }
  }

  std::printf("\nmedians of %d rounds (ratio = median of the paired emo / llama.cpp ratios):\n", o.rounds);
  std::printf("%-6s %-10s | %18s %6s | %18s %6s | %18s %6s | %13s | %15s %6s\n", "model", "emo/llama",
              "decode tok/s", "ratio", "prompt 128 tok/s", "ratio", "prompt 512 tok/s", "ratio", "of bound",
              "peak RSS MB", "ratio");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [set, format] : runs) {
    const PairRounds& r = results[pair_key(set, format)];
    const Compared decode = compare(r, &Figures::decode), p128 = compare(r, &Figures::prompt_128),
                   p512 = compare(r, &Figures::prompt_512), rss = compare(r, &Figures::peak_rss);
    const auto [emo_share, llama_share] = bound_shares(r);
    std::printf(
        "%-6s %-10s | %8.1f %9.1f %6.2f | %8.0f %9.0f %6.2f | %8.0f %9.0f %6.2f | %5.0f%% %5.0f%% | %7.0f "
        "%7.0f "
        "%6.2f\n",
        set.c_str(), cat(format.emo, "/", format.gguf).c_str(), decode.emo, decode.llama, decode.ratio,
        p128.emo, p128.llama, p128.ratio, p512.emo, p512.llama, p512.ratio, 100 * emo_share,
        100 * llama_share, rss.emo / 1e6, rss.llama / 1e6, rss.ratio);
    auto pair = [](const Compared& c) {
      return nlohmann::json{{"emo", c.emo}, {"llama", c.llama}, {"ratio", c.ratio}};
    };
    rows.push_back(
        {{"model", set},
         {"emo_format", format.emo},
         {"gguf_format", format.gguf},
         {"decode_tokens_per_second", pair(decode)},
         {"prompt_128_tokens_per_second", pair(p128)},
         {"prompt_512_tokens_per_second", pair(p512)},
         {"peak_rss_bytes", pair(rss)},
         {"decode_share_of_bandwidth_bound", {{"emo", emo_share}, {"llama", llama_share}}},
         {"bytes_per_token", {{"emo", r.emo[0].bytes_per_token}, {"llama", r.llama[0].bytes_per_token}}},
         {"bandwidth_gbs", median(r.bandwidth)}});
  }
  std::printf("(of bound: decode tok/s x bytes per token / bandwidth of the same round; %s in all)\n",
              emo::human_duration(total.seconds()).c_str());
  const nlohmann::json stages = print_stages(runs, results);
  const nlohmann::json summary = {
      {"bench", "peer"},    {"threads", o.threads},           {"llama_wait_policy", o.llama_wait_policy},
      {"rounds", o.rounds}, {"decode_tokens", kDecodeTokens}, {"prompt_tokens", {128, 512}},
      {"runs", rows},       {"emo_decode_stages", stages}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

// The tensor types of two GGUF files side by side (emo's q4_k export beside llama-quantize's Q4_K_M of the
// f32 export): every tensor of the first, with its type in each; the count that agree; one JSON line.
int compare_gguf_types(const std::string& a_path, const std::string& b_path) {
  const emo::GgufFile a = emo::GgufFile::open(a_path), b = emo::GgufFile::open(b_path);
  std::map<std::string, std::string> b_types;
  for (const emo::GgufTensorInfo& t : b.tensors()) b_types[t.name] = emo::ggml_type_name(t.type);
  int64_t same = 0, differ = 0;
  std::map<std::string, int64_t> a_counts, b_counts;
  for (const emo::GgufTensorInfo& t : a.tensors()) {
    const std::string at = emo::ggml_type_name(t.type);
    const auto it = b_types.find(t.name);
    const std::string bt = it == b_types.end() ? "(missing)" : it->second;
    ++a_counts[at], ++b_counts[bt];
    if (at == bt) {
      ++same;
    } else {
      ++differ;
      std::printf("differs: %-32s %-6s %-6s\n", t.name.c_str(), at.c_str(), bt.c_str());
    }
  }
  std::printf("%lld of %zu tensors have the same type in %s and %s\n", static_cast<long long>(same),
              a.tensors().size(), a_path.c_str(), b_path.c_str());
  std::printf("%s\n", nlohmann::json({{"bench", "gguf_types"},
                                      {"same", same},
                                      {"differ", differ},
                                      {"types_a", a_counts},
                                      {"types_b", b_counts}})
                          .dump()
                          .c_str());
  return differ == 0 ? 0 : 1;
}

int usage() {
  std::fprintf(
      stderr,
      "usage: bench_peer --write DIR\n"
      "       bench_peer --gguf-types A.gguf B.gguf\n"
      "       bench_peer --models DIR --llama-bench PATH [--rounds N] [--threads N] [--sets full,pruned] "
      "[--formats f32,bf16,int8,q4]\n"
      "                  [--llama-wait-policy passive|active]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 3 && std::strcmp(argv[1], "--emo") == 0) return emo_child(argv[2]);
    if (argc == 4 && std::strcmp(argv[1], "--gguf-types") == 0) return compare_gguf_types(argv[2], argv[3]);
    emo::set_log_level(emo::LogLevel::kWarn);
    if (argc == 3 && std::strcmp(argv[1], "--write") == 0) {
      write_models(argv[2]);
      return 0;
    }
    Options o;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string flag = argv[i], value = argv[i + 1];
      if (flag == "--models")
        o.models = value;
      else if (flag == "--llama-bench")
        o.llama_bench = value;
      else if (flag == "--rounds")
        o.rounds = std::stoi(value);
      else if (flag == "--threads")
        o.threads = std::stoi(value);
      else if (flag == "--sets")
        o.sets = split_list(value);
      else if (flag == "--formats")
        o.formats = split_list(value);
      else if (flag == "--llama-wait-policy" && (value == "passive" || value == "active"))
        o.llama_wait_policy = value;
      else
        return usage();
    }
    if (argc % 2 == 0 || o.models.empty() || o.llama_bench.empty() || o.rounds < 1 || o.threads < 1)
      return usage();
    return compare_engines(argv[0], o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
