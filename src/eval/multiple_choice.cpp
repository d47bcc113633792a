// Legend: B = choices of a question (rows), T = longest row, V = vocab.
#include "eval/multiple_choice.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "model/forward_state.h"

namespace emo {
namespace {

McQuestion parse_question(const nlohmann::json& j, const std::string& path, int64_t line_no) {
  const std::string where = cat("line ", line_no);
  if (!j.is_object()) fail_at("tasks", path, where, "a question must be a JSON object");
  McQuestion q;
  if (!j.contains("context") || !j["context"].is_string())
    fail_at("tasks", path, where, "needs a string \"context\"");
  q.context = j["context"].get<std::string>();
  if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty())
    fail_at("tasks", path, where, "needs a non-empty array \"choices\"");
  for (const auto& c : j["choices"]) {
    if (!c.is_string() || c.get<std::string>().empty())
      fail_at("tasks", path, where, "every choice must be a non-empty string");
    q.choices.push_back(c.get<std::string>());
  }
  if (!j.contains("gold") || !j["gold"].is_number_integer())
    fail_at("tasks", path, where, "needs an integer \"gold\"");
  q.gold = j["gold"].get<int64_t>();
  if (q.gold < 0 || q.gold >= static_cast<int64_t>(q.choices.size()))
    fail_at("tasks", path, where,
            cat("gold ", q.gold, " is not a choice index (0..", q.choices.size() - 1, ")"));
  return q;
}

// log softmax(logits)[token] of one row [V].
double log_prob(const float* logits, int64_t V, int32_t token) {
  const float top = *std::max_element(logits, logits + V);
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[v]) - top);
  return static_cast<double>(logits[token]) - top - std::log(sum);
}

int64_t argmax(const std::vector<double>& values) {
  return std::max_element(values.begin(), values.end()) - values.begin();
}

}  // namespace

McTask load_mc_task(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("tasks", path, "cannot open");
  McTask task;
  task.name = std::filesystem::path(path).stem().string();
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = parse_json(line, path, "tasks", line_no);
    McQuestion q = parse_question(j, path, line_no);
    if (j.value("fewshot", false))
      task.fewshot.push_back(std::move(q));
    else
      task.questions.push_back(std::move(q));
  }
  if (task.questions.empty()) fail_file("tasks", path, "holds no question to score");
  return task;
}

void save_mc_task(const McTask& task, const std::string& path) {
  std::string text;
  auto add = [&](const McQuestion& q, bool fewshot) {
    nlohmann::json j = {{"context", q.context}, {"choices", q.choices}, {"gold", q.gold}};
    if (fewshot) j["fewshot"] = true;
    text += j.dump() + "\n";
  };
  for (const McQuestion& q : task.fewshot) add(q, true);
  for (const McQuestion& q : task.questions) add(q, false);
  atomic_write_file(path, text);
}

std::string mc_prompt(const McTask& task, const McQuestion& question) {
  std::string prompt;
  for (const McQuestion& demo : task.fewshot)
    prompt += demo.context + demo.choices[demo.gold] + task.separator;
  return prompt + question.context;
}

