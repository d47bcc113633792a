// Choosing the next token from logits: greedy (temperature 0) or sampled with temperature, top-k and top-p
// (nucleus), reproducible for a seed.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/rng.h"

namespace emo {

struct SamplingOptions {
  double temperature = 0.0;  // 0 = greedy (argmax, ties to the lower id)
  int64_t top_k = 0;         // keep the k most likely tokens; 0 = all
  double top_p = 1.0;        // keep the smallest most-likely set whose probability reaches top_p; 1 = all
  uint64_t seed = 0;
  // > 1 makes tokens already seen less likely (CTRL's definition, as Hugging Face's and llama.cpp's): a seen
  // token's logit is divided by it when positive and multiplied by it when negative. 1 = off.
  double repetition_penalty = 1.0;
};

// Applies options.repetition_penalty to `logits` [V] for every id in `seen` (each id once however often
// it was seen).
void apply_repetition_penalty(float* logits, int64_t V, const std::vector<int32_t>& seen, double penalty);

class Sampler {
 public:
  // Throws emo::Error for a negative temperature or top_k, top_p outside (0, 1], or a repetition penalty
  // that is not positive.
  explicit Sampler(const SamplingOptions& options);

  int32_t next(const float* logits, int64_t V);

  // The distribution `next` draws from: candidate ids by decreasing probability (ties: lower id first) and
  // their probabilities after temperature, top-k and top-p, renormalised to sum to 1.
  std::vector<std::pair<int32_t, double>> distribution(const float* logits, int64_t V) const;

 private:
  SamplingOptions options_;
  Rng rng_;
};

}  // namespace emo
