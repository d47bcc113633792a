// Weight formats for inference (docs/inference.md): a checkpoint rewritten in bf16, in int8 with one fp32
// scale per row (emo-specific naming: "<name>" I8 [rows, cols] plus "<name>_scale" F32 [rows]; w = scale *
// q), or in 4-bit Q4_0 blocks (llama.cpp's layout, stored as U8 bytes: io/safetensors kQ4MetadataKey). int8
// covers every matrix but the routers (kept fp32 so routing decisions keep their precision; they are tiny);
// q4 covers the attention and expert (MLP) projections, and keeps the embeddings and lm_head in int8 (or
// bf16) and the routers in fp32. Norms stay fp32. And the quality check of a format: held-out perplexity
// against the original.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eval/perplexity.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "kernels/q4.h"
#include "model/model.h"
#include "tensor/dtype.h"
#include "tokenizer/tokenizer.h"

namespace emo {

struct QuantizeSummary {
  int64_t tensors = 0;    // written (scales not counted)
  int64_t converted = 0;  // matrices stored in the new format
  int64_t bytes_in = 0, bytes_out = 0;
};

// The format to write: kBF16, kI8 or kQ4_0; for kQ4_0, `others` is the dtype of the embeddings and lm_head
// (kI8 or kBF16) and `scale` how each block's scale is chosen.
struct QuantizeTarget {
  DType dtype = DType::kI8;
  DType others = DType::kI8;
  Q4Scale scale = Q4Scale::kFitted;
  QuantizeTarget(DType dtype_ = DType::kI8) : dtype(dtype_) {}  // NOLINT: a dtype is a target
};

// What quantize_checkpoint records of a target: the safetensors metadata of its weight files (format pt,
// emo_weight_format) and, in the config, torch_dtype and (int8, q4) the "quantization_config" entry. For
// writers of checkpoints in these formats that do not start from a float checkpoint (bench_infer's released
// shapes).
SafetensorsMetadata quantized_metadata(const QuantizeTarget& target);
void describe_quantization(ModelConfig& config, const QuantizeTarget& target);

// Writes the weights of `model_dir` (fp32, bf16 or f16; single file or shards) to `out_dir` in the target
// format, with config.json (torch_dtype, and for int8 and q4 a "quantization_config" entry) and, when
// present, tokenizer.json and pruning_metadata.json. Shards of at most max_shard_bytes. Throws emo::Error for
// an unsupported target, an input that is already quantised, or (q4) a matrix whose rows are not whole
// blocks of 32, naming the tensor. out_dir is written through io/output_dir under `rules` (model_dir is added
// to its inputs).
QuantizeSummary quantize_checkpoint(const std::string& model_dir, const std::string& out_dir,
                                    const QuantizeTarget& target, OutputRules rules = {"quantize", {}, false},
                                    int64_t max_shard_bytes = 5'000'000'000);

// A training-engine Model with the checkpoint's weights in fp32 (int8 matrices dequantised with their
// scales, q4 blocks dequantised): the reference the inference engine is tested against, and what perplexity
// is computed with.
std::unique_ptr<Model> load_model_dequantized(const std::string& dir);

// A one-domain ("text") tokenised dataset file made from a plain text file, for held-out perplexity when no
// tokenised split is at hand.
void write_text_dataset(const std::string& text_path, const Tokenizer& tokenizer,
                        const std::string& out_path);

// Held-out perplexity of each checkpoint directory over `dataset_path` (eval's evaluate_domains, all domains
// pooled: the "all" entry), standard routing.
std::vector<DomainLoss> perplexity_of_checkpoints(const std::vector<std::string>& dirs,
                                                  const std::string& dataset_path,
                                                  const PerplexityOptions& options);

}  // namespace emo