std::vector<McTokenQuestion> tokenize_mc_task(const McTask& task, const Tokenizer& tokenizer) {
  std::vector<McTokenQuestion> out;
  for (const McQuestion& q : task.questions) {
    McTokenQuestion t;
    t.prompt = tokenizer.encode_ordinary(mc_prompt(task, q));
    for (const std::string& choice : q.choices) {
      t.choices.push_back(tokenizer.encode_ordinary(choice));
      t.choice_bytes.push_back(static_cast<int64_t>(choice.size()));
    }
    t.gold = q.gold;
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<double> choice_log_likelihoods(const Model& model, const McTokenQuestion& question,
                                           const RoutingOptions& input_routing) {
  const ModelConfig& config = model.config();
  const int64_t max_len = config.max_position_embeddings, V = config.vocab_size;
  const int32_t eos = static_cast<int32_t>(config.eos_token_id.value_or(0));
  const int32_t pad = static_cast<int32_t>(config.pad_token_id.value_or(eos));
  // An empty prompt starts at a document boundary: the EOS that precedes every document in training.
  std::vector<int32_t> prompt = question.prompt.empty() ? std::vector<int32_t>{eos} : question.prompt;

  const int64_t B = static_cast<int64_t>(question.choices.size());
  std::vector<std::vector<int32_t>> rows;
  for (const auto& choice : question.choices) {
    EMO_CHECK(!choice.empty(), "tasks", "a choice encodes to no token");
    EMO_CHECK(static_cast<int64_t>(choice.size()) < max_len, "tasks", "a choice of ", choice.size(),
              " tokens does not fit the context of ", max_len);
    const int64_t keep = std::min<int64_t>(prompt.size(), max_len - static_cast<int64_t>(choice.size()));
    std::vector<int32_t> row(prompt.end() - keep, prompt.end());  // the prompt's last `keep` tokens
    row.insert(row.end(), choice.begin(), choice.end());
    rows.push_back(std::move(row));
  }
  int64_t T = 0;
  for (const auto& row : rows) T = std::max<int64_t>(T, static_cast<int64_t>(row.size()));
  std::vector<int32_t> tokens(B * T, pad);  // [B, T] rows padded at the end (causal: padding is never seen)
  for (int64_t b = 0; b < B; ++b) std::copy(rows[b].begin(), rows[b].end(), tokens.begin() + b * T);

  RoutingOptions routing = input_routing;
  routing.training = false;
  routing.intra_document_attention = false;
  auto state = model.infer(Batch::from_tokens(B, T, std::move(tokens), {}, eos), routing);

  std::vector<double> scores(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = static_cast<int64_t>(rows[b].size());
    const int64_t start = len - static_cast<int64_t>(question.choices[b].size());
    for (int64_t p = start; p < len; ++p)  // token p is predicted at position p - 1
      scores[b] += log_prob(state->logits.data() + (b * T + p - 1) * V, V, rows[b][p]);
  }
  return scores;
}

McResult evaluate_mc(const Model& model, const std::string& task_name,
                     const std::vector<McTokenQuestion>& questions, const RoutingOptions& routing,
                     int64_t limit) {
  EMO_CHECK(routing.mode != RoutingMode::kEmoPool, "eval",
            "evaluation routes over all experts or a subset, not through an EMO pool");
  McResult result;
  result.task = task_name;
  const int64_t n = limit > 0 ? std::min<int64_t>(limit, questions.size()) : questions.size();
  int64_t correct = 0, correct_norm = 0;
  Progress progress(task_name, n, "questions");
  for (int64_t i = 0; i < n; ++i) {
    const McTokenQuestion& q = questions[i];
    std::vector<double> ll = choice_log_likelihoods(model, q, routing);
    std::vector<double> per_byte(ll.size());
    for (size_t c = 0; c < ll.size(); ++c) per_byte[c] = ll[c] / std::max<int64_t>(1, q.choice_bytes[c]);
    correct += argmax(ll) == q.gold;
    correct_norm += argmax(per_byte) == q.gold;
    progress.update(i + 1);
  }
  progress.finish();
  result.questions = n;
  if (n > 0) {
    result.accuracy = static_cast<double>(correct) / static_cast<double>(n);
    result.accuracy_norm = static_cast<double>(correct_norm) / static_cast<double>(n);
  }
  return result;
}

std::vector<int64_t> distinct_others(Rng& rng, int64_t n, int64_t exclude, int64_t count) {
  EMO_CHECK(count <= n - 1, "tasks", "cannot draw ", count, " distractors from ", n - 1, " candidates");
  std::vector<int64_t> others;
  for (int64_t j = 0; j < n; ++j)
    if (j != exclude) others.push_back(j);
  for (int64_t k = 0; k < count; ++k)
    std::swap(others[k], others[rng.uniform_int(k, static_cast<int64_t>(others.size()) - 1)]);
  others.resize(count);
  return others;
}

std::vector<McTokenQuestion> make_next_segment_task(const data::Dataset& dataset, const std::string& domain,
                                                    int64_t count, int64_t prompt_len, int64_t choice_len,
                                                    int64_t num_choices, uint64_t seed) {
  const int domain_id = dataset.domain_index(domain);
  if (domain_id < 0) fail_file("tasks", dataset.path(), cat("no domain named '", domain, "'"));
  EMO_CHECK(prompt_len >= 1 && choice_len >= 1 && num_choices >= 2, "tasks",
            "next-segment task needs prompt_len >= 1, choice_len >= 1 and at least 2 choices");
  std::vector<int64_t> eligible;  // documents long enough for a prompt and a choice
  for (int64_t d = 0; d < dataset.num_documents(); ++d)
    if (dataset.domain_of(d) == static_cast<uint32_t>(domain_id) &&
        dataset.document_length(d) >= prompt_len + choice_len)
      eligible.push_back(d);
  if (static_cast<int64_t>(eligible.size()) < num_choices)
    fail_file("tasks", dataset.path(),
              cat("domain '", domain, "' has ", eligible.size(), " documents of at least ",
                  prompt_len + choice_len, " tokens, ", num_choices, " are needed"));
  auto segment = [&](int64_t d) {
    auto doc = dataset.document(d);
    return std::vector<int32_t>(doc.begin() + prompt_len, doc.begin() + prompt_len + choice_len);
  };
  Rng rng(seed);
  std::vector<McTokenQuestion> questions;
  const int64_t n = count > 0 ? std::min<int64_t>(count, eligible.size()) : eligible.size();
  for (int64_t i = 0; i < n; ++i) {
    auto doc = dataset.document(eligible[i]);
    McTokenQuestion q;
    q.prompt.assign(doc.begin(), doc.begin() + prompt_len);
    std::vector<int64_t> others =
        distinct_others(rng, static_cast<int64_t>(eligible.size()), i, num_choices - 1);
    q.gold = rng.uniform_int(0, num_choices - 1);
    for (int64_t c = 0, k = 0; c < num_choices; ++c)
      q.choices.push_back(segment(eligible[c == q.gold ? i : others[k++]]));
    q.choice_bytes.assign(num_choices, choice_len);
    questions.push_back(std::move(q));
  }
  return questions;
}

nlohmann::json mc_results_json(const std::vector<McResult>& results) {
  nlohmann::json out = nlohmann::json::array();
  for (const McResult& r : results)
    out.push_back({{"task", r.task},
                   {"questions", r.questions},
                   {"accuracy", r.accuracy},
                   {"accuracy_norm", r.accuracy_norm}});
  return out;
}

std::string mc_results_table(const std::vector<McResult>& results) {
  std::string table = "task                       questions  accuracy  acc_norm\n";
  for (const McResult& r : results) {
    char line[200];
    std::snprintf(line, sizeof line, "%-26s %9lld %9.4f %9.4f\n", r.task.c_str(),
                  static_cast<long long>(r.questions), r.accuracy, r.accuracy_norm);
    table += line;
  }
  return table;
}

}  // namespace emo
