// Multiple-choice tasks scored by log-likelihood (docs/tasks.md): each choice is scored as the sum of the log
// probabilities of its tokens after the prompt; the prediction is the choice with the largest sum (accuracy)
// or the largest sum per byte of the choice text (length-normalised accuracy, lm-eval's acc_norm).
//
// Task file: JSONL, one question per line:
//   {"context": "Question: ...\nAnswer:", "choices": [" Paris", " Rome", ...], "gold": 0}
// Lines with "fewshot": true are demonstrations, not scored: each is written as context + choices[gold] and
// they are joined (in file order, separated by "\n\n") in front of every question's context.
// Built-in tasks: make_next_segment_task (from a tokenised dataset, on token ids) and the dictionary task of
// eval/dictionary_task.h (from a corpus split's text).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/dataset.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace emo {

struct McQuestion {
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;
};

struct McTask {
  std::string name;
  std::vector<McQuestion> fewshot;    // demonstrations, in order
  std::vector<McQuestion> questions;  // scored
  std::string separator = "\n\n";     // between demonstrations and the question
};

// A question already in token ids (the prompt includes any demonstrations).
struct McTokenQuestion {
  std::vector<int32_t> prompt;
  std::vector<std::vector<int32_t>> choices;
  std::vector<int64_t> choice_bytes;  // length of each choice for the normalised accuracy
  int64_t gold = 0;
};

struct McResult {
  std::string task;
  int64_t questions = 0;
  double accuracy = 0;
  double accuracy_norm = 0;  // by log-likelihood per byte of the choice
};

// Reads a task file; emo::Error naming the file and line for a malformed question (no choices, gold out of
// range, missing fields). The task's name is the file name without directory and extension.
McTask load_mc_task(const std::string& path);

// Writes a task in the file format load_mc_task reads (demonstrations first, marked "fewshot"), atomically.
void save_mc_task(const McTask& task, const std::string& path);

// The prompt of a question: demonstrations, separator, context.
std::string mc_prompt(const McTask& task, const McQuestion& question);

// Tokenised questions of a task (prompt and each choice encoded separately, then concatenated).
std::vector<McTokenQuestion> tokenize_mc_task(const McTask& task, const Tokenizer& tokenizer);

// Sum of log p(choice tokens | prompt) for every choice, in one forward of all choices (rows padded at the
// end). A prompt too long for the context loses its first tokens.
std::vector<double> choice_log_likelihoods(const Model& model, const McTokenQuestion& question,
                                           const RoutingOptions& routing);

// Accuracy and normalised accuracy over the questions (limit > 0: only the first `limit`).
McResult evaluate_mc(const Model& model, const std::string& task_name,
                     const std::vector<McTokenQuestion>& questions, const RoutingOptions& routing,
                     int64_t limit = 0);

// `count` distinct indices of [0, n) other than `exclude` (the distractors of a question), by a partial
// Fisher-Yates shuffle drawing from rng.
std::vector<int64_t> distinct_others(Rng& rng, int64_t n, int64_t exclude, int64_t count);

// A built-in task per domain: next-segment choice. For up to `count` documents of `domain` with at least
// prompt_len + choice_len tokens, the prompt is the first prompt_len tokens and the gold choice the next
// choice_len; the distractors are segments of the same length from other documents of the same domain
// (num_choices - 1 of them, chosen with a seeded RNG). choice_bytes counts tokens here.
std::vector<McTokenQuestion> make_next_segment_task(const data::Dataset& dataset, const std::string& domain,
                                                    int64_t count, int64_t prompt_len, int64_t choice_len,
                                                    int64_t num_choices, uint64_t seed);

nlohmann::json mc_results_json(const std::vector<McResult>& results);
// A fixed-width table: task, questions, accuracy, normalised accuracy.
std::string mc_results_table(const std::vector<McResult>& results);

}  // namespace emo
