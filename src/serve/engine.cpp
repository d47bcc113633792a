#include "serve/engine.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>

#include "core/error.h"
#include "core/log.h"
#include "infer/generate.h"
#include "infer/sampler.h"

namespace emo::serve {
namespace {

// Engine steps a request that does not fit beside the running sequences' experts lets later ones that fit
// go first; after it, the queue waits for it.
constexpr uint64_t kPatienceSteps = 256;

[[noreturn]] void unavailable(const std::string& message) {
  reject(503, "", message, "server_busy", "server_error");
}

[[noreturn]] void over_budget(const std::string& what, int64_t bytes, int64_t budget) {
  reject(503, "experts",
         cat("the experts of this request (", what, ", ", human_bytes(static_cast<double>(bytes)),
             ") do not fit the server's --memory-budget of ", human_bytes(static_cast<double>(budget)),
             " for the experts held at once"),
         "memory_budget", "server_error");
}

// An id for a chosen subset: the same choice gets the same id (FNV-1a over the kept indices).
std::string subset_id(const ExpertSubset& subset) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](int64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ static_cast<uint64_t>((v >> (8 * i)) & 0xFF)) * 1099511628211ull;
  };
  mix(subset.keep_k);
  for (const auto& layer : subset.routed) {
    mix(-1);
    for (int32_t e : layer) mix(e);
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "auto-%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

nlohmann::json SubsetEntry::to_json() const {
  nlohmann::json j = {{"id", id}, {"source", source}};
  j["keep_k"] = subset ? nlohmann::json(subset->keep_k) : nlohmann::json(nullptr);
  return j;
}

void SubsetCounts::add(const std::string& id) {
  std::lock_guard lock(mutex_);
  ++counts_[id];
}

std::map<std::string, int64_t> SubsetCounts::snapshot() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

Job::Update Job::take(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !pending_.empty() || done_; });
  Update update;
  update.text = std::move(pending_);
  pending_.clear();
  if (done_ && !taken_done_) {
    taken_done_ = true;
    update.done = true;
    update.result = result_;
    update.error = error_;
  } else if (done_) {
    update.done = true;
  }
  return update;
}

void Job::emit(const std::string& text) {
  if (text.empty()) return;
  std::lock_guard lock(mutex_);
  pending_ += text;
  changed_.notify_all();
}

void Job::finish(CompletionResult result) {
  std::lock_guard lock(mutex_);
  result_ = std::move(result);
  done_ = true;
  changed_.notify_all();
}

void Job::fail(ApiError error) {
  std::lock_guard lock(mutex_);
  error_ = std::move(error);
  done_ = true;
  changed_.notify_all();
}

Engine::Engine(std::unique_ptr<InferWeights> weights, Tokenizer tokenizer, EngineOptions options)
    : weights_(std::move(weights)),
      config_(weights_->config()),
      cache_(*weights_, options.memory_budget),
      tokenizer_(std::move(tokenizer)),
      options_(std::move(options)),
      template_(ChatTemplate::load(options_.chat_template)) {
  eos_ = static_cast<int32_t>(config_.eos_token_id.value_or(tokenizer_.eos_id()));
  if (options_.keep_k > 0) {
    try {
      check_keep_k(options_.keep_k);
    } catch (const ApiError& e) {
      fail("serve", "--keep-k: " + e.message);
    }
  }
  subsets_["all"] = {"all", "all", nullptr};
  for (const auto& [name, path] : options_.packs) {
    EMO_CHECK(!name.empty() && name != "all" && name != "auto" && name.rfind("auto-", 0) != 0, "serve",
              "--pack ", name, "=", path,
              ": the name must not be empty, 'all', 'auto' or start with 'auto-'");
    auto subset = std::make_shared<const ExpertSubset>(ExpertSubset::load(path, config_));
    subsets_[name] = {name, "pack", subset};
  }
  if (options_.memory_budget > 0 && !cache_.fits(keys_of(nullptr)))
    log_warn(cat("serve: --memory-budget ", human_bytes(static_cast<double>(options_.memory_budget)),
                 " is less than all experts (",
                 human_bytes(static_cast<double>(cache_.bytes_of(keys_of(nullptr)))),
                 "): requests on \"all\" will get a 503",
                 options_.keep_k > 0 ? "" : " (also those without \"experts\": set --keep-k)"));
  EMO_CHECK(options_.parallel >= 1, "serve", "--parallel ", options_.parallel, ": must be at least 1");
  EMO_CHECK(options_.prefill_chunk >= 1, "serve", "--prefill-chunk ", options_.prefill_chunk,
            ": must be at least 1");
  decoder_ = std::make_unique<Decoder>(*weights_, config_.max_position_embeddings, options_.parallel);
  slots_.resize(static_cast<size_t>(options_.parallel));
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(queue_mutex_);
    stopping_ = true;
    queue_changed_.notify_all();
  }
  thread_.join();
  ApiError e;
  e.status = 503;
  e.type = "server_error";
  e.message = "the server is shutting down";
  fail_running(e);
  for (auto& job : queue_) job->fail(e);
}

