#include "eval/evaluate.h"

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"

namespace emo {

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
  return {{"perplexity", domain_losses_json(perplexity)}, {"tasks", mc_results_json(tasks)}};
}

std::string EvalReport::table() const {
  std::string out;
  if (!perplexity.empty()) out += domain_losses_table(perplexity);
  if (!perplexity.empty() && !tasks.empty()) out += "\n";
  if (!tasks.empty()) out += mc_results_table(tasks);
  return out;
}

}  // namespace emo
