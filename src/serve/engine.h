// The model side of `emo serve`: one engine thread owns the weights and a decoder of --parallel sequence
// slots (each with its own KV cache), and steps the running sequences together (continuous batching). HTTP
// threads call submit() (which checks and tokenizes the request and fails fast with an ApiError) and read
// what the sequence produces from its Job.
//
// A step: finished and cancelled sequences leave (their slot freed, their expert pins released), queued
// requests join free slots, then one Decoder::forward_batch runs one token of every decoding sequence and a
// chunk of the prompt of those still prefilling (at most --prefill-chunk prompt tokens per step in all, so a
// long prompt does not stall the running streams).
//
// Experts per request: every request runs on one subset: "all", a pack registered at start, or one chosen
// by the engine (layerwise, from the prompt or from examples) and remembered under an id the client can send
// back. Each sequence is routed within its own subset in the batched step; the weights themselves stay
// unrestricted (a choice restricts them while it runs, then they are lifted again). Each slot keeps the KV
// cache of its last sequence: a request on the same subset whose prompt shares a prefix with a free slot's
// cached tokens goes to that slot and reuses it (Decoder::truncate to the common prefix).
//
// Memory: the experts a sequence may use are pinned in an ExpertCache (infer/expert_cache.h) while it runs;
// with a budget (--memory-budget) the least recently used unpinned experts are dropped to make room. A
// request whose experts do not fit beside those the running sequences pin waits in the queue; one that
// cannot fit the budget even alone is refused at submit with a 503 (code "memory_budget").
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
#include "infer/sampler.h"
#include "infer/text_stream.h"
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
  std::optional<uint64_t> waiting_since;             // engine: the step it first found no room

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
  int64_t parallel = 4;       // sequences decoded together (slots); 1: one request at a time
  // Prompt tokens prefilled per engine step, over all the sequences still prefilling: a long prompt joins
  // in chunks between decode steps instead of stalling the running streams for its whole prefill.
  int64_t prefill_chunk = 64;
};

// Counters for /metrics.
struct EngineStats {
  std::atomic<int64_t> requests{0}, requests_failed{0}, requests_cancelled{0};
  std::atomic<int64_t> prompt_tokens{0}, cached_prompt_tokens{0}, generated_tokens{0};
  std::atomic<int64_t> prefix_reuses{0}, fresh_prefills{0}, subsets_chosen{0};
  std::atomic<int64_t> running{0};                   // sequences in slots (prefilling or decoding)
  std::atomic<int64_t> steps{0}, step_sequences{0};  // batched steps, and the sequences they ran
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
  int64_t slots() const { return options_.parallel; }
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
  // A request in a slot: from its prompt's first chunk to its last token.
  struct Sequence {
    Sequence(std::shared_ptr<Job> job, ExpertCache& cache) : job(std::move(job)), pins(cache) {}
    std::shared_ptr<Job> job;
    SubsetEntry entry;
    ExpertPins pins;          // released when it leaves
    size_t prefilled = 0;     // prompt tokens in the slot's cache
    int32_t last_token = -1;  // sampled, to be run at the next step
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<TextStream> text;
    CompletionResult result;
  };
  struct Slot {
    std::unique_ptr<Sequence> running;   // null: free
    std::vector<int32_t> cached_tokens;  // what the slot's KV cache holds
    std::string cached_subset;           // the subset they ran on
    uint64_t last_used = 0;              // step of its last sequence's end (free slots reused oldest first)
  };
  // A subset's experts do not fit beside those pinned by the running sequences (the request waits).
  struct NoRoom {};

  void loop();
  // Takes queued requests into free slots (in queue order; one that does not fit yet stays queued).
  void admit();
  // Starts `job` in a free slot; false (nothing changed) when its experts do not fit yet.
  bool start(const std::shared_ptr<Job>& job);
  // The subset of a request without one, chosen here (pins taken layer by layer into `pins`).
  SubsetEntry choose(Job& job, ExpertPins& pins);
  size_t pick_slot(const std::string& subset, const std::vector<int32_t>& prompt, size_t& common) const;
  void step();
  // A sampled token: true when the sequence is done.
  bool produce(Sequence& seq, int32_t token);
  void end(Slot& slot);
  void fail_running(const ApiError& error);
  void update_gauges();
  SubsetEntry resolve_named(const std::string& name) const;
  SubsetEntry remember(ExpertSubset subset, const std::string& source);
  void lift_restriction();
  void check_keep_k(int64_t keep_k) const;
  // The experts a subset pins (routed kept + shared per layer; every expert for "all"); of one layer's
  // choice.
  std::vector<ExpertKey> keys_of(const ExpertSubset* subset) const;
  std::vector<ExpertKey> layer_keys(int64_t l, const std::vector<int32_t>& routed) const;
  // Refuses (503) a request whose experts cannot fit the budget: a known subset, or the most a choice of
  // keep_k per layer can take.
  void check_budget(const SubsetEntry& entry) const;
  void check_budget(int64_t keep_k) const;
  // Pins the keys; throws NoRoom when others' pins are in the way, the 503 when nothing else is pinned.
  void pin(ExpertPins& pins, const std::vector<ExpertKey>& keys, const std::string& what) const;

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
  std::deque<std::shared_ptr<Job>> queue_;  // a job leaves it once it runs in a slot (or has failed)
  bool stopping_ = false;
  std::atomic<bool> accepting_{true};

  // Engine thread only.
  std::unique_ptr<Decoder> decoder_;
  std::vector<Slot> slots_;
  uint64_t step_count_ = 0;
  std::atomic<int64_t> kv_bytes_{0}, experts_loaded_{0};

  EngineStats stats_;
  SubsetCounts by_subset_;
  std::thread thread_;
};

}  // namespace emo::serve