std::vector<std::string> Engine::pack_names() const {
  std::lock_guard lock(subsets_mutex_);
  std::vector<std::string> names;
  for (const auto& [name, entry] : subsets_)
    if (entry.source == "pack") names.push_back(name);
  return names;
}

size_t Engine::queue_length() const {
  std::lock_guard lock(queue_mutex_);
  return queue_.size();
}

bool Engine::idle() const {
  std::lock_guard lock(queue_mutex_);
  return queue_.empty() && stats_.running == 0;
}

int64_t Engine::experts_loaded() const {
  return experts_loaded_;
}

void Engine::check_keep_k(int64_t keep_k) const {
  if (!config_.is_moe()) reject(400, "experts", "the model is dense: it has no experts to choose");
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    if (keep_k > config_.experts_in_layer(l))
      reject(400, "experts.keep_k",
             cat("keep_k ", keep_k, " exceeds the ", config_.experts_in_layer(l), " experts of layer ", l),
             "invalid_value");
    if (keep_k <= config_.shared_in_layer(l))
      reject(400, "experts.keep_k", cat("keep_k ", keep_k, " keeps no routed expert of layer ", l),
             "invalid_value");
  }
}

std::vector<ExpertKey> Engine::layer_keys(int64_t l, const std::vector<int32_t>& routed) const {
  std::vector<ExpertKey> keys;
  if (!config_.is_moe()) return keys;
  for (int32_t e : routed) keys.push_back({static_cast<int32_t>(l), e});
  for (int64_t e = config_.routed_in_layer(l); e < config_.experts_in_layer(l); ++e)
    keys.push_back({static_cast<int32_t>(l), static_cast<int32_t>(e)});
  return keys;
}

std::vector<ExpertKey> Engine::keys_of(const ExpertSubset* subset) const {
  std::vector<ExpertKey> keys;
  if (!config_.is_moe()) return keys;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    std::vector<int32_t> routed;
    if (subset)
      routed = subset->routed[l];
    else
      for (int32_t e = 0; e < config_.routed_in_layer(l); ++e) routed.push_back(e);
    for (ExpertKey k : layer_keys(l, routed)) keys.push_back(k);
  }
  return keys;
}

void Engine::check_budget(const SubsetEntry& entry) const {
  const std::vector<ExpertKey> keys = keys_of(entry.subset.get());
  if (cache_.fits(keys)) return;
  over_budget(cat(entry.source == "pack" ? "pack '" + entry.id + "'" : "'" + entry.id + "'", ": ",
                  keys.size(), " experts"),
              cache_.bytes_of(keys), options_.memory_budget);
}

