#include "experiments/reproduce.h"

#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/log.h"
#include "core/machine.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/tokenize_corpus.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "experiments/report.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "select/examples.h"
#include "select/prune.h"
#include "select/selection.h"
#include "select/subset.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

std::string join(const fs::path& a, const std::string& b) {
  return (a / b).string();
}

// The grid's scored cells, saved (atomically) after every new one so an interrupted run loses nothing.
class CellStore {
 public:
  explicit CellStore(std::string path) : path_(std::move(path)) {
    if (!fs::exists(path_)) return;
    const nlohmann::json saved =
        read_json_file(path_);  // named: a range-for over a temporary's member dangles
    for (const auto& j : saved.at("cells")) add_loaded(Cell::from_json(j));
  }
  bool has(const std::string& key) const { return index_.count(key) > 0; }
  void add(const Cell& cell) {
    add_loaded(cell);
    nlohmann::json all = nlohmann::json::array();
    for (const Cell& c : cells_) all.push_back(c.to_json());
    write_json_file(path_, {{"cells", all}}, 1);
  }
  const std::vector<Cell>& cells() const { return cells_; }

 private:
  void add_loaded(const Cell& cell) {
    if (index_.count(cell.key())) return;
    index_[cell.key()] = cells_.size();
    cells_.push_back(cell);
  }
  std::string path_;
  std::vector<Cell> cells_;
  std::map<std::string, size_t> index_;
};

std::vector<std::string> grid_domains(const ReproduceBudget& budget, const data::Dataset& test_set) {
  if (!budget.domains.empty()) return budget.domains;
  std::vector<std::string> domains;
  // Domains without test documents (a tiny corpus) cannot be scored.
  for (const std::string& d : test_set.domain_names()) {
    const int id = test_set.domain_index(d);
    for (int64_t i = 0; i < test_set.num_documents(); ++i)
      if (test_set.domain_of(i) == static_cast<uint32_t>(id)) {
        domains.push_back(d);
        break;
      }
  }
  return domains;
}

TrainConfig model_train_config(const ReproduceBudget& b, const ReproduceData& data, const std::string& mode,
                               const std::vector<std::string>& domains) {
  TrainConfig c;
  c.model.d = b.d;
  c.model.layers = b.layers;
  c.model.heads = b.heads;
  c.model.kv_heads = b.heads;
  c.model.experts = b.experts;
  c.model.top_k = b.top_k;
  c.model.shared_experts = 1;
  // The dense model has the memory of the 12.5% subset: its MLP is that subset's experts side by side.
  c.model.expert_width = mode == "dense" ? b.dense_width() : b.expert_width;
  c.model.max_position = std::max<int64_t>(b.row_length, 1024);
  c.routing.mode = mode;
  c.routing.pool_min = b.pool_min;
  c.routing.pool_max = b.pool_max;
  c.routing.intra_document_attention = true;  // the EMO recipe; the same for every model of the comparison
  c.optimizer.lr = b.lr;
  c.schedule.kind = "cosine";
  c.schedule.warmup_steps = b.warmup_steps;
  c.batch.row_length = b.row_length;
  c.batch.micro_batch_rows = b.micro_batch_rows;
  c.batch.global_batch_rows = b.global_batch_rows;
  c.run.steps = b.train_steps();
  c.run.seed = b.seed;
  c.run.checkpoint_every = std::max<int64_t>(25, c.run.steps / 5);
  c.run.keep_last = 2;
  c.run.validate_every = std::max<int64_t>(25, c.run.steps / 4);
  c.run.validation_rows = 8;
  c.data.train = data.train;
  c.data.tokenizer = data.tokenizer;
  for (const std::string& d : domains) c.data.validation[d] = data.validation + "#" + d;
  return c;
}

int64_t parameter_count(const Model& model) {
  int64_t n = 0;
  for (const std::string& name : model.param_names()) n += model.weight(name).size();
  return n;
}

// Parameters a token passes through: everything but the experts not chosen (top_k of E per layer).
int64_t active_parameter_count(const Model& model) {
  const ModelConfig& c = model.config();
  if (!c.is_moe()) return parameter_count(model);
  const int64_t per_expert = 3 * c.hidden_size * c.intermediate_size;
  int64_t inactive = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    inactive += (c.experts_in_layer(l) - c.num_experts_per_tok) * per_expert;
  return parameter_count(model) - inactive;
}

PerplexityOptions perplexity_options(const ReproduceBudget& b, const std::string& domain) {
  PerplexityOptions p;
  p.seq_len = b.row_length;
  p.batch_rows = 4;
  p.max_tokens = b.eval_tokens_per_domain;
  p.domains = {domain};
  p.intra_document_attention = true;
  return p;
}

