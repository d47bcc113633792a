#include "train/trainer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "model/forward_state.h"
#include "tokenizer/tokenizer.h"
#include "train/distributed.h"
#include "train/loss_curve.h"
#include "train/schedule.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_stop_signal{0};

void on_stop_signal(int signal) {
  g_stop_signal.store(signal);
}

// SIGINT / SIGTERM during run(): finish the step, write a checkpoint, stop. Restores the handlers on exit.
struct SignalGuard {
  SignalGuard() {
    g_stop_signal.store(0);
    previous_int = std::signal(SIGINT, on_stop_signal);
    previous_term = std::signal(SIGTERM, on_stop_signal);
  }
  ~SignalGuard() {
    std::signal(SIGINT, previous_int);
    std::signal(SIGTERM, previous_term);
  }
  void (*previous_int)(int);
  void (*previous_term)(int);
};

// Seed of micro-batch `index` of a step: independent of how micro-batches are spread over ranks, so 1 and N
// ranks draw the same EMO pool sizes.
uint64_t micro_batch_seed(uint64_t step_seed, int64_t index) {
  uint64_t z = step_seed + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double global_grad_norm(const std::vector<Param>& params) {
  double sum = 0;
  for (const Param& p : params) {
    const float* g = p.grad->data();
    for (int64_t i = 0; i < p.grad->size(); ++i) sum += static_cast<double>(g[i]) * g[i];
  }
  return std::sqrt(sum);
}

std::string fixed(double value, int digits) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(digits);
  out << value;
  return out.str();
}

// Splits `rows` rows of a batch into micro-batches of `micro_rows`.
std::vector<Batch> split_rows(const Batch& batch, int64_t micro_rows) {
  std::vector<Batch> out;
  const int64_t T = batch.T;
  for (int64_t r = 0; r < batch.B; r += micro_rows) {
    int64_t rows = std::min(micro_rows, batch.B - r);
    Batch mb;
    mb.B = rows;
    mb.T = T;
    mb.tokens.assign(batch.tokens.begin() + r * T, batch.tokens.begin() + (r + rows) * T);
    mb.targets.assign(batch.targets.begin() + r * T, batch.targets.begin() + (r + rows) * T);
    mb.doc_ids.assign(batch.doc_ids.begin() + r * T, batch.doc_ids.begin() + (r + rows) * T);
    mb.attention_doc_ids.assign(batch.attention_doc_ids.begin() + r * T,
                                batch.attention_doc_ids.begin() + (r + rows) * T);
    out.push_back(std::move(mb));
  }
  return out;
}

}  // namespace

nlohmann::json StepMetrics::to_json() const {
  // Per-expert load, 4 decimals: enough to see dead or hogging experts, short enough for a line per step.
  nlohmann::json load = nlohmann::json::array();
  for (const auto& layer : usage.load) {
    nlohmann::json shares = nlohmann::json::array();
    for (double share : layer) shares.push_back(std::round(share * 1e4) / 1e4);
    load.push_back(shares);
  }
  return {{"step", step},
          {"loss", loss},
          {"ce", ce},
          {"output_z", output_z},
          {"lb", lb},
          {"router_z", router_z},
          {"lr", lr},
          {"grad_norm", grad_norm},
          {"tokens", tokens},
          {"tokens_per_second", tokens_per_second},
          {"step_seconds", step_seconds},
          {"experts_used", usage.distinct_experts},
          {"expert_load_max_over_mean", usage.load_max_over_mean},
          {"pool_entropy", usage.pool_entropy},
          {"expert_load", load}};
}

Trainer::Trainer(TrainConfig config, TrainOptions options)
    : config_(std::move(config)), options_(std::move(options)), rng_(config_.run.seed, 0x7a11) {
  setup();
}

Trainer::~Trainer() = default;

// The datasets, tokenizer and checkpoint the run reads (synthetic sources are no paths).
std::vector<std::string> Trainer::read_paths() const {
  std::vector<std::string> paths = options_.inputs;
  auto add_source = [&](const std::string& spec) {
    if (spec.rfind("synthetic", 0) != 0) paths.push_back(spec.substr(0, spec.find('#')));
  };
  add_source(config_.data.train);
  for (const auto& [domain, spec] : config_.data.validation) add_source(spec);
  paths.push_back(config_.data.tokenizer);
  paths.push_back(options_.init_from);
  return paths;
}