void Engine::check_budget(int64_t keep_k) const {
  if (options_.memory_budget <= 0 || !config_.is_moe()) return;
  int64_t most = 0;  // the shared experts and the largest keep_k - n_s routed ones of every layer
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    std::vector<int64_t> routed;
    for (int32_t e = 0; e < config_.routed_in_layer(l); ++e)
      routed.push_back(cache_.bytes_of({{static_cast<int32_t>(l), e}}));
    std::sort(routed.rbegin(), routed.rend());
    const int64_t shared = config_.shared_in_layer(l);
    for (int64_t i = 0; i < keep_k - shared; ++i) most += routed[i];
    most += cache_.bytes_of(layer_keys(l, {}));
  }
  if (most > options_.memory_budget)
    over_budget(cat(keep_k, " experts per layer chosen for it"), most, options_.memory_budget);
}

void Engine::pin(ExpertPins& pins, const std::vector<ExpertKey>& keys, const std::string& what) const {
  if (pins.add(keys)) return;
  // submit() checked that the request fits alone: what is in the way is pinned by the running sequences
  // (or by this one's earlier layers, for a choice), and goes when they end.
  if (!cache_.fits(keys)) over_budget(what, cache_.bytes_of(keys), options_.memory_budget);
  throw NoRoom{};
}

SubsetEntry Engine::resolve_named(const std::string& name) const {
  std::lock_guard lock(subsets_mutex_);
  auto it = subsets_.find(name);
  if (it == subsets_.end()) {
    std::string known;
    for (const auto& [n, e] : subsets_)
      if (e.source != "prompt" && e.source != "examples") known += (known.empty() ? "" : ", ") + n;
    reject(400, "experts",
           "unknown expert pack or subset id '" + name + "' (packs: " + known +
               "; ids of chosen subsets are remembered for a while)",
           "unknown_pack");
  }
  return it->second;
}

SubsetEntry Engine::remember(ExpertSubset subset, const std::string& source) {
  const std::string id = subset_id(subset);
  std::lock_guard lock(subsets_mutex_);
  auto it = subsets_.find(id);
  if (it != subsets_.end()) return it->second;
  SubsetEntry entry{id, source, std::make_shared<const ExpertSubset>(std::move(subset))};
  subsets_[id] = entry;
  remembered_order_.push_back(id);
  while (remembered_order_.size() > options_.remembered_subsets) {
    subsets_.erase(remembered_order_.front());
    remembered_order_.pop_front();
  }
  ++stats_.subsets_chosen;
  return entry;
}