// Scores one model on one domain under `routing`: held-out loss and (with questions) multiple choice.
struct DomainScorer {
  const ReproduceBudget& budget;
  const data::Dataset& test_set;
  CellStore& store;
  Progress& progress;
  int64_t& done;

  void loss(const Model& model, Cell cell, const RoutingOptions& routing) {
    cell.metric = "loss";
    if (!store.has(cell.key())) {
      const auto losses = evaluate_domains(model, test_set, routing, perplexity_options(budget, cell.domain));
      EMO_CHECK(!losses.empty(), "reproduce", "domain ", cell.domain, " has no test tokens");
      cell.value = losses[0].loss;
      cell.count = losses[0].tokens;
      store.add(cell);
    }
    progress.update(++done, cat(cell.model, " ", cell.domain, " ", cell.method, " k=", cell.keep_k));
  }

  void multiple_choice(const Model& model, Cell cell, const RoutingOptions& routing,
                       const std::vector<McTokenQuestion>& questions) {
    cell.metric = "mc_acc";
    if (!store.has(cell.key()) && !questions.empty()) {
      const McResult r = evaluate_mc(model, "next-segment/" + cell.domain, questions, routing);
      cell.value = r.accuracy;
      cell.count = r.questions;
      store.add(cell);
      cell.metric = "mc_acc_norm";
      cell.value = r.accuracy_norm;
      store.add(cell);
    }
  }
};

std::unique_ptr<Model> load_final(const std::string& run_dir) {
  const std::string checkpoint = resolve_checkpoint(run_dir);
  EMO_CHECK(!checkpoint.empty(), "reproduce", run_dir, ": no checkpoint");
  return Model::load(checkpoint);
}

RoutingOptions standard_routing() {
  RoutingOptions r;
  r.mode = RoutingMode::kStandard;
  r.training = false;
  r.intra_document_attention = true;
  return r;
}

RoutingOptions subset_routing(const ExpertSubset& subset) {
  RoutingOptions r = subset.routing_options();
  r.training = false;
  r.intra_document_attention = true;
  return r;
}

}  // namespace

ReproduceData reproduce_data_paths(const ReproduceOptions& options) {
  const fs::path data(options.data_dir);
  const fs::path tok = data / cat("tokenizer-", options.budget.vocab_size);
  return {join(data, "corpus"), join(tok, "tokenizer.json"), join(tok, "train.bin"),
          join(tok, "validation.bin"), join(tok, "test.bin")};
}

ReproduceData prepare_data(const ReproduceOptions& options) {
  const ReproduceData paths = reproduce_data_paths(options);
  if (!fs::exists(fs::path(paths.corpus_dir) / "manifest.json")) {
    log_info(cat("reproduce: building the corpus in ", paths.corpus_dir));
    data::CorpusOptions corpus;
    corpus.out_dir = paths.corpus_dir;
    corpus.cache_dir = options.cache_dir;
    data::build_corpus(corpus);
  }
  if (!fs::exists(paths.tokenizer)) {
    log_info(cat("reproduce: training a ", options.budget.vocab_size, "-token BPE on the train split"));
    WordCounter counter;
    counter.add_files({join(paths.corpus_dir, "train.jsonl")});
    BpeTrainerOptions bpe;
    bpe.vocab_size = options.budget.vocab_size;
    fs::create_directories(fs::path(paths.tokenizer).parent_path());
    train_bpe(counter.counts(), bpe).save(paths.tokenizer);
  }
  for (const auto& [split, path] :
       {std::pair{"train", paths.train}, std::pair{"validation", paths.validation},
        std::pair{"test", paths.test}}) {
    if (fs::exists(path)) continue;
    data::TokenizeOptions t;
    t.corpus_dir = paths.corpus_dir;
    t.split = split;
    t.tokenizer_path = paths.tokenizer;
    t.out_path = path;
    const auto summary = data::tokenize_corpus(t);
    log_info(cat("reproduce: ", split, ": ", summary.documents, " documents, ", summary.tokens, " tokens"));
  }
  return paths;
}

