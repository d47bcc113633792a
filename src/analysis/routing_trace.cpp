#include "analysis/routing_trace.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "model/forward_state.h"

namespace emo::analysis {
namespace {

// Document indices of each selected domain, non-empty documents only, shuffled by the seed.
std::vector<std::vector<int64_t>> documents_by_domain(const data::Dataset& dataset,
                                                      const TraceOptions& options) {
  const int64_t M = static_cast<int64_t>(dataset.domain_names().size());
  std::vector<bool> wanted(M, options.domains.empty());
  for (const std::string& name : options.domains) {
    const int d = dataset.domain_index(name);
    if (d < 0) fail_file("analyze", dataset.path(), cat("no domain named '", name, "'"));
    wanted[d] = true;
  }
  std::vector<std::vector<int64_t>> by_domain(M);
  for (int64_t i = 0; i < dataset.num_documents(); ++i)
    if (wanted[dataset.domain_of(i)] && dataset.document_length(i) > 0)
      by_domain[dataset.domain_of(i)].push_back(i);
  Rng rng(options.seed, 0x616e616c79736973ULL);
  for (auto& documents : by_domain)  // Fisher-Yates
    for (int64_t i = static_cast<int64_t>(documents.size()) - 1; i > 0; --i)
      std::swap(documents[i], documents[rng.uniform_int(0, i)]);
  return by_domain;
}

void add_document(TraceSample& sample, const data::Dataset& dataset, int64_t index, int64_t length) {
  TracedDocument doc;
  doc.index = index;
  doc.domain = static_cast<int32_t>(dataset.domain_of(index));
  doc.first_token = sample.size();
  doc.length = length;
  const auto tokens = dataset.document(index);
  for (int64_t t = 0; t < length; ++t) {
    sample.tokens.push_back(static_cast<int32_t>(tokens[t]));
    sample.document.push_back(static_cast<int32_t>(sample.documents.size()));
    sample.domain.push_back(doc.domain);
  }
  sample.documents.push_back(doc);
}

// Rows of EOS-prefixed documents: each row lists the documents it holds (EOS + document fits a row).
std::vector<std::vector<int64_t>> pack_rows(const TraceSample& sample, int64_t T) {
  std::vector<std::vector<int64_t>> rows;
  int64_t used = T;
  for (int64_t d = 0; d < static_cast<int64_t>(sample.documents.size()); ++d) {
    const int64_t need = sample.documents[d].length + 1;
    if (used + need > T) {
      rows.emplace_back();
      used = 0;
    }
    rows.back().push_back(d);
    used += need;
  }
  return rows;
}

void copy_layer(RoutingTrace& trace, const LayerRouting& r, int64_t layer, int64_t n, int64_t trace_row) {
  const int64_t F = trace.vectors.dim(1),
                S = static_cast<int64_t>(trace.chosen.size()) / trace.vectors.dim(0);
  std::memcpy(trace.vectors.data() + trace_row * F + trace.layer_offset[layer], r.probs.data() + n * r.routed,
              sizeof(float) * r.routed);
  std::copy_n(r.ids.begin() + n * r.slots, r.slots,
              trace.chosen.begin() + trace_row * S + trace.slot_offset[layer]);
}

}  // namespace

TraceSample sample_documents(const data::Dataset& dataset, const TraceOptions& options) {
  EMO_CHECK(options.max_tokens >= 1, "analyze", "max_tokens must be at least 1, got ", options.max_tokens);
  EMO_CHECK(options.max_document_tokens >= 1, "analyze", "max_document_tokens must be at least 1, got ",
            options.max_document_tokens);
  std::vector<std::vector<int64_t>> by_domain = documents_by_domain(dataset, options);
  TraceSample sample;
  std::vector<size_t> next(by_domain.size(), 0);
  bool took_any = true;
  while (sample.size() < options.max_tokens && took_any) {
    took_any = false;
    for (size_t d = 0; d < by_domain.size() && sample.size() < options.max_tokens; ++d) {
      if (next[d] >= by_domain[d].size()) continue;
      const int64_t index = by_domain[d][next[d]++];
      const int64_t length = std::min(
          {dataset.document_length(index), options.max_document_tokens, options.max_tokens - sample.size()});
      add_document(sample, dataset, index, length);
      took_any = true;
    }
  }
  if (sample.documents.empty()) fail_file("analyze", dataset.path(), "no non-empty document to analyse");
  return sample;
}

RoutingTrace trace_routing(const Model& model, const TraceSample& sample, const TraceOptions& options) {
  const ModelConfig& config = model.config();
  EMO_CHECK(config.is_moe(), "analyze", "the model is dense: there is no routing to analyse");
  for (int32_t token : sample.tokens)
    EMO_CHECK(token < config.vocab_size, "analyze", "token id ", token,
              " is outside the model's vocabulary of ", config.vocab_size,
              " (a dataset tokenised for another model?)");
  const int64_t L = config.num_hidden_layers, n = sample.size();
  const int64_t T = std::min(options.seq_len, config.max_position_embeddings);
  for (const TracedDocument& doc : sample.documents)
    EMO_CHECK(doc.length + 1 <= T, "analyze", "a document of ", doc.length,
              " tokens plus its EOS exceeds rows of ", T, " (lower max_document_tokens)");
  RoutingTrace trace;
  trace.layer_offset = {0};
  trace.slot_offset = {0};
  for (int64_t l = 0; l < L; ++l) {
    const int64_t routed = config.routed_in_layer(l);
    trace.layer_offset.push_back(trace.layer_offset.back() + routed);
    const int64_t slots = std::min(config.num_experts_per_tok - config.shared_in_layer(l), routed);
    trace.slot_offset.push_back(trace.slot_offset.back() + slots);
  }
  trace.vectors = Tensor({n, trace.layer_offset.back()});
  trace.chosen.assign(n * trace.slot_offset.back(), -1);

  RoutingOptions routing;
  routing.training = false;
  routing.intra_document_attention = true;
  const int32_t eos = static_cast<int32_t>(config.eos_token_id.value_or(0));
  const int32_t pad = static_cast<int32_t>(config.pad_token_id.value_or(eos));
  const std::vector<std::vector<int64_t>> rows = pack_rows(sample, T);
  Progress progress("analyze", n, "tok");
  int64_t traced = 0;
  for (size_t first = 0; first < rows.size(); first += options.batch_rows) {
    const int64_t B = std::min<int64_t>(options.batch_rows, static_cast<int64_t>(rows.size() - first));
    std::vector<int32_t> tokens(B * T, pad);
    std::vector<std::pair<int64_t, int64_t>> where;  // (batch position, trace row) of each traced token
    for (int64_t b = 0; b < B; ++b) {
      int64_t t = 0;
      for (int64_t d : rows[first + b]) {
        const TracedDocument& doc = sample.documents[d];
        tokens[b * T + t++] = eos;
        for (int64_t i = 0; i < doc.length; ++i, ++t) {
          tokens[b * T + t] = sample.tokens[doc.first_token + i];
          where.emplace_back(b * T + t, doc.first_token + i);
        }
      }
    }
    auto state = model.infer(Batch::from_tokens(B, T, std::move(tokens), {}, eos), routing);
    for (int64_t l = 0; l < L; ++l) {
      const LayerRouting& r = state->routing(l);
      EMO_CHECK(r.routed == trace.experts(l) && r.slots == trace.slots(l), "analyze", "layer ", l, " routed ",
                r.routed, " experts in ", r.slots, " slots, the config says ", trace.experts(l), " in ",
                trace.slots(l));
      for (const auto& [position, trace_row] : where) copy_layer(trace, r, l, position, trace_row);
    }
    traced += static_cast<int64_t>(where.size());
    progress.update(traced);
  }
  progress.finish();
  return trace;
}

}  // namespace emo::analysis