std::shared_ptr<Job> Engine::submit(const CompletionRequest& request) {
  if (!accepting_) unavailable("the server is shutting down");
  auto job = std::make_shared<Job>();
  job->request = request;
  if (request.chat) {
    job->prompt = template_.render(request.messages, tokenizer_);
    job->stop = template_.stop;
  } else if (request.prompt_text) {
    job->prompt = tokenizer_.encode(*request.prompt_text);
  } else {
    job->prompt = request.prompt_tokens;
    for (int32_t t : job->prompt)
      if (t >= config_.vocab_size)
        reject(400, "prompt",
               cat("'prompt' holds the token id ", t, ", outside the vocabulary of ", config_.vocab_size));
  }
  for (const std::string& s : request.stop) job->stop.push_back(s);
  const auto prompt_length = static_cast<int64_t>(job->prompt.size());
  const int64_t context = config_.max_position_embeddings;
  if (prompt_length == 0) reject(400, request.chat ? "messages" : "prompt", "the prompt encodes to no token");
  if (prompt_length >= context)
    reject(400, request.chat ? "messages" : "prompt",
           cat("This model's maximum context length is ", context, " tokens. However, your prompt holds ",
               prompt_length, " tokens (one more is needed to generate)."),
           "context_length_exceeded");
  const int64_t room = context - prompt_length;
  job->max_tokens = request.max_tokens.value_or(request.chat ? room : 16);
  if (job->max_tokens > room)
    reject(400, "max_tokens",
           cat("This model's maximum context length is ", context, " tokens. However, you requested ",
               prompt_length + job->max_tokens, " tokens (", prompt_length, " in the prompt, ",
               job->max_tokens, " for the completion)."),
           "context_length_exceeded");

  const ExpertsChoice& choice = request.experts;
  switch (choice.kind) {
    case ExpertsChoice::Kind::kDefault:
      if (choice.name == "all" || options_.keep_k <= 0)
        job->subset = resolve_named("all");
      else
        job->choose_keep_k = options_.keep_k;
      break;
    case ExpertsChoice::Kind::kNamed:
      job->subset = resolve_named(choice.name);
      break;
    case ExpertsChoice::Kind::kAuto:
    case ExpertsChoice::Kind::kExamples: {
      job->choose_keep_k = choice.keep_k > 0 ? choice.keep_k : options_.keep_k;
      if (job->choose_keep_k <= 0)
        reject(400, "experts.keep_k",
               "'experts' chooses a subset but neither 'experts.keep_k' nor the server's --keep-k is set",
               "missing_required_parameter");
      check_keep_k(job->choose_keep_k);
      if (choice.examples.size() > options_.max_examples)
        reject(400, "experts.examples", cat("'experts.examples' holds more than ", options_.max_examples));
      for (const std::string& e : choice.examples) {
        std::vector<int32_t> tokens = tokenizer_.encode(e);
        if (static_cast<int64_t>(tokens.size()) > context) tokens.resize(static_cast<size_t>(context));
        job->example_tokens.push_back(std::move(tokens));
      }
      break;
    }
  }
  if (job->subset)
    check_budget(*job->subset);
  else
    check_budget(job->choose_keep_k);

  std::lock_guard lock(queue_mutex_);
  if (stopping_) unavailable("the server is shutting down");
  if (queue_.size() >= options_.max_queue)
    unavailable(cat("the queue is full (", options_.max_queue, " waiting)"));
  queue_.push_back(job);
  queue_changed_.notify_all();
  return job;
}

void Engine::loop() {
  while (true) {
    {
      std::unique_lock lock(queue_mutex_);
      queue_changed_.wait(lock, [&] { return stopping_ || !queue_.empty() || stats_.running > 0; });
      if (stopping_) return;
    }
    for (Slot& slot : slots_)
      if (slot.running && slot.running->job->cancelled()) {
        ++stats_.requests_cancelled;
        end(slot);
      }
    admit();
    if (stats_.running == 0) continue;
    try {
      step();
    } catch (const std::exception& e) {
      ApiError error;
      error.status = 500;
      error.type = "server_error";
      error.message = e.what();
      fail_running(error);  // their caches may be half-written: those slots start from nothing
    }
    ++step_count_;
    update_gauges();
  }
}

void Engine::admit() {
  std::vector<std::shared_ptr<Job>> waiting;
  {
    std::lock_guard lock(queue_mutex_);
    waiting.assign(queue_.begin(), queue_.end());
  }
  std::vector<const Job*> gone;  // started or failed
  for (const std::shared_ptr<Job>& job : waiting) {
    const bool free_slot =
        std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.running; });
    if (!free_slot) break;
    if (job->cancelled()) {
      ++stats_.requests_cancelled;
      job->fail(
          ApiError{499, "the client went away before the request ran", "server_error", "", "cancelled"});
      gone.push_back(job.get());
      continue;
    }
    try {
      if (start(job)) {
        gone.push_back(job.get());
        continue;
      }
      // Later requests that fit may go first, but not for ever: after kPatienceSteps the oldest waiting one
      // holds the queue until the running sequences' pins make room for it.
      if (!job->waiting_since) job->waiting_since = step_count_;
      if (step_count_ - *job->waiting_since >= kPatienceSteps) break;
    } catch (const ApiError& e) {
      lift_restriction();
      ++stats_.requests;
      ++stats_.requests_failed;
      job->fail(e);
      gone.push_back(job.get());
    } catch (const std::exception& e) {
      lift_restriction();
      ++stats_.requests;
      ++stats_.requests_failed;
      job->fail(ApiError{500, e.what(), "server_error", "", ""});
      gone.push_back(job.get());
    }
  }
  std::lock_guard lock(queue_mutex_);
  std::erase_if(queue_, [&](const std::shared_ptr<Job>& job) {
    return std::find(gone.begin(), gone.end(), job.get()) != gone.end();
  });
}

