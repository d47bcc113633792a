// Legend: C = width, F = expert width, V = vocab, E = experts of a layer, H/Hkv = query/kv heads, hd = head
// dim.
#include "infer/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <set>

#include "core/error.h"
#include "model/weights_check.h"

namespace emo {
namespace {

constexpr const char* kOp = "infer";
// Companion tensor of an int8 matrix: "<name>_scale", F32 [rows] (emo-specific, docs/inference.md).
constexpr const char* kScaleSuffix = "_scale";

std::string layer_prefix(int64_t l) {
  return "model.layers." + std::to_string(l) + ".";
}

std::string expert_prefix(const ModelConfig& config, int64_t l, int64_t e) {
  return config.is_moe() ? layer_prefix(l) + "mlp.experts." + std::to_string(e) + "."
                         : layer_prefix(l) + "mlp.";
}

// Reading a checkpoint at random (a few experts here and there): no read-around that would pull in the
// neighbouring experts' pages.
void advise_random(const SafetensorsFile& file) {
  uintptr_t base = 0, end = 0;
  for (const auto& [name, info] : file.tensors()) {
    base = reinterpret_cast<uintptr_t>(info.data) - info.file_offset;
    end = std::max<uintptr_t>(end, reinterpret_cast<uintptr_t>(info.data) + info.nbytes);
  }
  if (base != 0 && end > base) ::madvise(reinterpret_cast<void*>(base), end - base, MADV_RANDOM);
}

// madvise over the whole pages of [p, p + bytes).
void advise_pages(const void* p, int64_t bytes, int advice) {
  if (bytes <= 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes);
  ::madvise(reinterpret_cast<void*>(begin), end - begin, advice);
}

// Asks the kernel to read [p, p + bytes) ahead.
void advise_willneed(const void* p, int64_t bytes) {
  advise_pages(p, bytes, MADV_WILLNEED);
}

// Drops the whole pages inside [p, p + bytes) from this process (a read-only file mapping: they are read
// again from the file when touched). Pages shared with a neighbouring tensor stay.
void advise_dontneed(const void* p, int64_t bytes) {
  if (bytes <= 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes)) & ~(page - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// The ranges sorted and merged where they touch (an expert's three matrices usually lie back to back, so
// the pages between them are whole pages of the expert).
std::vector<MemoryRange> merged(std::vector<MemoryRange> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const MemoryRange& a, const MemoryRange& b) {
    return reinterpret_cast<uintptr_t>(a.begin) < reinterpret_cast<uintptr_t>(b.begin);
  });
  std::vector<MemoryRange> out;
  for (const MemoryRange& r : ranges) {
    const auto* begin = static_cast<const char*>(r.begin);
    if (!out.empty() && static_cast<const char*>(out.back().begin) + out.back().bytes == begin)
      out.back().bytes += r.bytes;
    else
      out.push_back(r);
  }
  return out;
}

bool is_float(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}

}  // namespace

struct InferWeights::Impl {
  struct ExpertSlot {
    bool loaded = false;
    ExpertView view;
    std::deque<std::vector<float>> converted;  // fp32 copies of its f16 matrices, freed when unloaded
  };
  SafetensorsCheckpoint checkpoint;
  std::deque<std::vector<float>> owned;          // fp32 copies of what the kernels cannot read in place
  std::vector<std::vector<ExpertSlot>> experts;  // [L][E]
  std::vector<std::unique_ptr<std::vector<int32_t>>> kept;  // [L]; null = all routed experts
  std::set<std::string> expected;  // every tensor name the model uses (scales included)
  std::string dir;

  const TensorInfo& tensor(const std::string& name, const Shape& shape) {
    if (!checkpoint.contains(name))
      fail_file(kOp, dir, cat("no tensor '", name, "' (the config.json implies it)"));
    const TensorInfo& info = checkpoint.info(name);
    if (info.shape != shape)
      fail_file(kOp, checkpoint.file_of(name).path(),
                cat("tensor '", name, "' has shape ", shape_str(info.shape), ", the config.json implies ",
                    shape_str(shape)));
    expected.insert(name);
    return info;
  }

