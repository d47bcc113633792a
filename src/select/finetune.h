// Short fine-tuning of a pruned model on task examples (docs/emo.md §5, the release's recipe:
// 1 epoch, lr 5e-5, batch 32): the loss is the cross-entropy of the ANSWER only, the tokens after the last
// occurrence of a marker ("Answer:" by default) in each example. AdamW (train/adamw.h) with a constant
// learning rate, gradients clipped to a global norm; no auxiliary router losses. By default only the experts
// and routers learn (what emo merge carries back to the parent); attention, norms and embeddings stay.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/output_dir.h"
#include "model/model.h"
#include "select/examples.h"
#include "tokenizer/tokenizer.h"

namespace emo {

struct FinetuneExample {
  std::vector<int32_t> tokens;  // prompt then answer
  int64_t answer_start = 0;     // index of the first answer token (>= 1)
};

struct FinetuneOptions {
  int64_t epochs = 1;
  double lr = 5e-5;
  int64_t batch = 32;  // examples per optimizer step
  double weight_decay = 0.0;
  double grad_clip = 1.0;  // 0 = none
  uint64_t seed = 0;       // order of the examples in each epoch
  // Update only the experts and the routers, the tensors `emo merge` writes back into the parent, so the
  // merged model restricted to the subset is exactly the fine-tuned one; false = every parameter.
  bool experts_only = true;
};

struct FinetuneReport {
  int64_t steps = 0, answer_tokens = 0;  // answer tokens per epoch
  int64_t params_trained = 0;
  std::vector<double> step_losses;  // mean answer cross-entropy of each step's batch (before the update)
};

// Splits each example into prompt and answer, both encoded as ordinary text and concatenated: a
// {"context", "answer"} example where its answer starts; any other at the END of the last occurrence of
// `marker` (prompt = text up to and including the marker, answer = the rest). A text without the marker,
// an empty prompt or an empty answer is an error naming the example.
std::vector<FinetuneExample> make_finetune_examples(const std::vector<ExampleText>& texts,
                                                    const Tokenizer& tokenizer, const std::string& marker);

// Mean answer cross-entropy of the examples (no update).
double answer_loss(const Model& model, const std::vector<FinetuneExample>& examples);

// The parameters a fine-tune updates: experts and routers ("mlp.experts.*", "mlp.gate.weight"), or all.
std::vector<Param> finetune_params(Model& model, bool experts_only);

FinetuneReport finetune(Model& model, const std::vector<FinetuneExample>& examples,
                        const FinetuneOptions& options);

// Writes the fine-tuned `model` as a whole output of `rules.command` at `out_dir` (io/output_dir: never over
// what emo did not write nor over an input, a previous output of its own only with rules.force), with the
// pruned model's pruning_metadata.json and tokenizer.json beside it (emo merge reads the metadata).
// `pruned_dir` is added to the inputs. Call check_new_output with the same rules before the fine-tune, so a
// refused output costs no training.
void save_finetuned(const Model& model, const std::string& pruned_dir, const std::string& out_dir,
                    OutputRules rules);

}  // namespace emo