bool Engine::start(const std::shared_ptr<Job>& job) {
  auto seq = std::make_unique<Sequence>(job, cache_);
  try {
    if (job->subset) {
      seq->entry = *job->subset;
      pin(seq->pins, keys_of(seq->entry.subset.get()), "'" + seq->entry.id + "'");
    } else {
      seq->entry = choose(*job, seq->pins);
    }
  } catch (const NoRoom&) {
    lift_restriction();
    return false;  // the pins taken so far go with seq
  }
  size_t common = 0;
  const size_t index = pick_slot(seq->entry.id, job->prompt, common);
  Slot& slot = slots_[index];
  // At least the last prompt token is run again: its logits are not kept.
  if (common == job->prompt.size()) --common;
  decoder_->truncate(static_cast<int64_t>(common), static_cast<int64_t>(index));
  slot.cached_tokens.resize(common);
  slot.cached_subset = seq->entry.id;
  if (common > 0)
    ++stats_.prefix_reuses;
  else
    ++stats_.fresh_prefills;
  stats_.prompt_tokens += static_cast<int64_t>(job->prompt.size());
  stats_.cached_prompt_tokens += static_cast<int64_t>(common);
  by_subset_.add(seq->entry.id);

  seq->prefilled = common;
  SamplingOptions sampling = job->request.sampling;
  if (!job->request.seeded) sampling.seed = std::random_device{}();
  seq->sampler = std::make_unique<Sampler>(sampling);
  seq->text = std::make_unique<TextStream>(job->stop);
  seq->result.prompt_tokens = static_cast<int64_t>(job->prompt.size());
  seq->result.cached_tokens = static_cast<int64_t>(common);
  seq->result.finish_reason = "length";
  slot.running = std::move(seq);
  ++stats_.requests;
  ++stats_.running;
  return true;
}

SubsetEntry Engine::choose(Job& job, ExpertPins& pins) {
  // Each layer's choice is pinned before its experts are read; the weights stay restricted to the choice
  // while it runs (the other sequences do not step meanwhile) and are lifted after.
  auto pin_layer = [&](int64_t l, const std::vector<int32_t>& routed) {
    pin(pins, layer_keys(l, routed), cat("layer ", l, "'s chosen experts"));
  };
  SubsetEntry entry;
  if (!job.example_tokens.empty()) {
    entry = remember(
        select_layerwise(*weights_, job.example_tokens, job.choose_keep_k, "request examples", pin_layer),
        "examples");
  } else {
    // A decoder of its own for the choice: the prompt then runs again in the request's slot, in chunks
    // between the steps of the others, on the chosen subset (the same values: layer l's choice is made
    // before layer l's experts run).
    Decoder chooser(*weights_, static_cast<int64_t>(job.prompt.size()));
    entry = remember(
        select_layerwise(*weights_, {&chooser}, {job.prompt}, job.choose_keep_k, "prompt", pin_layer),
        "prompt");
  }
  lift_restriction();
  return entry;
}

// A free slot for a request: the one whose cache holds the longest prefix of its prompt on its subset, else
// the one left longest ago.
size_t Engine::pick_slot(const std::string& subset, const std::vector<int32_t>& prompt,
                         size_t& common) const {
  size_t best = slots_.size(), oldest = slots_.size();
  common = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& slot = slots_[i];
    if (slot.running) continue;
    if (oldest == slots_.size() || slot.last_used < slots_[oldest].last_used) oldest = i;
    if (slot.cached_subset != subset) continue;
    const size_t limit = std::min(slot.cached_tokens.size(), prompt.size());
    size_t shared = 0;
    while (shared < limit && slot.cached_tokens[shared] == prompt[shared]) ++shared;
    if (shared > common) {
      common = shared;
      best = i;
    }
  }
  return best < slots_.size() ? best : oldest;
}

