// The weights of a checkpoint as the inference engine uses them: views into the memory-mapped safetensors
// files, in their stored format (fp32, bf16, int8 with per-row scales, or 4-bit Q4_0 blocks, see
// docs/inference.md), never copied (f16 and non-fp32 norms, which the kernels do not read, are converted
// once into small owned buffers).
//
// Experts are loaded per (layer, expert) only when first needed: a layer can be restricted to a kept subset
// of its routed experts (subset routing, docs/emo.md §1), and then no byte of the other experts
// is read, so the resident memory follows the subset. "Loading" an expert = resolving its views, converting
// it if needed and asking the kernel to read its pages ahead (MADV_WILLNEED); the bookkeeping records which
// experts were loaded. An expert can be unloaded again (an expert cache under a memory budget,
// infer/expert_cache.h): its whole pages leave this process (MADV_DONTNEED) and a converted copy is freed.
// The header of every tensor is checked at open, so a bad checkpoint fails before any token is generated,
// with a message naming the tensor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/quant.h"
#include "kernels/rope.h"
#include "model/config.h"

namespace emo {

// One SwiGLU expert (or the dense MLP): down(silu(gate(x)) * up(x)).
struct ExpertView {
  MatrixView gate, up;  // [F, C]
  MatrixView down;      // [C, F]
};

struct LayerView {
  const float* attn_norm = nullptr;  // [C]
  const float* ffn_norm = nullptr;   // [C]
  MatrixView q, k, v;                // [H*hd, C], [Hkv*hd, C], [Hkv*hd, C]
  MatrixView o;                      // [C, H*hd]
  MatrixView router;                 // [E, C], MoE only; the routed experts' rows come first
};

// A named byte range of memory (for the resident-memory report).
struct MemoryRange {
  std::string component;  // "embeddings", "attention", "router", "experts", "lm_head", "norms", "kv_cache"
  const void* begin = nullptr;
  int64_t bytes = 0;
};

class InferWeights {
 public:
  // Opens MODEL (directory with config.json and model.safetensors or shards). Throws emo::Error for a model
  // that is not an EMO / OLMoE-style decoder of docs/emo.md §2, a missing or unexpected tensor, a
  // wrong shape or an unsupported dtype, naming the tensor.
  static std::unique_ptr<InferWeights> open(const std::string& dir);
  ~InferWeights();

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  DType dtype() const { return dtype_; }  // of the matrices (the most common one)
  const LayerView& layer(int64_t l) const { return layers_[l]; }
  const MatrixView& embed() const { return embed_; }
  const MatrixView& lm_head() const { return lm_head_; }
  const float* final_norm() const { return final_norm_; }
  const RopeTable& rope() const { return rope_; }

  // Restricts MoE layer l to the given ORIGINAL routed expert indices (ascending, unique) plus the shared
  // expert(s), and loads them. Throws for an index that is not a routed expert of the layer.
  void keep_experts(int64_t l, std::vector<int32_t> routed);
  // Lifts the restriction of layer l: every expert may be used again (loaded when first needed).
  void keep_all_experts(int64_t l);
  // The kept routed experts of layer l, or null when the layer uses all of them.
  const std::vector<int32_t>* kept(int64_t l) const;
  bool restricted(int64_t l) const { return kept(l) != nullptr; }
  // Loads expert e of layer l (no-op when loaded). Not thread-safe: call before fanning out to threads.
  // Throws when the layer is restricted and e is neither kept nor shared.
  const ExpertView& load_expert(int64_t l, int64_t e);
  // The loaded expert e of layer l (load_expert first). The dense MLP is expert 0.
  const ExpertView& expert(int64_t l, int64_t e) const;
  bool expert_loaded(int64_t l, int64_t e) const;
  int64_t experts_loaded() const;
  // Unloads expert e of layer l (no-op when not loaded): the whole pages of its byte ranges are dropped from
  // this process's mapping (MADV_DONTNEED; they are read again from the file when next loaded), a converted
  // copy is freed. The caller guarantees no decoding uses it meanwhile. Not thread-safe.
  void unload_expert(int64_t l, int64_t e);
  // Bytes expert e of layer l occupies while loaded: its stored matrices (scales included), or the fp32 copy
  // of an f16 one.
  int64_t expert_bytes(int64_t l, int64_t e) const;
  // Byte ranges of expert e of layer l in the mapping (its three matrices, scales included).
  std::vector<MemoryRange> expert_ranges(int64_t l, int64_t e) const;

  // The memory the weights live in, by component. Experts: only the loaded ones; `unloaded_experts` adds
  // the ranges of the others under "experts_not_loaded" (to show that they stay out of memory).
  std::vector<MemoryRange> memory_ranges(bool unloaded_experts = false) const;
  // Bytes one decode step reads when each token uses `experts_per_token` experts per layer: every
  // non-expert matrix (the embedding: one row) plus that many experts' matrices per layer.
  int64_t bytes_per_token(int64_t experts_per_token) const;
  // Bytes of the weights a run with the current restriction needs: everything but the experts, plus the
  // kept (or all) experts of every layer.
  int64_t kept_weight_bytes() const;

 private:
  InferWeights() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ModelConfig config_;
  std::string dir_;
  DType dtype_ = DType::kF32;
  std::vector<LayerView> layers_;
  MatrixView embed_, lm_head_;
  const float* final_norm_ = nullptr;
  RopeTable rope_;
};

}  // namespace emo
