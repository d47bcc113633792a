// Merging a (fine-tuned) pruned model back into its parent (docs/emo.md §5): the pruned model's
// experts and router rows are written into the parent at their ORIGINAL indices, read from the pruned model's
// pruning_metadata.json ("kept_original_indices": per layer, pruned order). Every other tensor of the output
// is the parent's, unchanged (attention, norms, embeddings, dropped experts).
//   replace  the parent's kept experts / router rows become the pruned model's
//   average  they become the mean of the parent's and the pruned model's (a softer merge)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/output_dir.h"

namespace emo {

enum class MergeMode { kReplace, kAverage };

// "replace" or "average"; emo::Error otherwise.
MergeMode parse_merge_mode(const std::string& name);

struct MergeSummary {
  int64_t tensors_merged = 0;  // expert matrices and routers taken (or averaged) from the pruned model
  int64_t tensors = 0;         // tensors written
  // Tensors other than experts and routers where the pruned model differs from the parent (a fine-tune of
  // every parameter): the merge keeps the parent's, so these changes are not carried back.
  std::vector<std::string> other_tensors_differing;
  double seconds = 0;
};

// Writes parent + pruned experts to out_dir (Hugging Face layout, the parent's dtypes, config.json and
// tokenizer.json of the parent, plus merge_metadata.json). Throws emo::Error naming the file when the pruned
// model does not come from a model of the parent's shape (layer count, expert indices, tensor shapes).
// out_dir is written through io/output_dir under `rules` (both models are added to its inputs).
MergeSummary merge_checkpoint(const std::string& parent_dir, const std::string& pruned_dir,
                              const std::string& out_dir, MergeMode mode,
                              OutputRules rules = {"merge", {}, false});

}  // namespace emo
