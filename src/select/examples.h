// Calibration examples for expert selection (docs/emo.md §5): the token sequences whose routing
// statistics choose the experts. One example is enough.
//   plain text file   the whole file is one example
//   JSONL (.jsonl)    one example per line: {"text": ...} or {"context": ..., "answer": ...} (context +
//   answer) dataset           the first N documents of domain D of a tokenised split (data/dataset.h)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace emo {

struct Examples {
  std::vector<std::vector<int32_t>> sequences;  // token ids of each example
  std::string description;                      // for the subset file's calibration record

  int64_t num_tokens() const;
};

// One example of a file: its text and, for a {"context", "answer"} line, where the answer starts in it.
struct ExampleText {
  ExampleText(std::string text, std::optional<size_t> answer_at = std::nullopt)
      : text(std::move(text)), answer_at(answer_at) {}
  ExampleText(const char* text) : text(text) {}
  std::string text;
  std::optional<size_t> answer_at;
};

// Examples of a plain text or JSONL file (JSONL when the name ends in .jsonl or .json, else one text).
std::vector<ExampleText> read_examples(const std::string& path);
// Their texts alone.
std::vector<std::string> read_example_texts(const std::string& path);

// Tokenised examples of a plain text or JSONL file. Empty examples are skipped; none left is an error.
Examples examples_from_file(const std::string& path, const Tokenizer& tokenizer);

// The first `count` non-empty documents of `domain` in the dataset file (count <= 0: all of them).
Examples examples_from_dataset(const std::string& dataset_path, const std::string& domain, int64_t count);

// Cuts every sequence to at most max_len tokens (the model's context), keeping the start.
void truncate_examples(Examples& examples, int64_t max_len);

}  // namespace emo
