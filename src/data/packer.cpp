#include "data/packer.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"
#include "data/segments.h"

namespace emo::data {

nlohmann::json PackerState::to_json() const {
  return {{"epoch", epoch}, {"document", document}, {"offset", offset}, {"batches", batches}};
}

PackerState PackerState::from_json(const nlohmann::json& j) {
  PackerState state;
  try {
    state.epoch = j.at("epoch").get<uint64_t>();
    state.document = j.at("document").get<uint64_t>();
    state.offset = j.at("offset").get<uint64_t>();
    state.batches = j.at("batches").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("packer", cat("bad packer state ", j.dump(), ": ", e.what()));
  }
  return state;
}

Packer::Packer(const Dataset& dataset, PackerOptions options) : dataset_(dataset), options_(options) {
  EMO_CHECK(options_.seq_len > 0, "packer", "seq_len must be positive, got ", options_.seq_len);
  EMO_CHECK(options_.world_size > 0 && options_.rank >= 0 && options_.rank < options_.world_size, "packer",
            "rank ", options_.rank, " of ", options_.world_size, " ranks");
  EMO_CHECK(options_.global_batch_rows > 0 && options_.global_batch_rows % options_.world_size == 0, "packer",
            "global batch of ", options_.global_batch_rows, " rows does not divide among ",
            options_.world_size, " ranks");
  EMO_CHECK(options_.domain < static_cast<int>(dataset.domain_names().size()), "packer", "domain ",
            options_.domain, " not in ", dataset.path(), " (", dataset.domain_names().size(), " domains)");
  if (options_.pad_id < 0) options_.pad_id = options_.eos_id;
  for (int64_t d = 0; d < dataset.num_documents(); ++d) {
    int64_t length = dataset.document_length(d);
    if (length == 0) continue;  // an empty document would only add a lone EOS
    if (options_.domain >= 0 && dataset.domain_of(d) != static_cast<uint32_t>(options_.domain)) continue;
    eligible_.push_back(static_cast<uint32_t>(d));
    tokens_per_epoch_ += length + 1;
  }
  EMO_CHECK(!eligible_.empty(), "packer", dataset.path(), ": no non-empty document",
            options_.domain >= 0 ? cat(" of domain '", dataset.domain_names()[options_.domain], "'")
                                 : std::string());
}

const std::vector<uint32_t>& Packer::order(uint64_t epoch) const {
  if (!options_.shuffle) return eligible_;
  for (int slot = 0; slot < 2; ++slot)
    if (cached_epoch_[slot] == epoch) return cached_order_[slot];
  int slot = next_slot_;
  next_slot_ ^= 1;
  std::vector<uint32_t>& order = cached_order_[slot];
  order = eligible_;
  Rng rng(options_.seed, epoch);  // one stream per epoch: an epoch's order does not depend on earlier epochs
  for (size_t i = order.size() - 1; i > 0; --i)
    std::swap(order[i], order[static_cast<size_t>(rng.uniform_int(0, static_cast<int64_t>(i)))]);
  cached_epoch_[slot] = epoch;
  return order;
}

int64_t Packer::document_at(uint64_t epoch, uint64_t i) const {
  return order(epoch).at(i);
}

int64_t Packer::length_at(const Cursor& c) const {
  return dataset_.document_length(order(c.epoch)[c.document]);
}

int64_t Packer::read(Cursor& c, int64_t n, int32_t* out) const {
  int64_t got = 0;
  while (got < n && !at_end(c)) {
    auto tokens = dataset_.document(order(c.epoch)[c.document]);
    auto length = static_cast<uint64_t>(tokens.size());
    uint64_t take = std::min<uint64_t>(length - c.offset, static_cast<uint64_t>(n - got));
    for (uint64_t i = 0; i < take; ++i) out[got++] = static_cast<int32_t>(tokens[c.offset + i]);
    c.offset += take;
    if (got < n && c.offset == length) {
      out[got++] = options_.eos_id;
      c.offset = 0;
      if (++c.document == eligible_.size()) c.document = 0, ++c.epoch;
    }
  }
  return got;
}

void Packer::skip(Cursor& c, int64_t n) const {
  while (n > 0 && !at_end(c)) {
    auto remaining =
        static_cast<int64_t>(length_at(c) - c.offset) + 1;  // the rest of the document and its EOS
    if (n < remaining) {
      c.offset += static_cast<uint64_t>(n);
      return;
    }
    n -= remaining;
    c.offset = 0;
    if (++c.document == eligible_.size()) c.document = 0, ++c.epoch;
  }
}

bool Packer::next(PackedBatch& batch) {
  Cursor start{state_.epoch, state_.document, state_.offset};
  if (at_end(start)) return false;
  const int64_t T = options_.seq_len, rows = rows_per_rank();
  batch.B = rows, batch.T = T;
  batch.tokens.assign(rows * T, options_.pad_id);
  batch.targets.assign(rows * T, -1);
  batch.doc_ids.assign(rows * T, 0);
  batch.attention_doc_ids.assign(rows * T, 0);

  Cursor c = start;
  skip(c, options_.rank * rows * T);
  std::vector<int32_t> window(T + 1);  // a row's tokens plus the next one, its last target
  for (int64_t r = 0; r < rows; ++r) {
    Cursor row_cursor = c;
    int64_t got = read(row_cursor, T + 1, window.data());
    int64_t real = std::min(got, T);
    int32_t* tokens = batch.tokens.data() + r * T;
    int32_t* targets = batch.targets.data() + r * T;
    int32_t* doc_ids = batch.doc_ids.data() + r * T;
    int32_t* attention_doc_ids = batch.attention_doc_ids.data() + r * T;
    for (int64_t t = 0; t < real; ++t) {
      tokens[t] = window[t];
      targets[t] = t + 1 < got ? window[t + 1] : -1;
    }
    row_segment_ids(tokens, real, options_.eos_id, doc_ids, attention_doc_ids);
    for (int64_t t = real; t < T; ++t) {  // padding: a segment and a document of its own
      doc_ids[t] = real > 0 ? doc_ids[real - 1] + 1 : 0;
      attention_doc_ids[t] = real > 0 ? attention_doc_ids[real - 1] + 1 : 0;
    }
    skip(c, T);
  }
  Cursor next = start;
  skip(next, options_.global_batch_rows * T);
  state_ = {next.epoch, next.document, next.offset, state_.batches + 1};
  return true;
}

void Packer::restore(const PackerState& state) {
  EMO_CHECK(state.document < eligible_.size(), "packer", "saved position: document ", state.document,
            " but the stream of ", dataset_.path(), " has ", eligible_.size(), " documents");
  Cursor c{state.epoch, state.document, state.offset};
  EMO_CHECK(state.offset <= static_cast<uint64_t>(length_at(c)), "packer", "saved position: offset ",
            state.offset, " past document ", state.document, " of ", length_at(c), " tokens");
  state_ = state;
}

}  // namespace emo::data