void Trainer::setup() {
  const Distributed& dist = Distributed::instance();
  // Before anything is read or written: a run directory that is not ours, or in use, stops the run here.
  if (!options_.out_dir.empty())
    run_directory_ = std::make_unique<RunDirectory>(options_.out_dir, read_paths());
  // Vocabulary and EOS: from the tokenizer when the config names one. The embedding gets the tokenizer's
  // vocabulary rounded up to a multiple of 128 rows (dolma2: 100278 -> 100352, as the released models).
  if (!config_.data.tokenizer.empty() && (config_.model.vocab == 0 || config_.data.eos_id < 0)) {
    Tokenizer tokenizer = Tokenizer::load(config_.data.tokenizer);
    if (config_.model.vocab == 0) config_.model.vocab = embedding_rows_for_vocab(tokenizer.vocab_size());
    if (config_.data.eos_id < 0) config_.data.eos_id = tokenizer.eos_id();
  }
  if (config_.model.vocab == 0)
    config_.model.vocab = embedding_rows_for_vocab(row_source_vocab(config_.data.train));
  if (config_.model.vocab == 0)
    fail("train", "model.vocab is 0 and neither data.tokenizer nor the dataset gives it");
  if (config_.data.eos_id < 0) {
    // Synthetic documents use the last id as EOS; a dataset stores no EOS, so it must come from somewhere.
    if (config_.data.train.rfind("synthetic", 0) != 0)
      fail("train", cat("data.train ", config_.data.train,
                        " is a dataset: set data.tokenizer (or data.eos_id) so EOS is known"));
    config_.data.eos_id = config_.model.vocab - 1;
  }
  config_.validate();
  const int64_t micro = config_.batch.global_batch_rows / config_.batch.micro_batch_rows;
  EMO_CHECK(micro % dist.size() == 0, "train", "the global batch holds ", micro, " micro-batches, which ",
            dist.size(), " ranks cannot share evenly");

  std::string resume_from;
  if (!options_.init_from.empty()) {
    resume_from = resolve_checkpoint(options_.init_from);
    if (resume_from.empty()) fail_file("train", options_.init_from, "no checkpoint there");
  } else if (options_.resume) {
    resume_from = resolve_checkpoint((fs::path(options_.out_dir) / "checkpoints").string());
    if (resume_from.empty() && dist.is_root())
      log_warn("--resume: no checkpoint in " + options_.out_dir + "; starting from step 0");
  }

  optimizer_ = std::make_unique<AdamW>(config_.optimizer);
  source_ = make_row_source(config_.data.train, source_options(config_.batch.global_batch_rows, false));
  if (!resume_from.empty()) {
    LoadedCheckpoint ckpt = load_checkpoint(resume_from);
    model_ = std::move(ckpt.model);
    params_ = model_->params();
    load_optimizer(resume_from, *optimizer_, params_, ckpt.state.step);
    state_ = ckpt.state;
    source_->restore(state_.data);
    rng_.restore(state_.rng_state, state_.rng_inc);
    last_checkpoint_ = resume_from;
    if (dist.is_root()) log_info("resuming from " + resume_from + " at step " + std::to_string(state_.step));
  } else {
    model_ = std::make_unique<Model>(config_.model_config());
    model_->init_weights(config_.run.seed);
    params_ = model_->params();
  }
  model_->zero_grads();

  // Validation rows: the first validation_rows rows of each domain, each rank holding its share.
  for (const auto& [domain, spec] : config_.data.validation) {
    const int64_t rows_per_call = config_.batch.micro_batch_rows * dist.size();
    auto source = make_row_source(spec, source_options(rows_per_call, true));
    Batch rows;
    for (int64_t done = 0; done < config_.run.validation_rows && source->next(rows); done += rows_per_call)
      validation_[domain].push_back(std::move(rows));
    if (validation_[domain].empty())
      fail("train", cat("validation set '", domain, "' (", spec, ") holds no rows"));
  }
  if (dist.is_root() && !options_.out_dir.empty()) {
    fs::create_directories(fs::path(options_.out_dir) / "checkpoints");
    atomic_write_file((fs::path(options_.out_dir) / "train_config.json").string(),
                      config_.to_json().dump(2) + "\n");
    truncate_metrics_after(state_.step);
  }
}

