// Held-out loss and perplexity per domain: the documents of one domain at a time, packed into rows (each
// document followed by EOS, data/packer.h in single-pass mode), scored with evaluation-mode routing (standard
// top-k over all experts, no EMO pool; or subset routing) and intra-document attention.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/model.h"

namespace emo {

struct DomainLoss {
  std::string domain;
  int64_t tokens = 0;     // scored target tokens
  double loss = 0;        // mean cross-entropy (nats per token)
  double perplexity = 0;  // exp(loss)
};

struct PerplexityOptions {
  int64_t seq_len = 0;     // row length T; 0 = min(1024, max_position_embeddings)
  int64_t batch_rows = 4;  // rows per forward
  int64_t max_tokens = 0;  // per domain: score exactly this many tokens (fewer when the domain has fewer);
                           // 0 = every document
  std::vector<std::string> domains;  // empty = every domain of the dataset
  bool intra_document_attention = true;
};

// Loss and perplexity of each domain, plus an "all" entry (token-weighted over the domains scored).
// routing.mode must be kStandard or kSubset (the EMO pool is a training device).
std::vector<DomainLoss> evaluate_domains(const Model& model, const data::Dataset& dataset,
                                         const RoutingOptions& routing, const PerplexityOptions& options);

nlohmann::json domain_losses_json(const std::vector<DomainLoss>& losses);
// A fixed-width table: domain, tokens, loss, perplexity.
std::string domain_losses_table(const std::vector<DomainLoss>& losses);

}  // namespace emo
