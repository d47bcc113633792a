// What a model's routers do on a sample of documents: per token the routed softmax of every MoE layer and the
// experts it chose. The sample depends on the dataset and the options only, never on the model, so two
// models traced with the same options see the same tokens (token i is the same in both traces).
//
// Sampling: per domain the documents in a seeded shuffled order; domains take turns (round robin), each
// document contributing its first max_document_tokens tokens, until max_tokens are taken. Rows hold
// EOS d_a EOS d_b ... (each document after the EOS that starts its segment, as in training), routed with
// evaluation routing (standard top-k over all experts; the EMO pool is a training device) and attention
// inside each document (an EOS belongs to the document it ends, so each document is traced as if alone).
// EOS positions are routed but not traced.
// Legend: n = traced tokens, F = sum over layers of routed experts (the concatenated router vector),
// S = sum over layers of routed slots.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/model.h"
#include "tensor/tensor.h"

namespace emo::analysis {

struct TraceOptions {
  int64_t max_tokens = 20000;         // tokens traced in all
  int64_t max_document_tokens = 128;  // first tokens of each document
  int64_t seq_len = 1024;             // row length (clamped to the model's context)
  int64_t batch_rows = 4;             // rows per forward
  uint64_t seed = 0;                  // document order
  std::vector<std::string> domains;   // empty = every domain of the dataset
};

// One sampled document: where it is in the dataset and where its tokens are in the trace.
struct TracedDocument {
  int64_t index = 0;        // document index in the dataset
  int32_t domain = 0;       // index into the dataset's domain names
  int64_t first_token = 0;  // its tokens are trace tokens [first_token, first_token + length)
  int64_t length = 0;
};

// The documents and tokens to trace (model-independent).
struct TraceSample {
  std::vector<TracedDocument> documents;
  std::vector<int32_t> tokens;    // [n] token ids, documents one after the other
  std::vector<int32_t> document;  // [n] index into documents
  std::vector<int32_t> domain;    // [n] domain of the token's document
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
};

TraceSample sample_documents(const data::Dataset& dataset, const TraceOptions& options);

struct RoutingTrace {
  std::vector<int64_t> layer_offset;  // [L + 1] column of layer l's first expert in `vectors`
  std::vector<int64_t> slot_offset;   // [L + 1] column of layer l's first slot in `chosen`
  Tensor vectors;                     // [n, F] routed softmax of every layer, concatenated
  std::vector<int32_t> chosen;        // [n, S] chosen routed experts per layer by decreasing score; -1 unused
  int64_t layers() const { return static_cast<int64_t>(layer_offset.size()) - 1; }
  int64_t experts(int64_t layer) const { return layer_offset[layer + 1] - layer_offset[layer]; }
  int64_t slots(int64_t layer) const { return slot_offset[layer + 1] - slot_offset[layer]; }
};

// Runs the model over the sample (MoE models only; the dataset's vocabulary must fit the model's).
RoutingTrace trace_routing(const Model& model, const TraceSample& sample, const TraceOptions& options);

}  // namespace emo::analysis
