// Where the trainer's rows come from: the data packer over a tokenised dataset (data/packer.h), or generated
// documents (tests and benchmarks). Both hand each rank its contiguous share of every global batch
// (rank r: rows [r B/n, (r+1) B/n)) and are resumable: state() / restore() capture the position exactly and
// are the same on every rank.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/rng.h"
#include "model/model.h"

namespace emo {

struct RowSourceOptions {
  int64_t row_length = 0;         // T
  int64_t global_batch_rows = 1;  // rows of one global batch over all ranks
  int rank = 0, world_size = 1;
  uint64_t seed = 0;
  int64_t vocab = 0;
  int32_t eos_id = 0;
  bool single_pass = false;  // evaluation: one pass over the (domain's) documents, then next() is false
                             // (synthetic sources never end)
  std::string domain;        // dataset sources: only this domain's documents ("" = all)
};

class RowSource {
 public:
  virtual ~RowSource() = default;
  // This rank's rows of the next global batch (tokens, targets, doc_ids); false when a single pass is over.
  virtual bool next(Batch& rows) = 0;
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
};

// Documents of topic-specific tokens with a learnable structure, EOS-separated and packed into rows.
// Every document draws a topic; its tokens come from that topic's slice of the vocabulary and mostly follow
// a fixed successor rule, so the loss falls quickly and the experts have topics to specialise on.
class SyntheticSource : public RowSource {
 public:
  explicit SyntheticSource(RowSourceOptions options, int64_t topics = 4);
  bool next(Batch& rows) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;

 private:
  int32_t next_token();

  RowSourceOptions options_;
  int64_t topics_;
  Rng rng_;
  int64_t topic_ = 0, remaining_ = 0;  // current document: topic and tokens left before its EOS
  int32_t previous_ = -1;              // previous token of the document, before skipping the EOS id
  int32_t lookahead_ = -1;             // the token after the last row's final position (its last target)
};

// "synthetic" or "synthetic:SEED" -> SyntheticSource; anything else is a dataset file (data/dataset.h) read
// through the data packer, "PATH#DOMAIN" for one domain's documents only.
std::unique_ptr<RowSource> make_row_source(const std::string& spec, const RowSourceOptions& options);

// One held-out source per domain of a dataset file: {domain: "PATH#domain"} for every domain that has a
// non-empty document in it (what `emo train --validation PATH` puts into data.validation).
std::map<std::string, std::string> per_domain_sources(const std::string& dataset_path);

// Vocabulary size of a dataset file (0 for synthetic sources).
int64_t row_source_vocab(const std::string& spec);

}  // namespace emo