  // Checks matrix `name` [rows, cols] and, for int8, its scales; returns the view. `use`: the matrix is
  // loaded for use now (its values checked for NaN / infinity, f16 converted into `into`, or into `owned`
  // when null), not only its header checked.
  MatrixView matrix(const std::string& name, int64_t rows, int64_t cols, bool use,
                    std::deque<std::vector<float>>* into = nullptr) {
    const TensorInfo& info = tensor(name, {rows, cols});
    if (use) check_finite(checkpoint, name);
    MatrixView view;
    view.rows = rows, view.cols = cols, view.dtype = info.dtype, view.data = info.data;
    if (info.dtype == DType::kI8) {
      const std::string scale = name + kScaleSuffix;
      if (!checkpoint.contains(scale))
        fail_file(kOp, checkpoint.file_of(name).path(),
                  cat("int8 tensor '", name, "' has no row scales '", scale, "'"));
      const TensorInfo& s = tensor(scale, {rows});
      if (s.dtype != DType::kF32)
        fail_file(kOp, checkpoint.file_of(scale).path(),
                  cat("tensor '", scale, "' has dtype ", dtype_name(s.dtype), ", row scales must be F32"));
      if (use) check_finite(checkpoint, scale);
      view.scales = static_cast<const float*>(s.data);
    } else if (!is_float(info.dtype) && info.dtype != DType::kQ4_0) {
      fail_file(kOp, checkpoint.file_of(name).path(),
                cat("tensor '", name, "' has dtype ", dtype_name(info.dtype),
                    ", which inference does not support (F32, BF16, F16, Q4_0, or I8 with '", name,
                    kScaleSuffix, "')"));
    } else if (info.dtype == DType::kF16 && use) {
      view.dtype = DType::kF32;
      view.data = to_f32(info, into ? *into : owned);
    }
    return view;
  }

  // A 1-D fp32 vector (norm weights): in place when stored as F32, else converted.
  const float* vector(const std::string& name, int64_t n) {
    const TensorInfo& info = tensor(name, {n});
    check_finite(checkpoint, name);
    if (!is_float(info.dtype))
      fail_file(
          kOp, checkpoint.file_of(name).path(),
          cat("tensor '", name, "' has dtype ", dtype_name(info.dtype), ", norms must be F32, BF16 or F16"));
    if (info.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(info.data) % alignof(float) == 0)
      return static_cast<const float*>(info.data);
    return to_f32(info, owned);
  }

  // The embedding [V, C]. Checking its values reads all its pages, but a run reads only the rows of its
  // tokens: unless tied (then it is the LM head, read whole), the pages leave the process's resident set
  // piece by piece as they are checked (they stay in the page cache), so the check raises no peak RSS.
  MatrixView embedding(int64_t V, int64_t C, bool tied) {
    const std::string name = "model.embed_tokens.weight";
    const TensorInfo& info = checkpoint.info(name);
    if (tied || info.dtype == DType::kF16) return matrix(name, V, C, true);
    MatrixView view = matrix(name, V, C, false);
    check_finite(info, checkpoint.file_of(name).path(),
                 [](const void* p, int64_t bytes) { advise_dontneed(p, bytes); });
    if (view.scales) check_finite(checkpoint, name + kScaleSuffix);
    return view;
  }

  const float* to_f32(const TensorInfo& info, std::deque<std::vector<float>>& into) {
    into.emplace_back(static_cast<size_t>(info.numel()));
    convert_to_f32(info.dtype, info.data, into.back().data(), into.back().size());
    return into.back().data();
  }

  // The views of expert e of layer l; f16 matrices converted into `into` when given (else only checked).
  ExpertView expert_view(const ModelConfig& config, int64_t l, int64_t e,
                         std::deque<std::vector<float>>* into) {
    const int64_t C = config.hidden_size, F = config.intermediate_size;
    const std::string p = expert_prefix(config, l, e);
    const bool convert = into != nullptr;
    return {matrix(p + "gate_proj.weight", F, C, convert, into),
            matrix(p + "up_proj.weight", F, C, convert, into),
            matrix(p + "down_proj.weight", C, F, convert, into)};
  }
};

