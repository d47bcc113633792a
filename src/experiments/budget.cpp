#include "experiments/budget.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace emo {

int64_t ReproduceBudget::train_steps() const {
  const int64_t per_step = global_batch_rows * row_length;
  return (train_tokens + per_step - 1) / per_step;
}

int64_t ReproduceBudget::keep_k(double fraction) const {
  const int64_t k = static_cast<int64_t>(std::llround(fraction * static_cast<double>(experts)));
  return std::clamp<int64_t>(k, 2, experts);  // the shared expert and at least one routed one
}

int64_t ReproduceBudget::dense_width() const {
  return keep_k(0.125) * expert_width;
}

nlohmann::json ReproduceBudget::to_json() const {
  return {{"name", name},
          {"vocab_size", vocab_size},
          {"d", d},
          {"layers", layers},
          {"heads", heads},
          {"experts", experts},
          {"top_k", top_k},
          {"expert_width", expert_width},
          {"row_length", row_length},
          {"micro_batch_rows", micro_batch_rows},
          {"global_batch_rows", global_batch_rows},
          {"train_tokens", train_tokens},
          {"warmup_steps", warmup_steps},
          {"lr", lr},
          {"pool_min", pool_min},
          {"pool_max", pool_max},
          {"seed", seed},
          {"eval_tokens_per_domain", eval_tokens_per_domain},
          {"mc_questions", mc_questions},
          {"keep_fractions", keep_fractions},
          {"example_counts", example_counts},
          {"domains", domains}};
}

ReproduceBudget ReproduceBudget::from_json(const nlohmann::json& j, const ReproduceBudget& base,
                                           const std::string& source) {
  EMO_CHECK(j.is_object(), "reproduce", source, ": a budget must be a JSON object");
  nlohmann::json merged = base.to_json();
  for (const auto& [key, value] : j.items()) {
    if (!merged.contains(key)) fail_file("reproduce", source, cat("unknown budget key \"", key, "\""));
    merged[key] = value;
  }
  ReproduceBudget b;
  try {
    b.name = merged.at("name").get<std::string>();
    b.vocab_size = merged.at("vocab_size").get<int64_t>();
    b.d = merged.at("d").get<int64_t>();
    b.layers = merged.at("layers").get<int64_t>();
    b.heads = merged.at("heads").get<int64_t>();
    b.experts = merged.at("experts").get<int64_t>();
    b.top_k = merged.at("top_k").get<int64_t>();
    b.expert_width = merged.at("expert_width").get<int64_t>();
    b.row_length = merged.at("row_length").get<int64_t>();
    b.micro_batch_rows = merged.at("micro_batch_rows").get<int64_t>();
    b.global_batch_rows = merged.at("global_batch_rows").get<int64_t>();
    b.train_tokens = merged.at("train_tokens").get<int64_t>();
    b.warmup_steps = merged.at("warmup_steps").get<int64_t>();
    b.lr = merged.at("lr").get<double>();
    b.pool_min = merged.at("pool_min").get<int64_t>();
    b.pool_max = merged.at("pool_max").get<int64_t>();
    b.seed = merged.at("seed").get<uint64_t>();
    b.eval_tokens_per_domain = merged.at("eval_tokens_per_domain").get<int64_t>();
    b.mc_questions = merged.at("mc_questions").get<int64_t>();
    b.keep_fractions = merged.at("keep_fractions").get<std::vector<double>>();
    b.example_counts = merged.at("example_counts").get<std::vector<int64_t>>();
    b.domains = merged.at("domains").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    fail_file("reproduce", source, cat("bad budget value: ", e.what()));
  }
  EMO_CHECK(b.experts > b.top_k && b.top_k >= 2, "reproduce", source, ": need experts > top_k >= 2");
  EMO_CHECK(b.train_tokens > 0 && b.eval_tokens_per_domain > 0, "reproduce", source,
            ": token counts must be positive");
  EMO_CHECK(!b.keep_fractions.empty() && !b.example_counts.empty(), "reproduce", source,
            ": keep_fractions and example_counts must not be empty");
  return b;
}

ReproduceBudget ReproduceBudget::preset(const std::string& name) {
  ReproduceBudget b;
  b.name = name;
  if (name == "quick") return b;
  if (name == "standard" || name == "full") {
    // The 4096-token vocabulary of quick: at d = 128 the output layer is most of a step's work, and a
    // smaller one buys more training tokens in the hour (measured: about 8.7k tokens/s on 2 free cores, so
    // each MoE trains for about 16 minutes).
    b.train_tokens = 8'000'000;
    // Both quick models lose most experts for a while at the end of a 50-step warmup at lr 4e-3 (and
    // recover): a warmup of about 10% of the run, as the recipe's 2000 steps are of its long runs.
    b.warmup_steps = 200;
    b.eval_tokens_per_domain = 8192;
    b.mc_questions = 64;
    return b;
  }
  fail("reproduce", cat("unknown budget \"", name, "\" (quick, standard or full)"));
}

}  // namespace emo
