#include "eval/evaluate.h"

#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "eval/dictionary_task.h"

namespace emo {

namespace {

namespace fs = std::filesystem;

// The corpus split JSONL of the dictionary task: the one asked for, or the .jsonl beside the tokenised split
// (`emo corpus tokenize` writes <corpus>/<split>.bin beside <corpus>/<split>.jsonl); "" when there is none.
std::string corpus_split_for(const EvalRequest& request) {
  if (!request.corpus_split_path.empty()) return request.corpus_split_path;
  fs::path beside = fs::path(request.data_path).replace_extension(".jsonl");
  return fs::exists(beside) ? beside.string() : "";
}

// One definition task per dictionary domain among the domains scored for perplexity.
void add_definition_tasks(EvalReport& report, const Model& model, const RoutingOptions& routing,
                          const Tokenizer* tokenizer, const EvalRequest& request) {
  const std::string split = corpus_split_for(request);
  if (split.empty() || tokenizer == nullptr) {
    log_warn(split.empty() ? "no dictionary task: no corpus split JSONL beside --data (--corpus-split)"
                           : "no dictionary task: it needs the model's tokenizer");
    return;
  }
  auto entries = read_dictionary_entries(split);
  for (const DomainLoss& domain : report.perplexity) {
    auto found = entries.find(domain.domain);
    if (found == entries.end()) continue;
    McTask task;
    try {
      task = make_definition_task(domain.domain, found->second, request.builtin_mc, request.builtin_choices,
                                  request.seed);
    } catch (const Error& e) {
      log_warn(cat("no dictionary task for domain ", domain.domain, ": ", e.what()));
      continue;
    }
    if (!request.save_tasks_dir.empty()) {
      fs::create_directories(request.save_tasks_dir);
      save_mc_task(task,
                   (fs::path(request.save_tasks_dir) / ("definition_" + domain.domain + ".jsonl")).string());
    }
    report.tasks.push_back(evaluate_mc(model, task.name, tokenize_mc_task(task, *tokenizer), routing));
  }
}

}  // namespace

EvalReport run_eval(const Model& model, const RoutingOptions& routing, const Tokenizer* tokenizer,
                    const EvalRequest& request) {
  EMO_CHECK(!request.data_path.empty() || !request.task_paths.empty(), "eval",
            "nothing to evaluate: give a tokenised split (--data) and/or task files (--task)");
  EMO_CHECK(request.builtin_mc == 0 || !request.data_path.empty(), "eval",
            "built-in tasks are generated from a tokenised split (--data)");
  EvalReport report;
  if (!request.data_path.empty()) {
    data::Dataset dataset = data::Dataset::open(request.data_path);
    report.perplexity = evaluate_domains(model, dataset, routing, request.perplexity);
    if (request.builtin_mc > 0) {
      for (const DomainLoss& domain : report.perplexity) {
        if (domain.domain == "all") continue;
        std::vector<McTokenQuestion> questions;
        try {
          questions =
              make_next_segment_task(dataset, domain.domain, request.builtin_mc, request.builtin_prompt_len,
                                     request.builtin_choice_len, request.builtin_choices, request.seed);
        } catch (const Error& e) {
          log_warn(cat("no built-in task for domain ", domain.domain, ": ", e.what()));
          continue;
        }
        report.tasks.push_back(evaluate_mc(model, "next_segment/" + domain.domain, questions, routing));
      }
      add_definition_tasks(report, model, routing, tokenizer, request);
    }
  }
  for (const std::string& path : request.task_paths) {
    EMO_CHECK(tokenizer != nullptr, "eval", "task ", path, " needs a tokenizer (tokenizer.json)");
    McTask task = load_mc_task(path);
    report.tasks.push_back(
        evaluate_mc(model, task.name, tokenize_mc_task(task, *tokenizer), routing, request.limit));
  }
  return report;
}

nlohmann::json EvalReport::to_json() const {
  return {
      {"format", kFormat}, {"perplexity", domain_losses_json(perplexity)}, {"tasks", mc_results_json(tasks)}};
}

std::string EvalReport::table() const {
  std::string out;
  if (!perplexity.empty()) out += domain_losses_table(perplexity);
  if (!perplexity.empty() && !tasks.empty()) out += "\n";
  if (!tasks.empty()) out += mc_results_table(tasks);
  return out;
}

}  // namespace emo