RowSourceOptions Trainer::source_options(int64_t global_rows, bool single_pass) const {
  const Distributed& dist = Distributed::instance();
  RowSourceOptions o;
  o.row_length = config_.batch.row_length;
  o.global_batch_rows = global_rows;
  o.rank = dist.rank();
  o.world_size = dist.size();
  o.seed = config_.run.seed + (single_pass ? 1 : 0);  // synthetic validation: documents unseen in training
  o.vocab = config_.model.vocab;
  o.eos_id = static_cast<int32_t>(config_.data.eos_id);
  o.single_pass = single_pass;
  return o;
}

std::vector<Batch> Trainer::next_micro_batches(int64_t* micro_batches_in_global_batch) {
  Batch rows;
  if (!source_->next(rows)) fail("train", "the training data ended (it should cycle through epochs)");
  *micro_batches_in_global_batch = config_.batch.global_batch_rows / config_.batch.micro_batch_rows;
  return split_rows(rows, config_.batch.micro_batch_rows);
}

StepMetrics Trainer::train_step(const std::vector<Batch>& micro_batches,
                                int64_t micro_batches_in_global_batch) {
  const Distributed& dist = Distributed::instance();
  Timer timer;
  const bool global_scope = config_.loss.lb_scope == "global";
  const LossWeights weights = config_.loss_weights();
  const RoutingOptions routing = [&] {
    RoutingOptions r = config_.routing_options(true);
    r.intra_document_attention = config_.routing.intra_document_attention;
    return r;
  }();
  const uint64_t step_seed = rng_.next_u64();
  // Index of this rank's i-th micro-batch within the global batch (rank r holds a contiguous share).
  auto global_index = [&](size_t i) {
    return static_cast<int64_t>(micro_batches.size()) * dist.rank() + static_cast<int64_t>(i);
  };

  model_->zero_grads();
  std::vector<std::unique_ptr<ForwardState>> states;
  std::vector<std::vector<std::vector<double>>> own_counts;
  std::vector<std::vector<double>> step_counts;
  int64_t local_tokens = 0;
  double local_label_tokens = 0;  // positions with a target: the divisor G of the load balancing
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    Rng pool_rng(micro_batch_seed(step_seed, global_index(i)));
    states.push_back(model_->forward(micro_batches[i], routing, &pool_rng));
    own_counts.push_back(model_->expert_counts(*states.back()));
    add_counts(step_counts, own_counts.back());
    local_tokens += micro_batches[i].B * micro_batches[i].T;
    local_label_tokens += static_cast<double>(states.back()->ce.count);
  }
  // The step's counts over all ranks: what global balancing uses and what the usage statistics describe.
  dist.all_reduce_counts(step_counts);
  const int64_t global_tokens = local_tokens * dist.size();
  double global_label_tokens = local_label_tokens;
  dist.all_reduce_sum(&global_label_tokens, 1);

  const float grad_scale = 1.0f / static_cast<float>(micro_batches_in_global_batch);
  // Sums over this rank's micro-batches of (term / micro-batches): ce, output_z, lb, router_z, total, then
  // the usage entropy sum and document count (all-reduced below).
  std::vector<double> sums(7, 0.0);
  for (size_t i = 0; i < states.size(); ++i) {
    const auto* counts = global_scope ? &step_counts : &own_counts[i];
    const int64_t tokens = global_scope ? static_cast<int64_t>(global_label_tokens) : 0;
    LossTerms terms = model_->loss(*states[i], weights, counts, tokens);
    model_->backward(*states[i], weights, counts, tokens, grad_scale);
    const double share = 1.0 / static_cast<double>(micro_batches_in_global_batch);
    sums[0] += terms.ce * share;
    sums[1] += terms.output_z * share;
    sums[2] += terms.lb * share;
    sums[3] += terms.router_z * share;
    sums[4] += terms.total * share;
  }
  std::vector<const ForwardState*> views;
  for (auto& s : states) views.push_back(s.get());
  ExpertUsage usage = expert_usage(views, step_counts);
  sums[5] = usage.pool_entropy * usage.documents;
  sums[6] = usage.documents;
  states.clear();  // free the activations before the optimizer touches memory

  dist.all_reduce_sum(sums.data(), static_cast<int64_t>(sums.size()));
  dist.all_reduce_gradients(params_);
  StepMetrics m;
  m.step = state_.step + 1;
  m.ce = sums[0];
  m.output_z = sums[1];
  m.lb = sums[2];
  m.router_z = sums[3];
  m.loss = sums[4];
  usage.pool_entropy = sums[6] > 0 ? sums[5] / sums[6] : 0;
  usage.documents = sums[6];
  m.usage = usage;
  m.grad_norm = global_grad_norm(params_);
  if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
    std::string last = last_checkpoint_.empty() ? "none (no checkpoint written yet)" : last_checkpoint_;
    fail("train", cat("step ", m.step, ": the loss is ", m.loss, " (gradient norm ", m.grad_norm,
                      "); stopping. Last good checkpoint: ", last));
  }
  const double clip = config_.optimizer.grad_clip;
  const float multiplier =
      clip > 0 && m.grad_norm > clip ? static_cast<float>(clip / (m.grad_norm + 1e-6)) : 1.0f;
  m.lr = learning_rate(config_.schedule, config_.optimizer.lr, state_.step, config_.total_steps());
  optimizer_->step(params_, m.lr, multiplier);

  state_.step += 1;
  state_.tokens += global_tokens;
  m.tokens = state_.tokens;
  m.step_seconds = timer.seconds();
  m.tokens_per_second = static_cast<double>(global_tokens) / std::max(1e-9, m.step_seconds);
  timing_.step_seconds += m.step_seconds;
  return m;
}

