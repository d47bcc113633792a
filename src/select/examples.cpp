#include "select/examples.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/dataset.h"
#include "io/json_file.h"

namespace emo {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("examples", path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

ExampleText example_of_line(const std::string& line, const std::string& path, int64_t line_no) {
  const nlohmann::json j = parse_json(line, path, "examples", line_no);
  if (j.contains("text") && j["text"].is_string()) return {j["text"].get<std::string>()};
  if (j.contains("context") && j["context"].is_string()) {
    std::string text = j["context"].get<std::string>();
    if (!j.contains("answer") || !j["answer"].is_string()) return {text};
    const size_t answer_at = text.size();
    return {text + j["answer"].get<std::string>(), answer_at};
  }
  fail_at("examples", path, cat("line ", line_no), "needs a string \"text\" or \"context\" (+ \"answer\")");
}

}  // namespace

int64_t Examples::num_tokens() const {
  int64_t total = 0;
  for (const auto& s : sequences) total += static_cast<int64_t>(s.size());
  return total;
}

std::vector<ExampleText> read_examples(const std::string& path) {
  if (!ends_with(path, ".jsonl") && !ends_with(path, ".json")) return {ExampleText(read_whole(path))};
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("examples", path, "cannot open");
  std::vector<ExampleText> examples;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    examples.push_back(example_of_line(line, path, line_no));
  }
  return examples;
}

std::vector<std::string> read_example_texts(const std::string& path) {
  std::vector<std::string> texts;
  for (ExampleText& e : read_examples(path)) texts.push_back(std::move(e.text));
  return texts;
}

Examples examples_from_file(const std::string& path, const Tokenizer& tokenizer) {
  Examples examples;
  for (const std::string& text : read_example_texts(path)) {
    std::vector<int32_t> ids = tokenizer.encode_ordinary(text);
    if (!ids.empty()) examples.sequences.push_back(std::move(ids));
  }
  if (examples.sequences.empty()) fail_file("examples", path, "holds no non-empty example");
  examples.description = path;
  return examples;
}

Examples examples_from_dataset(const std::string& dataset_path, const std::string& domain, int64_t count) {
  data::Dataset dataset = data::Dataset::open(dataset_path);
  const int domain_id = dataset.domain_index(domain);
  if (domain_id < 0) fail_file("examples", dataset_path, cat("no domain named '", domain, "'"));
  Examples examples;
  for (int64_t d = 0; d < dataset.num_documents(); ++d) {
    if (count > 0 && static_cast<int64_t>(examples.sequences.size()) >= count) break;
    if (dataset.domain_of(d) != static_cast<uint32_t>(domain_id) || dataset.document_length(d) == 0) continue;
    auto doc = dataset.document(d);
    examples.sequences.emplace_back(doc.begin(), doc.end());
  }
  if (examples.sequences.empty())
    fail_file("examples", dataset_path, cat("domain '", domain, "' has no document"));
  examples.description =
      cat(examples.sequences.size(), " documents of domain ", domain, " from ", dataset_path);
  return examples;
}

void truncate_examples(Examples& examples, int64_t max_len) {
  for (auto& s : examples.sequences)
    if (static_cast<int64_t>(s.size()) > max_len) s.resize(max_len);
}

}  // namespace emo
