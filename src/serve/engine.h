// The model side of `emo serve`: one engine thread owns the weights, the decoder and its KV cache, and runs
// the queued requests one sequence at a time. HTTP threads call submit() (which checks and tokenizes the
// request and fails fast with an ApiError) and read what the sequence produces from its Job.
//
// Experts per request: every request runs on one subset: "all", a pack registered at start, or one chosen
// by the engine (layerwise, from the prompt or from examples) and remembered under an id the client can send
// back. The keep mask of InferWeights is global, so the engine applies the request's subset before running
// it; that is sound because one sequence runs at a time. The KV cache of the last sequence is kept: a
// request on the same subset whose prompt shares a prefix with the cached tokens reuses it (Decoder::truncate
// to the common prefix); another subset means a fresh prefill.
//
// Memory: the experts a sequence may use are pinned in an ExpertCache (infer/expert_cache.h) for the time
// it runs; with a budget (--memory-budget) the least recently used unpinned experts are dropped to make
// room. A request whose experts cannot fit the budget even alone is refused at submit with a 503
// (code "memory_budget").
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "infer/decoder.h"
#include "infer/expert_cache.h"
#include "select/subset.h"
#include "serve/chat_template.h"
#include "serve/openai.h"
#include "tokenizer/tokenizer.h"

namespace emo::serve {

// A subset requests can run on. subset == null: all experts.
struct SubsetEntry {
  std::string id;      // "all", the pack's name, or "auto-<hash>"
  std::string source;  // "all", "pack", "prompt" or "examples"
  std::shared_ptr<const ExpertSubset> subset;
  nlohmann::json to_json() const;
};

// One request on its way through the engine: the engine appends text and ends it, the HTTP thread takes.
class Job {
 public:
  CompletionRequest request;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 0;
  std::vector<std::string> stop;                     // the request's and the chat template's
  std::optional<SubsetEntry> subset;                 // resolved at submit; empty = choose on the engine
  int64_t choose_keep_k = 0;                         // for a choice from the prompt or the examples
  std::vector<std::vector<int32_t>> example_tokens;  // for a choice from examples

  struct Update {
    std::string text;
    bool done = false;
    std::optional<CompletionResult> result;  // when done without error
    std::optional<ApiError> error;           // when done with one
  };
  // Waits up to `timeout` for text or the end; returns what arrived since the last call.
  Update take(std::chrono::milliseconds timeout);
  // The client went away: the engine stops the sequence at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // Engine side.
  void emit(const std::string& text);
  void finish(CompletionResult result);
  void fail(ApiError error);

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::string pending_;
  bool done_ = false, taken_done_ = false;
  std::optional<CompletionResult> result_;
  std::optional<ApiError> error_;
  std::atomic<bool> cancelled_{false};
};

struct EngineOptions {
  int64_t keep_k = 0;  // > 0: requests without `experts` choose this many from the prompt
  std::map<std::string, std::string> packs;  // name -> subset.json (emo select)
  std::string chat_template = "plain";       // built-in name or file
  size_t max_queue = 64;                     // waiting requests beyond it get a 503
  size_t remembered_subsets = 256;           // chosen subsets kept for clients to send back (oldest dropped)
  size_t max_examples = 64;
  int64_t memory_budget = 0;  // bytes the experts held at once may take (0: no limit)
};

// Counters for /metrics.
struct EngineStats {
  std::atomic<int64_t> requests{0}, requests_failed{0}, requests_cancelled{0};
  std::atomic<int64_t> prompt_tokens{0}, cached_prompt_tokens{0}, generated_tokens{0};
  std::atomic<int64_t> prefix_reuses{0}, fresh_prefills{0}, subsets_chosen{0};
  std::atomic<int64_t> running{0};
};

// Requests run per subset id ("all", a pack, "auto-..."), for /metrics.
class SubsetCounts {
 public:
  void add(const std::string& id);
  std::map<std::string, int64_t> snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, int64_t> counts_;
};

class Engine {
 public:
  Engine(std::unique_ptr<InferWeights> weights, Tokenizer tokenizer, EngineOptions options);
  ~Engine();  // stops the thread; queued requests end with a 503

  // Checks what needs the model (context, token ids, pack names, keep_k), tokenizes and queues the request.
  // Throws ApiError; a full queue or a stopping engine is a 503.
  std::shared_ptr<Job> submit(const CompletionRequest& request);

  const ModelConfig& config() const { return config_; }
  std::vector<std::string> pack_names() const;
  const ChatTemplate& chat_template() const { return template_; }
  const EngineStats& stats() const { return stats_; }
  std::map<std::string, int64_t> requests_by_subset() const { return by_subset_.snapshot(); }
  size_t queue_length() const;
  // Nothing queued and nothing running.
  bool idle() const;
  // Refuses new requests (503) from now on; what is queued still runs.
  void stop_accepting() { accepting_ = false; }
  int64_t experts_loaded() const;
  int64_t kv_cache_bytes() const { return kv_bytes_; }
  ExpertCacheStats expert_cache_stats() const { return cache_.stats(); }
  // The weights, for reports of their memory: read only while idle().
  const InferWeights& weights() const { return *weights_; }

 private:
  void loop();
  void run(Job& job);
  SubsetEntry resolve_named(const std::string& name) const;
  SubsetEntry remember(ExpertSubset subset, const std::string& source);
  void apply(const SubsetEntry& entry);
  void check_keep_k(int64_t keep_k) const;
  // The experts a subset pins (routed kept + shared per layer; every expert for "all"); of one layer's
  // choice.
  std::vector<ExpertKey> keys_of(const ExpertSubset* subset) const;
  std::vector<ExpertKey> layer_keys(int64_t l, const std::vector<int32_t>& routed) const;
  // Refuses (503) a request whose experts cannot fit the budget: a known subset, or the most a choice of
  // keep_k per layer can take.
  void check_budget(const SubsetEntry& entry) const;
  void check_budget(int64_t keep_k) const;
  void pin(ExpertPins& pins, const std::vector<ExpertKey>& keys, const std::string& what) const;
  const Tensor& prefill(Job& job, SubsetEntry& entry, int64_t& cached, ExpertPins& pins);

  std::unique_ptr<InferWeights> weights_;
  const ModelConfig config_;
  ExpertCache cache_;
  const Tokenizer tokenizer_;
  const EngineOptions options_;
  const ChatTemplate template_;
  std::optional<int32_t> eos_;

  mutable std::mutex subsets_mutex_;
  std::map<std::string, SubsetEntry> subsets_;  // packs and remembered choices
  std::deque<std::string> remembered_order_;

  mutable std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::atomic<bool> accepting_{true};

  // Engine thread only.
  std::unique_ptr<Decoder> decoder_;
  std::vector<int32_t> cached_tokens_;  // what the decoder's cache holds
  std::string cached_subset_, applied_subset_ = "all";
  std::atomic<int64_t> kv_bytes_{0}, experts_loaded_{0};

  EngineStats stats_;
  SubsetCounts by_subset_;
  std::thread thread_;
};

}  // namespace emo::serve