std::map<std::string, double> Trainer::validate() {
  const Distributed& dist = Distributed::instance();
  RoutingOptions routing = config_.routing_options(false);
  routing.intra_document_attention = config_.routing.intra_document_attention;
  std::map<std::string, double> out;
  for (auto& [domain, batches] : validation_) {
    double sums[2] = {0, 0};  // ce sum, tokens
    for (const Batch& b : batches) {
      Rng rng(config_.run.seed);
      auto state = model_->forward(b, routing, &rng);
      sums[0] += state->ce.ce;
      sums[1] += static_cast<double>(state->ce.count);
    }
    dist.all_reduce_sum(sums, 2);
    out[domain] = sums[1] > 0 ? sums[0] / sums[1] : 0;
  }
  return out;
}

std::string Trainer::checkpoint() {
  const Distributed& dist = Distributed::instance();
  Timer timer;
  state_.data = source_->state();
  state_.rng_state = rng_.state();
  state_.rng_inc = rng_.inc();
  state_.world_size = dist.size();
  std::string path;
  if (dist.is_root())
    path = save_checkpoint((fs::path(options_.out_dir) / "checkpoints").string(), *model_, *optimizer_,
                           params_, state_, config_, config_.run.keep_last, options_.checkpoint_fault);
  dist.barrier();  // nobody runs ahead of a checkpoint that may yet fail
  if (dist.is_root()) last_checkpoint_ = path;
  timing_.checkpoint_seconds += timer.seconds();
  return path;
}

void Trainer::append_metrics(const nlohmann::json& line) const {
  if (options_.out_dir.empty()) return;
  std::ofstream out(fs::path(options_.out_dir) / "metrics.jsonl", std::ios::app);
  out << line.dump() << "\n";
}

// After a resume, lines of steps beyond the checkpoint (written before a crash) would be duplicated.
void Trainer::truncate_metrics_after(int64_t step) const {
  fs::path path = fs::path(options_.out_dir) / "metrics.jsonl";
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", int64_t{0}) <= step) kept += line + "\n";
  }
  in.close();
  atomic_write_file(path.string(), kept);
}