std::unique_ptr<InferWeights> InferWeights::open(const std::string& dir) {
  std::unique_ptr<InferWeights> w(new InferWeights());
  w->dir_ = dir;
  CheckedCheckpoint opened = open_checked_checkpoint(dir);
  w->config_ = std::move(opened.config);
  const ModelConfig& config = w->config_;
  EMO_CHECK(!config.attention_bias, kOp, dir, ": attention_bias is true; EMO / OLMoE-style models have none");
  w->impl_ = std::make_unique<Impl>();
  Impl& im = *w->impl_;
  im.dir = dir;
  im.checkpoint = std::move(opened.weights);
  for (const SafetensorsFile& file : im.checkpoint.files()) advise_random(file);

  const int64_t C = config.hidden_size, V = config.vocab_size, hd = config.head_dim();
  const int64_t H = config.num_attention_heads, Hkv = config.num_key_value_heads,
                L = config.num_hidden_layers;
  w->embed_ = im.embedding(V, C, config.tie_word_embeddings);
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = layer_prefix(l);
    LayerView layer;
    layer.attn_norm = im.vector(p + "pre_attention_layernorm.weight", C);
    layer.q = im.matrix(p + "self_attn.q_proj.weight", H * hd, C, true);
    layer.k = im.matrix(p + "self_attn.k_proj.weight", Hkv * hd, C, true);
    layer.v = im.matrix(p + "self_attn.v_proj.weight", Hkv * hd, C, true);
    layer.o = im.matrix(p + "self_attn.o_proj.weight", C, H * hd, true);
    layer.ffn_norm = im.vector(p + "pre_feedforward_layernorm.weight", C);
    const int64_t E = config.is_moe() ? config.experts_in_layer(l) : 1;
    if (config.is_moe()) layer.router = im.matrix(p + "mlp.gate.weight", E, C, true);
    // Every expert's header is checked now; the views are made again (and f16 converted) when loaded.
    for (int64_t e = 0; e < E; ++e) im.expert_view(config, l, e, nullptr);
    w->layers_.push_back(layer);
    im.experts.emplace_back(static_cast<size_t>(E));
    im.kept.emplace_back();
  }
  w->final_norm_ = im.vector("model.norm.weight", C);
  w->lm_head_ = config.tie_word_embeddings ? w->embed_ : im.matrix("lm_head.weight", V, C, true);
  w->dtype_ = im.checkpoint.info("model.layers.0.self_attn.q_proj.weight").dtype;

  std::vector<std::string> unexpected;
  for (const std::string& name : im.checkpoint.names())
    if (!im.expected.count(name)) unexpected.push_back(name);
  if (!unexpected.empty())
    fail_file(kOp, dir,
              cat(unexpected.size(),
                  " tensor(s) that an EMO / OLMoE-style model of this config.json does not have, ", "e.g. '",
                  unexpected.front(), "' (not an EMO checkpoint, or config.json does not match it)"));
  w->rope_ = rope_table(hd, config.max_position_embeddings, config.rope_theta);
  return w;
}

InferWeights::~InferWeights() = default;

void InferWeights::keep_experts(int64_t l, std::vector<int32_t> routed) {
  EMO_CHECK(config_.is_moe(), kOp, "the model is dense: there are no experts to keep");
  EMO_CHECK(l >= 0 && l < config_.num_hidden_layers, kOp, "no layer ", l);
  const int64_t Er = config_.routed_in_layer(l);
  std::sort(routed.begin(), routed.end());
  for (size_t i = 0; i < routed.size(); ++i) {
    EMO_CHECK(routed[i] >= 0 && routed[i] < Er, kOp, "layer ", l, ": expert ", routed[i],
              " is not a routed expert (0..", Er - 1, ")");
    EMO_CHECK(i == 0 || routed[i] != routed[i - 1], kOp, "layer ", l, ": expert ", routed[i], " kept twice");
  }
  EMO_CHECK(!routed.empty(), kOp, "layer ", l, ": keeps no routed expert");
  impl_->kept[l] = std::make_unique<std::vector<int32_t>>(std::move(routed));
  for (int32_t e : *impl_->kept[l]) load_expert(l, e);
  for (int64_t e = Er; e < config_.experts_in_layer(l); ++e) load_expert(l, e);
}

void InferWeights::keep_all_experts(int64_t l) {
  EMO_CHECK(l >= 0 && l < config_.num_hidden_layers, kOp, "no layer ", l);
  impl_->kept[l].reset();
}

const std::vector<int32_t>* InferWeights::kept(int64_t l) const {
  return impl_->kept[l].get();
}

const ExpertView& InferWeights::load_expert(int64_t l, int64_t e) {
  auto& slot = impl_->experts.at(l).at(e);
  if (slot.loaded) return slot.view;
  const std::vector<int32_t>* kept_list = kept(l);
  const bool shared = !config_.is_moe() || e >= config_.routed_in_layer(l);
  EMO_CHECK(!kept_list || shared || std::binary_search(kept_list->begin(), kept_list->end(), e), kOp,
            "layer ", l, ": expert ", e, " is not in the kept subset");
  slot.view = impl_->expert_view(config_, l, e, &slot.converted);
  if (slot.converted.empty())
    for (const MemoryRange& r : expert_ranges(l, e)) advise_willneed(r.begin, r.bytes);
  else  // read once for the copy, never again
    for (const MemoryRange& r : merged(expert_ranges(l, e))) advise_dontneed(r.begin, r.bytes);
  slot.loaded = true;
  return slot.view;
}

void InferWeights::unload_expert(int64_t l, int64_t e) {
  auto& slot = impl_->experts.at(l).at(e);
  if (!slot.loaded) return;
  slot.loaded = false;
  slot.view = {};
  slot.converted.clear();
  for (const MemoryRange& r : merged(expert_ranges(l, e))) advise_dontneed(r.begin, r.bytes);
}

