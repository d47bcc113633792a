#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/log.h"
#include "data/packer.h"
#include "model/forward_state.h"

namespace emo {
namespace {

// Leaves the first `budget` scored targets of the rows (row-major) and ignores (-1) the rest, so that a
// domain scores exactly max_tokens tokens however its rows fall.
void keep_first_targets(std::vector<int32_t>& targets, int64_t budget) {
  for (int32_t& target : targets) {
    if (target < 0) continue;
    if (budget > 0)
      --budget;
    else
      target = -1;
  }
}

DomainLoss loss_of_domain(const Model& model, const data::Dataset& dataset, int domain,
                          const RoutingOptions& routing, const PerplexityOptions& options, int64_t T) {
  const ModelConfig& config = model.config();
  data::PackerOptions packing;
  packing.seq_len = T;
  packing.global_batch_rows = options.batch_rows;
  packing.shuffle = false;
  packing.domain = domain;
  packing.single_pass = true;
  packing.eos_id = static_cast<int32_t>(config.eos_token_id.value_or(0));
  packing.pad_id = static_cast<int32_t>(config.pad_token_id.value_or(packing.eos_id));
  data::Packer packer(dataset, packing);

  DomainLoss result;
  result.domain = dataset.domain_names()[domain];
  double ce_sum = 0;
  data::PackedBatch rows;
  while (packer.next(rows)) {
    Batch batch;
    batch.B = rows.B, batch.T = rows.T;
    batch.tokens = std::move(rows.tokens);
    batch.targets = std::move(rows.targets);
    batch.doc_ids = std::move(rows.doc_ids);
    batch.attention_doc_ids = std::move(rows.attention_doc_ids);
    if (options.max_tokens > 0) keep_first_targets(batch.targets, options.max_tokens - result.tokens);
    auto state = model.infer(batch, routing);
    ce_sum += state->ce.ce;
    result.tokens += state->ce.count;
    if (options.max_tokens > 0 && result.tokens >= options.max_tokens) break;
  }
  if (result.tokens > 0) {
    result.loss = ce_sum / static_cast<double>(result.tokens);
    result.perplexity = std::exp(result.loss);
  }
  return result;
}

}  // namespace

std::vector<DomainLoss> evaluate_domains(const Model& model, const data::Dataset& dataset,
                                         const RoutingOptions& input_routing,
                                         const PerplexityOptions& options) {
  EMO_CHECK(input_routing.mode != RoutingMode::kEmoPool, "eval",
            "evaluation routes over all experts or a subset, not through an EMO pool");
  EMO_CHECK(options.batch_rows >= 1, "eval", "batch_rows must be at least 1, got ", options.batch_rows);
  EMO_CHECK(dataset.vocab_size() <= model.config().vocab_size, "eval", dataset.path(), ": token ids up to ",
            dataset.vocab_size(), " exceed the model's vocabulary of ", model.config().vocab_size);
  RoutingOptions routing = input_routing;
  routing.training = false;
  routing.intra_document_attention = options.intra_document_attention;
  const int64_t T =
      options.seq_len > 0 ? options.seq_len : std::min<int64_t>(1024, model.config().max_position_embeddings);

  std::vector<int> domains;
  if (options.domains.empty()) {
    for (size_t d = 0; d < dataset.domain_names().size(); ++d) domains.push_back(static_cast<int>(d));
  } else {
    for (const std::string& name : options.domains) {
      int d = dataset.domain_index(name);
      if (d < 0) fail_file("eval", dataset.path(), cat("no domain named '", name, "'"));
      domains.push_back(d);
    }
  }

  std::vector<DomainLoss> losses;
  DomainLoss all{"all", 0, 0, 0};
  Progress progress("eval", static_cast<int64_t>(domains.size()), "domains");
  for (int d : domains) {
    bool has_documents = false;
    for (int64_t i = 0; i < dataset.num_documents() && !has_documents; ++i)
      has_documents = dataset.domain_of(i) == static_cast<uint32_t>(d) && dataset.document_length(i) > 0;
    if (!has_documents) continue;  // a split may lack a small domain
    DomainLoss loss = loss_of_domain(model, dataset, d, routing, options, T);
    all.loss += loss.loss * static_cast<double>(loss.tokens);
    all.tokens += loss.tokens;
    losses.push_back(loss);
    progress.update(static_cast<int64_t>(losses.size()), loss.domain);
  }
  progress.finish();
  if (all.tokens > 0) {
    all.loss /= static_cast<double>(all.tokens);
    all.perplexity = std::exp(all.loss);
    losses.push_back(all);
  }
  return losses;
}

nlohmann::json domain_losses_json(const std::vector<DomainLoss>& losses) {
  nlohmann::json out = nlohmann::json::array();
  for (const DomainLoss& l : losses)
    out.push_back(
        {{"domain", l.domain}, {"tokens", l.tokens}, {"loss", l.loss}, {"perplexity", l.perplexity}});
  return out;
}

std::string domain_losses_table(const std::vector<DomainLoss>& losses) {
  std::string table = cat("domain                  tokens      loss   perplexity\n");
  for (const DomainLoss& l : losses) {
    char line[160];
    std::snprintf(line, sizeof line, "%-20s %9lld %9.4f %12.3f\n", l.domain.c_str(),
                  static_cast<long long>(l.tokens), l.loss, l.perplexity);
    table += line;
  }
  return table;
}

}  // namespace emo