ReproduceModels train_models(const ReproduceOptions& options, const ReproduceData& data) {
  const fs::path models(join(options.out_dir, "models"));
  ReproduceModels runs{join(models, "emo"), join(models, "standard"), join(models, "dense")};
  const auto domains = grid_domains(options.budget, data::Dataset::open(data.test));
  for (const auto& [mode, dir] :
       {std::pair{"emo", runs.emo}, std::pair{"standard", runs.standard}, std::pair{"dense", runs.dense}}) {
    const TrainConfig config = model_train_config(options.budget, data, mode, domains);
    const std::string checkpoint = resolve_checkpoint(dir);
    TrainState state;
    if (!checkpoint.empty()) read_checkpoint_config(checkpoint, &state);
    if (state.step >= config.total_steps()) {
      log_info(cat("reproduce: ", mode, " model already trained (", dir, ")"));
      continue;
    }
    log_info(cat("reproduce: training the ", mode, " model: ", config.total_steps(), " steps of ",
                 config.tokens_per_step(), " tokens -> ", dir));
    TrainOptions train;
    train.out_dir = dir;
    train.resume = true;
    train.show_progress = options.show_progress;
    Trainer trainer(config, train);
    // A signal stops training with a checkpoint; the pipeline stops there too and a rerun resumes.
    const int64_t reached = trainer.run();
    if (trainer.stop_signal() != 0)
      throw Interrupted(trainer.stop_signal(),
                        cat("[reproduce] signal ", trainer.stop_signal(), ": training of the ", mode,
                            " model stopped at step ", reached, " of ", config.total_steps(), " (", dir,
                            "); run the same command again to resume"));
    EMO_CHECK(reached >= config.total_steps(), "reproduce", "training of the ", mode,
              " model stopped at step ", reached, " of ", config.total_steps(), " (", dir,
              "); run the same command again to resume");
  }
  return runs;
}

void score_cells(const ReproduceOptions& options, const ReproduceData& data, const ReproduceModels& models) {
  const ReproduceBudget& b = options.budget;
  const data::Dataset test_set = data::Dataset::open(data.test);
  const auto domains = grid_domains(b, test_set);
  CellStore store(join(options.out_dir, "cells.json"));
  const int64_t subsets_per_domain =
      static_cast<int64_t>(b.keep_fractions.size()) * static_cast<int64_t>(b.example_counts.size() + 1);
  Progress progress("score", static_cast<int64_t>(domains.size()) * (2 * (subsets_per_domain + 1) + 1),
                    "cells");
  int64_t done = 0;
  DomainScorer scorer{b, test_set, store, progress, done};

  for (const auto& model_entry : {std::pair{"emo", models.emo}, std::pair{"standard", models.standard}}) {
    const std::string name = model_entry.first;  // not a structured binding: lambdas below capture it
    auto model = load_final(model_entry.second);
    const int64_t E = model->config().num_experts;
    for (size_t di = 0; di < domains.size(); ++di) {
      const std::string& domain = domains[di];
      const auto questions = make_next_segment_task(test_set, domain, b.mc_questions, 48, 16, 4, b.seed);
      Cell full{name, "full", 0, domain, E, 1.0};
      scorer.loss(*model, full, standard_routing());
      scorer.multiple_choice(*model, full, standard_routing(), questions);
      for (double fraction : b.keep_fractions) {
        const int64_t k = b.keep_k(fraction);
        if (k >= E) {  // all experts: the subset is the full model, scored above
          progress.update(done += static_cast<int64_t>(b.example_counts.size()) + 1);
          continue;
        }
        auto run_subset = [&](const std::string& method, int64_t examples, uint64_t seed) {
          Cell cell{name, method, examples, domain, k, static_cast<double>(k) / static_cast<double>(E)};
          // Multiple choice for the headline subset (12.5%, one document) and its random control.
          const bool with_mc = fraction == 0.125 && examples <= 1;
          Cell mc_cell = cell;
          mc_cell.metric = "mc_acc";
          if (store.has(cell.key()) && (!with_mc || store.has(mc_cell.key()))) {
            progress.update(++done);
            return;
          }
          // The random control ignores its examples; it is given the first document all the same.
          Examples ex = examples_from_dataset(data.validation, domain, std::max<int64_t>(examples, 1));
          truncate_examples(ex, b.row_length);
          const ExpertSubset subset = select_experts(*model, ex, {k, parse_selection_method(method), seed});
          scorer.loss(*model, cell, subset_routing(subset));
          if (with_mc) scorer.multiple_choice(*model, cell, subset_routing(subset), questions);
        };
        for (int64_t n : b.example_counts) run_subset("layerwise", n, b.seed);
        run_subset("random", 0, b.seed + 7919 * di);  // a different random subset per domain
      }
    }
  }
  auto dense = load_final(models.dense);
  for (const std::string& domain : domains) {
    const auto questions = make_next_segment_task(test_set, domain, b.mc_questions, 48, 16, 4, b.seed);
    Cell cell{"dense", "dense", 0, domain, 0, 0.125};
    scorer.loss(*dense, cell, standard_routing());
    scorer.multiple_choice(*dense, cell, standard_routing(), questions);
  }
  progress.finish();
}

