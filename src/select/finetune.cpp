#include "select/finetune.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "model/forward_state.h"
#include "train/adamw.h"

namespace emo {
namespace {

// One example as a row whose targets are -1 except on the answer.
Batch answer_batch(const FinetuneExample& example, const ModelConfig& config) {
  const int64_t T = static_cast<int64_t>(example.tokens.size()) - 1;  // the last token is only a target
  std::vector<int32_t> tokens(example.tokens.begin(), example.tokens.end() - 1);
  std::vector<int32_t> targets(T, -1);
  for (int64_t t = example.answer_start - 1; t < T; ++t) targets[t] = example.tokens[t + 1];
  return Batch::from_tokens(1, T, std::move(tokens), std::move(targets),
                            static_cast<int32_t>(config.eos_token_id.value_or(-1)));
}

RoutingOptions plain_routing() {
  RoutingOptions routing;  // standard top-k over the (pruned) model's experts
  routing.training = false;
  return routing;
}

double global_norm(const std::vector<Param>& params) {
  double sum = 0;
  for (const Param& p : params)
    for (float g : p.grad->vec()) sum += static_cast<double>(g) * g;
  return std::sqrt(sum);
}

}  // namespace

std::vector<FinetuneExample> make_finetune_examples(const std::vector<ExampleText>& texts,
                                                    const Tokenizer& tokenizer, const std::string& marker) {
  EMO_CHECK(!marker.empty(), "finetune", "the answer marker is empty");
  std::vector<FinetuneExample> out;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string& text = texts[i].text;
    size_t split = text.size();
    if (texts[i].answer_at) {
      split = *texts[i].answer_at;
    } else {
      const size_t at = text.rfind(marker);
      EMO_CHECK(at != std::string::npos, "finetune", "example ", i,
                " has no \"answer\" field and no answer marker '", marker, "'");
      split = at + marker.size();
    }
    FinetuneExample example;
    example.tokens = tokenizer.encode_ordinary(text.substr(0, split));
    example.answer_start = static_cast<int64_t>(example.tokens.size());
    std::vector<int32_t> answer = tokenizer.encode_ordinary(text.substr(split));
    EMO_CHECK(!answer.empty(), "finetune", "example ", i, " has an empty answer");
    EMO_CHECK(example.answer_start >= 1, "finetune", "example ", i, " has nothing before its answer");
    example.tokens.insert(example.tokens.end(), answer.begin(), answer.end());
    out.push_back(std::move(example));
  }
  EMO_CHECK(!out.empty(), "finetune", "no example");
  return out;
}

double answer_loss(const Model& model, const std::vector<FinetuneExample>& examples) {
  double ce = 0;
  int64_t count = 0;
  for (const FinetuneExample& e : examples) {
    auto state = model.infer(answer_batch(e, model.config()), plain_routing());
    ce += state->ce.ce;
    count += state->ce.count;
  }
  return count > 0 ? ce / static_cast<double>(count) : 0.0;
}

std::vector<Param> finetune_params(Model& model, bool experts_only) {
  std::vector<Param> params = model.params();
  if (!experts_only) return params;
  EMO_CHECK(model.config().is_moe(), "finetune", "the model is dense: it has no experts to fine-tune alone");
  auto is_expert_or_router = [](const Param& p) {
    return p.name.find(".mlp.experts.") != std::string::npos || p.name.ends_with(".mlp.gate.weight");
  };
  std::erase_if(params, [&](const Param& p) { return !is_expert_or_router(p); });
  return params;
}

FinetuneReport finetune(Model& model, const std::vector<FinetuneExample>& examples,
                        const FinetuneOptions& options) {
  EMO_CHECK(!examples.empty() && options.batch >= 1 && options.epochs >= 1, "finetune",
            "need examples, batch >= 1 and epochs >= 1");
  const int64_t max_len = model.config().max_position_embeddings + 1;
  for (size_t i = 0; i < examples.size(); ++i)
    EMO_CHECK(static_cast<int64_t>(examples[i].tokens.size()) <= max_len, "finetune", "example ", i, " has ",
              examples[i].tokens.size(), " tokens, the context holds ", max_len - 1);
  OptimizerConfig optimizer;
  optimizer.lr = options.lr;
  optimizer.weight_decay = options.weight_decay;
  optimizer.grad_clip = options.grad_clip;
  AdamW adamw(optimizer);
  const LossWeights answer_only{0.0, 0.0, 0.0};
  std::vector<Param> params = finetune_params(model, options.experts_only);
  FinetuneReport report;
  for (const Param& p : params) report.params_trained += p.value->size();
  for (const auto& e : examples)
    report.answer_tokens += static_cast<int64_t>(e.tokens.size()) - e.answer_start;

  Rng rng(options.seed);
  std::vector<size_t> order(examples.size());
  const int64_t steps_per_epoch = (static_cast<int64_t>(examples.size()) + options.batch - 1) / options.batch;
  Progress progress("finetune", options.epochs * steps_per_epoch, "steps");
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    std::iota(order.begin(), order.end(), 0);
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.uniform_int(0, i - 1)]);
    for (size_t begin = 0; begin < order.size(); begin += options.batch) {
      const size_t end = std::min(order.size(), begin + options.batch);
      int64_t tokens = 0;
      for (size_t i = begin; i < end; ++i)
        tokens += static_cast<int64_t>(examples[order[i]].tokens.size()) - examples[order[i]].answer_start;
      model.zero_grads();
      double ce = 0;
      // Each example's mean CE weighted by its share of the batch's answer tokens: the batch's mean CE.
      for (size_t i = begin; i < end; ++i) {
        auto state = model.forward(answer_batch(examples[order[i]], model.config()), plain_routing());
        ce += state->ce.ce;
        model.backward(
            *state, answer_only, nullptr, 0,
            static_cast<float>(static_cast<double>(state->ce.count) / static_cast<double>(tokens)));
      }
      const double norm = global_norm(params);
      const float clip = options.grad_clip > 0 && norm > options.grad_clip
                             ? static_cast<float>(options.grad_clip / norm)
                             : 1.0f;
      adamw.step(params, options.lr, clip);
      report.step_losses.push_back(ce / static_cast<double>(tokens));
      ++report.steps;
      progress.update(report.steps, cat("loss ", report.step_losses.back()));
    }
  }
  progress.finish();
  return report;
}

void save_finetuned(const Model& model, const std::string& pruned_dir, const std::string& out_dir,
                    OutputRules rules) {
  namespace fs = std::filesystem;
  rules.inputs.push_back(pruned_dir);
  write_output_directory(out_dir, rules, [&](const std::string& temp_dir) {
    model.save(temp_dir);
    for (const char* file : {"pruning_metadata.json", "tokenizer.json"})
      if (fs::exists(fs::path(pruned_dir) / file))
        fs::copy_file(fs::path(pruned_dir) / file, fs::path(temp_dir) / file);
  });
}

}  // namespace emo