void Engine::step() {
  std::vector<BatchEntry> entries;
  std::vector<size_t> entry_slot;  // [entries] whose
  int64_t prefill_left = options_.prefill_chunk;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Sequence* seq = slots_[i].running.get();
    if (!seq) continue;
    BatchEntry entry;
    entry.slot = static_cast<int64_t>(i);
    entry.kept = seq->entry.subset ? &seq->entry.subset->routed : nullptr;
    const std::vector<int32_t>& prompt = seq->job->prompt;
    if (seq->prefilled < prompt.size()) {
      const auto n = std::min<size_t>(static_cast<size_t>(prefill_left), prompt.size() - seq->prefilled);
      if (n == 0) continue;  // this step's prompt chunk went to sequences before it
      const auto first = prompt.begin() + static_cast<std::ptrdiff_t>(seq->prefilled);
      entry.tokens.assign(first, first + static_cast<std::ptrdiff_t>(n));
      prefill_left -= static_cast<int64_t>(n);
    } else {
      entry.tokens = {seq->last_token};
    }
    entries.push_back(std::move(entry));
    entry_slot.push_back(i);
  }
  const Tensor& logits = decoder_->forward_batch(entries);  // [entries, V]
  ++stats_.steps;
  stats_.step_sequences += static_cast<int64_t>(entries.size());
  const int64_t V = config_.vocab_size;
  for (size_t k = 0; k < entries.size(); ++k) {
    Slot& slot = slots_[entry_slot[k]];
    Sequence& seq = *slot.running;
    slot.cached_tokens.insert(slot.cached_tokens.end(), entries[k].tokens.begin(), entries[k].tokens.end());
    if (seq.prefilled < seq.job->prompt.size()) {
      seq.prefilled += entries[k].tokens.size();
      if (seq.prefilled < seq.job->prompt.size()) continue;
    }
    if (produce(seq, seq.sampler->next(logits.data() + static_cast<int64_t>(k) * V, V))) end(slot);
  }
}

bool Engine::produce(Sequence& seq, int32_t token) {
  ++seq.result.completion_tokens;
  ++stats_.generated_tokens;
  if (eos_ && token == *eos_) {
    seq.result.finish_reason = "stop";
    return true;
  }
  seq.job->emit(seq.text->push(tokenizer_.decode({token})));
  if (seq.text->stopped()) {
    seq.result.finish_reason = "stop";
    return true;
  }
  seq.last_token = token;
  return seq.result.completion_tokens >= seq.job->max_tokens;
}

void Engine::end(Slot& slot) {
  std::unique_ptr<Sequence> seq = std::move(slot.running);
  if (!seq->text->stopped()) seq->job->emit(seq->text->finish());
  seq->result.text = seq->text->text();
  seq->result.experts = seq->entry.to_json();
  slot.last_used = step_count_;
  // Before the client hears of the end, so /metrics read after it shows nothing pinned or running.
  seq->pins.release();
  --stats_.running;
  update_gauges();
  seq->job->finish(std::move(seq->result));
}

void Engine::fail_running(const ApiError& error) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    if (!slot.running) continue;
    slot.running->pins.release();
    ++stats_.requests_failed;
    --stats_.running;
    slot.running->job->fail(error);
    slot.running.reset();
    slot.cached_tokens.clear();
    decoder_->reset(static_cast<int64_t>(i));
  }
}

void Engine::update_gauges() {
  int64_t kv = 0;
  for (int64_t s = 0; s < decoder_->slots(); ++s) kv += decoder_->cache(s).bytes_used(decoder_->length(s));
  kv_bytes_ = kv;
  experts_loaded_ = weights_->experts_loaded();
}

void Engine::lift_restriction() {
  if (!config_.is_moe()) return;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l)
    if (weights_->restricted(l)) weights_->keep_all_experts(l);
}

}  // namespace emo::serve