void Trainer::write_loss_curve() const {
  fs::path metrics = fs::path(options_.out_dir) / "metrics.jsonl";
  LossCurve curve;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;
    int64_t step = j["step"].get<int64_t>();
    if (j.contains("loss")) curve.train.emplace_back(step, j["loss"].get<double>());
    if (j.contains("validation"))
      for (auto& [domain, value] : j["validation"].items())
        curve.validation[domain].emplace_back(step, value.get<double>());
  }
  const std::string svg = loss_curve_svg(curve);
  atomic_write_file((fs::path(options_.out_dir) / "loss_curve.svg").string(), svg);
  if (!last_checkpoint_.empty())
    atomic_write_file((fs::path(last_checkpoint_) / "loss_curve.svg").string(), svg);
}

int64_t Trainer::run() {
  const Distributed& dist = Distributed::instance();
  const bool root = dist.is_root();
  const int64_t total = config_.total_steps();
  const int64_t first = state_.step;
  Timer wall;
  SignalGuard signals;
  if (root)
    log_info(cat("training ", model_->num_params(), " parameters, ", config_.routing.mode, " routing, steps ",
                 first, " -> ", total, ", ", config_.tokens_per_step(), " tokens per step",
                 dist.active() ? cat(", ", dist.size(), " ranks") : std::string()));
  if (root)
    if (const std::string w = warmup_warning(config_.schedule, config_.optimizer.lr, total); !w.empty())
      log_warn("[train] " + w);
  // Counted from this process's first step, so the rate and ETA stay right after a resume.
  Progress progress("train", total - first, "step");
  bool checkpointed = false;
  stop_signal_ = 0;
  while (state_.step < total) {
    Timer data_timer;
    int64_t micro = 0;
    std::vector<Batch> batches = next_micro_batches(&micro);
    timing_.data_seconds += data_timer.seconds();
    StepMetrics m = train_step(batches, micro);
    history_.push_back(m);
    const int64_t step = state_.step;
    if (const std::string w = collapse_watch_.add(step, m.usage.load); root && !w.empty())
      log_warn("[train] " + w);
    const bool last = step == total || (options_.stop_after > 0 && step - first >= options_.stop_after);
    int64_t stop = g_stop_signal.load();
    dist.broadcast(&stop);

    nlohmann::json line = m.to_json();
    bool validate_now =
        !validation_.empty() &&
        ((config_.run.validate_every > 0 && step % config_.run.validate_every == 0) || step == total);
    if (validate_now) {
      Timer t;
      nlohmann::json val;
      for (auto& [domain, loss] : validate()) val[domain] = loss;
      line["validation"] = val;
      timing_.validation_seconds += t.seconds();
      if (root) log_info(cat("step ", step, " validation ", val.dump()));
    }
    if (root && (step % std::max<int64_t>(1, config_.run.log_every) == 0 || validate_now || last))
      append_metrics(line);
    if (options_.on_step) options_.on_step(m);
    if (root && options_.show_progress)
      progress.update(step - first, cat("step ", step, "/", total, " loss ", fixed(m.loss, 4), " lr ",
                                        fixed(m.lr * 1e3, 3), "e-3 |g| ", fixed(m.grad_norm, 3), " ",
                                        human_count(m.tokens_per_second), " tok/s"));
    checkpointed = false;
    if (!options_.out_dir.empty() &&
        (last || stop != 0 ||
         (config_.run.checkpoint_every > 0 && step % config_.run.checkpoint_every == 0))) {
      checkpoint();
      checkpointed = true;
    }
    if (stop != 0) {
      stop_signal_ = static_cast<int>(stop);
      if (root)
        log_warn(cat("stopped by signal ", stop, " after step ", step, "; checkpoint ", last_checkpoint_));
      break;
    }
    if (last) break;
  }
  if (!checkpointed && !options_.out_dir.empty() && state_.step > first) checkpoint();
  if (root && options_.show_progress)
    progress.finish(history_.empty() ? "" : cat("loss ", fixed(history_.back().loss, 4)));
  if (root && !options_.out_dir.empty()) write_loss_curve();
  timing_.total_seconds += wall.seconds();
  return state_.step;
}

}  // namespace emo
