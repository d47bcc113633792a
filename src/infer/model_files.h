// Where the files of a model are: the MODEL argument of a command resolved to a model directory, and the
// tokenizer that goes with it. One place for every command that takes a model, so they all accept the same
// paths and look for the tokenizer in the same places.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace emo {

// The model directory MODEL names: a directory with config.json and weights (model.safetensors or the shards
// of model.safetensors.index.json), a training run directory, its checkpoints/ directory or the
// checkpoints/latest file (each resolved to the latest complete step). Throws "[op] MODEL: ..." saying what
// was looked for when none of these is found.
std::string resolve_model_dir(const std::string& model, const std::string& op);

// The paths a tokenizer of the model in model_dir is looked for at, in order: tokenizer.json beside the
// weights (as Hugging Face repositories, emo prune, emo quantize and training checkpoints keep it).
std::vector<std::string> tokenizer_candidates(const std::string& model_dir);
// The first candidate that exists, or nullopt.
std::optional<std::string> find_tokenizer(const std::string& model_dir);
// `option` (a --tokenizer FILE) when given, else the tokenizer found beside the model. Throws "[op] no
// tokenizer for MODEL: looked for ...; give --tokenizer FILE" when there is none.
std::string tokenizer_path_for(const std::string& model_dir, const std::string& option,
                               const std::string& op);

// The tokenizer of tokenizer_path_for(), checked against the model's embedding: a tokenizer with more ids
// than the model's vocab_size (another model's tokenizer) throws "[op] TOKENIZER: the tokenizer has N
// tokens but the model MODEL has an embedding of M rows".
Tokenizer load_tokenizer_for(const std::string& model_dir, const std::string& option, int64_t model_vocab,
                             const std::string& op);

}  // namespace emo