int64_t InferWeights::expert_bytes(int64_t l, int64_t e) const {
  int64_t bytes = 0;
  for (const MemoryRange& r : expert_ranges(l, e)) bytes += r.bytes;
  const TensorInfo& gate = impl_->checkpoint.info(expert_prefix(config_, l, e) + "gate_proj.weight");
  // An f16 expert lives as its fp32 copy: twice the stored bytes.
  return gate.dtype == DType::kF16 ? 2 * bytes : bytes;
}

const ExpertView& InferWeights::expert(int64_t l, int64_t e) const {
  const auto& slot = impl_->experts.at(l).at(e);
  EMO_CHECK(slot.loaded, kOp, "layer ", l, ": expert ", e, " used before it was loaded");
  return slot.view;
}

bool InferWeights::expert_loaded(int64_t l, int64_t e) const {
  return impl_->experts.at(l).at(e).loaded;
}

int64_t InferWeights::experts_loaded() const {
  int64_t n = 0;
  for (const auto& layer : impl_->experts)
    for (const auto& slot : layer) n += slot.loaded ? 1 : 0;
  return n;
}

std::vector<MemoryRange> InferWeights::expert_ranges(int64_t l, int64_t e) const {
  const std::string p = expert_prefix(config_, l, e);
  std::vector<MemoryRange> ranges;
  for (const char* m : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
    const std::string name = p + m;
    const TensorInfo& info = impl_->checkpoint.info(name);
    ranges.push_back({"experts", info.data, static_cast<int64_t>(info.nbytes)});
    if (info.dtype == DType::kI8) {
      const TensorInfo& s = impl_->checkpoint.info(name + kScaleSuffix);
      ranges.push_back({"experts", s.data, static_cast<int64_t>(s.nbytes)});
    }
  }
  return ranges;
}

std::vector<MemoryRange> InferWeights::memory_ranges(bool unloaded_experts) const {
  std::vector<MemoryRange> ranges;
  auto add = [&](const char* component, const void* p, int64_t bytes) {
    ranges.push_back({component, p, bytes});
  };
  auto add_matrix = [&](const char* component, const MatrixView& m) {
    add(component, m.data, m.rows * matrix_row_bytes(m.dtype, m.cols));
    if (m.scales) add(component, m.scales, m.rows * static_cast<int64_t>(sizeof(float)));
  };
  const int64_t C = config_.hidden_size, norm_bytes = C * static_cast<int64_t>(sizeof(float));
  add_matrix("embeddings", embed_);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerView& layer = layers_[l];
    for (const MatrixView* m : {&layer.q, &layer.k, &layer.v, &layer.o}) add_matrix("attention", *m);
    add("norms", layer.attn_norm, norm_bytes);
    add("norms", layer.ffn_norm, norm_bytes);
    if (config_.is_moe()) add_matrix("router", layer.router);
    for (size_t e = 0; e < impl_->experts[l].size(); ++e) {
      const bool loaded = impl_->experts[l][e].loaded;
      if (!loaded && !unloaded_experts) continue;
      for (MemoryRange r : expert_ranges(l, static_cast<int64_t>(e))) {
        if (!loaded) r.component = "experts_not_loaded";
        ranges.push_back(r);
      }
    }
  }
  add("norms", final_norm_, norm_bytes);
  if (!config_.tie_word_embeddings) add_matrix("lm_head", lm_head_);
  return ranges;
}

int64_t InferWeights::bytes_per_token(int64_t experts_per_token) const {
  const int64_t C = config_.hidden_size;
  int64_t bytes = embed_.nbytes() / std::max<int64_t>(1, embed_.rows) + lm_head_.nbytes();
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerView& layer = layers_[l];
    bytes +=
        layer.q.nbytes() + layer.k.nbytes() + layer.v.nbytes() + layer.o.nbytes() + layer.router.nbytes();
    bytes += 2 * C * static_cast<int64_t>(sizeof(float));
    int64_t expert_bytes = 0;
    for (const MemoryRange& r : expert_ranges(l, 0)) expert_bytes += r.bytes;
    bytes += experts_per_token * expert_bytes;
  }
  return bytes;
}

int64_t InferWeights::kept_weight_bytes() const {
  int64_t bytes = 0;
  for (const MemoryRange& r : memory_ranges(false))
    if (r.component != "experts") bytes += r.bytes;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const int64_t E = static_cast<int64_t>(impl_->experts[l].size());
    const int64_t used =
        kept(l) ? static_cast<int64_t>(kept(l)->size()) + (E - config_.routed_in_layer(l)) : E;
    int64_t expert_bytes = 0;
    for (const MemoryRange& r : expert_ranges(l, E - 1)) expert_bytes += r.bytes;
    bytes += used * expert_bytes;
  }
  return bytes;
}

}  // namespace emo
