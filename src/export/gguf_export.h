// `emo export gguf`: an EMO (or standard MoE) checkpoint as a GGUF file that stock llama.cpp runs with EMO's
// semantics (docs/export.md). The mapping: llama.cpp's "qwen2moe" architecture; routed experts stacked as
// ffn_{gate,up,down}_exps and routed by softmax over the routed experts, top-k raw probabilities (no
// renormalisation); the shared expert(s) as ffn_{gate,up,down}_shexp (several shared experts concatenated
// into one wider SwiGLU, which sums them), whose sigmoid gate llama.cpp computes as silu(g)/g: its gate
// weights are 1e-20 so that g is tiny but not zero and the gate is exactly 0.5, and the shared down
// projection is stored x2 (exact in every format: a power of two), so the shared expert enters with weight 1;
// zero q/k/v biases (older llama.cpp requires them); NeoX RoPE (qwen2moe's); the byte-level BPE tokenizer
// embedded (tokenizer.ggml.model "gpt2", pre-tokenizer "dbrx" = cl100k's regex).
#pragma once

#include <cstdint>
#include <string>

namespace emo {

struct GgufExportOptions {
  // f32, bf16, q8_0, q4_0 (its embedding and output at q8_0) or q4_k (llama-quantize's Q4_K_M mix of Q4_K
  // and Q6_K); norms, biases and routers stay f32.
  std::string dtype = "f32";
  std::string tokenizer;  // tokenizer.json; default MODEL/tokenizer.json
  std::string name;       // general.name; default the model directory's name
  bool force = false;     // replace an earlier output of emo export gguf at the output path
};

// The metadata key emo writes second (after general.architecture), "emo <version>": it marks the file as
// emo's output, which --force may replace; any other file at the output path is never overwritten.
inline constexpr const char* kGgufExporterKey = "emo.exporter";

struct GgufExportSummary {
  int64_t tensors = 0, bytes = 0, layers = 0, routed_experts = 0, used_experts = 0;
};

// Writes `model_dir` (fp32, bf16, f16 or int8 weights) to `out_path` atomically (a temporary name beside it,
// renamed when complete), after the output guard of io/output_dir (check_new_output_file): an existing file
// is replaced only when emo's exporter wrote it and options.force is set, and the output may not be one of
// the model's files or the tokenizer. Throws emo::Error for a
// dense model, layers with different expert counts (llama.cpp needs one count for every layer: export a
// uniform pruned subset instead), norm_topk_prob (qwen2moe does not renormalise), a width that the chosen
// block format cannot hold, or a tokenizer that does not fit the embedding.
GgufExportSummary export_gguf(const std::string& model_dir, const std::string& out_path,
                              const GgufExportOptions& options);

}  // namespace emo