namespace {

nlohmann::json model_facts(const std::string& run_dir) {
  auto model = load_final(run_dir);
  TrainState state;
  read_checkpoint_config(resolve_checkpoint(run_dir), &state);
  nlohmann::json facts = {{"run", run_dir},
                          {"parameters", parameter_count(*model)},
                          {"active_parameters", active_parameter_count(*model)},
                          {"steps", state.step},
                          {"tokens", state.tokens},
                          {"loss_curve", join(run_dir, "loss_curve.svg")}};
  // The last training-loss line of the metrics log.
  std::ifstream metrics(join(run_dir, "metrics.jsonl"));
  std::string line, last;
  while (std::getline(metrics, line))
    if (line.find("\"loss\"") != std::string::npos) last = line;
  if (!last.empty()) {
    const auto j = nlohmann::json::parse(last, nullptr, false);
    if (j.is_object() && j.contains("loss")) facts["final_train_loss"] = j["loss"];
  }
  return facts;
}

// Parameters and bytes of the pruned model at every keep-k (any subset of that size has the same).
nlohmann::json subset_memory(const ReproduceBudget& b, const std::string& emo_run) {
  auto model = load_final(emo_run);
  nlohmann::json memory = nlohmann::json::array();
  for (double fraction : b.keep_fractions) {
    const int64_t k = b.keep_k(fraction);
    ExpertSubset subset = ExpertSubset::for_model(model->config(), k, "memory");
    for (int64_t l = 0; l < model->config().num_hidden_layers; ++l) {
      for (int32_t e = 0; e < k - model->config().shared_in_layer(l); ++e) subset.routed[l].push_back(e);
      subset.shared[l] = {static_cast<int32_t>(model->config().experts_in_layer(l) - 1)};
    }
    subset.finish();
    const int64_t params = parameter_count(Model(pruned_config(model->config(), subset)));
    memory.push_back({{"keep_k", k},
                      {"fraction", fraction},
                      {"parameters", params},
                      {"bytes_fp32", 4 * params},
                      {"bytes_bf16", 2 * params}});
  }
  return memory;
}

}  // namespace

nlohmann::json run_reproduce(const ReproduceOptions& given) {
  ReproduceOptions options = given;
  if (options.out_dir.empty()) options.out_dir = "runs/reproduce-" + options.budget.name;
  // Continued by every rerun: claimed (an unmarked non-empty directory is refused, an older emo's run gets
  // the line that adopts it) and locked against a second reproduce on the same directory.
  claim_output_directory(
      options.out_dir,
      {"reproduce", {options.data_dir, options.cache_dir}, false, {"budget.json", "cells.json", "models"}});
  const DirectoryLock lock(options.out_dir, "reproduce");
  const std::string budget_path = join(options.out_dir, "budget.json");
  if (fs::exists(budget_path)) {
    // Reusing a run's stages is only sound with the sizes that made them.
    const auto previous = read_json_file(budget_path);
    EMO_CHECK(previous == options.budget.to_json(), "reproduce", budget_path,
              ": this run directory was made with a different budget; choose another --out or delete it");
  } else {
    write_json_file(budget_path, options.budget.to_json());
  }
  Timer total;
  const ReproduceData data = prepare_data(options);
  const double data_seconds = total.seconds();
  const ReproduceModels models = train_models(options, data);
  const double train_seconds = total.seconds() - data_seconds;
  score_cells(options, data, models);
  const double score_seconds = total.seconds() - data_seconds - train_seconds;

  ReportInputs inputs;
  inputs.budget = options.budget;
  inputs.cells = CellStore(join(options.out_dir, "cells.json")).cells();
  inputs.domains = grid_domains(options.budget, data::Dataset::open(data.test));
  inputs.models = {{"emo", model_facts(models.emo)},
                   {"standard", model_facts(models.standard)},
                   {"dense", model_facts(models.dense)}};
  inputs.memory = subset_memory(options.budget, models.emo);
  inputs.setup = {{"machine", machine_facts()},
                  {"data", {{"corpus", data.corpus_dir}, {"tokenizer", data.tokenizer}, {"test", data.test}}},
                  {"intra_document_attention", "on for every model, in training and evaluation"},
                  {"seconds_this_invocation",
                   {{"data", data_seconds},
                    {"train", train_seconds},
                    {"score", score_seconds},
                    {"total", total.seconds()}}}};
  return write_report(options.out_dir, inputs);
}

}  // namespace emo
