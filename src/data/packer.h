// Packs the documents of a Dataset into fixed-length rows for training and evaluation.
//
// The stream of an epoch is the eligible documents (non-empty, of the chosen domain if any) in an order
// shuffled by (seed, epoch), each followed by one EOS: d0 EOS d1 EOS d2 EOS ... Epochs follow one another
// without a gap. Rows take T consecutive stream tokens; a document longer than a row continues in the next
// row. Per row:
//   tokens[t]  = stream[p + t]
//   targets[t] = stream[p + t + 1]          (every position is trained, the last one on the next row's first
//   token) doc_ids[t] = segment index in the row:  0 at t = 0, +1 at every t > 0 holding EOS
// so an EOS is grouped with the document that follows it (docs/emo.md section 3), and
//   attention_doc_ids[t] = document index in the row: +1 after every EOS, which ends its own document.
//
// A global batch is B consecutive rows; with n data-parallel ranks, rank r gets rows [r B/n, (r+1) B/n) of it
// (B must divide by n), so the ranks' rows are disjoint and together form the one-rank batch.
// The position (PackerState) is the start of the next global batch, identical on every rank; restoring it
// resumes the stream bit-exactly.
// In single-pass mode (evaluation) the stream ends after one epoch; the last row is filled with pad positions
// (token pad_id, target -1, a segment of their own) and next() returns false once nothing is left.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "data/dataset.h"

namespace emo::data {

struct PackerOptions {
  int64_t seq_len = 1024;         // T
  int64_t global_batch_rows = 1;  // B, over all ranks
  int rank = 0, world_size = 1;
  uint64_t seed = 0;
  bool shuffle = true;       // false: file order in every epoch
  int domain = -1;           // >= 0: only this domain's documents (held-out evaluation per domain)
  bool single_pass = false;  // one epoch, then stop (evaluation)
  int32_t eos_id = 0;
  int32_t pad_id = -1;  // single-pass padding token; -1: eos_id
};

// Position of the stream: next global batch starts at token `offset` of document `document` (index into the
// epoch's order; offset == document length means its EOS).
struct PackerState {
  uint64_t epoch = 0, document = 0, offset = 0;
  uint64_t batches = 0;  // global batches produced so far
  bool operator==(const PackerState&) const = default;
  nlohmann::json to_json() const;
  static PackerState from_json(const nlohmann::json& j);  // emo::Error on missing or bad fields
};

// Rows of one rank, row-major [rows, T].
struct PackedBatch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens, targets, doc_ids, attention_doc_ids;  // data/segments.h: the two EOS rules
};

class Packer {
 public:
  // The dataset must outlive the packer. Throws emo::Error when no document is eligible or options are bad.
  Packer(const Dataset& dataset, PackerOptions options);

  // Fills `batch` with this rank's rows of the next global batch; false (batch untouched) when a single pass
  // is over.
  bool next(PackedBatch& batch);

  const PackerState& state() const { return state_; }
  // Continues from a saved state; emo::Error when it does not fit this dataset and these options.
  void restore(const PackerState& state);

  int64_t rows_per_rank() const { return options_.global_batch_rows / options_.world_size; }
  int64_t num_documents() const { return static_cast<int64_t>(eligible_.size()); }
  // Stream tokens of one epoch: sum of (document length + 1).
  int64_t tokens_per_epoch() const { return tokens_per_epoch_; }
  // Document (index into the dataset) at position i of an epoch's order.
  int64_t document_at(uint64_t epoch, uint64_t i) const;

 private:
  struct Cursor {
    uint64_t epoch, document, offset;
  };
  const std::vector<uint32_t>& order(uint64_t epoch) const;
  int64_t length_at(const Cursor& c) const;
  // Copies up to n stream tokens from c (advancing it) into out; returns how many (fewer only at a single
  // pass's end).
  int64_t read(Cursor& c, int64_t n, int32_t* out) const;
  void skip(Cursor& c, int64_t n) const;
  bool at_end(const Cursor& c) const { return options_.single_pass && c.epoch > 0; }

  const Dataset& dataset_;
  PackerOptions options_;
  std::vector<uint32_t> eligible_;  // dataset document indices, file order
  int64_t tokens_per_epoch_ = 0;
  PackerState state_;
  // The orders of the last two epochs asked for (a row can straddle an epoch boundary).
  mutable uint64_t cached_epoch_[2] = {UINT64_MAX, UINT64_MAX};
  mutable std::vector<uint32_t> cached_order_[2];
  mutable int next_slot_ = 0;
};

}  // namespace emo::data
