// Evaluation: held-out loss and perplexity per domain, and multiple-choice tasks scored by log-likelihood
// (docs/tasks.md).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "eval/dictionary_task.h"
#include "eval/evaluate.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "model/forward_state.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
constexpr int32_t kEos = 256;

// A byte-level model: V=260 (bytes, then EOS 256, PAD 257), d=16, L=2, E=6 (5 routed + 1 shared), K=3.
ModelConfig tiny_config() {
  ModelConfig c;
  c.model_type = "emo";
  c.vocab_size = 260;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000.0;
  c.eos_token_id = kEos;
  c.pad_token_id = 257;
  c.num_experts = 6;
  c.num_experts_per_tok = 3;
  c.num_shared_experts = 1;
  return c;
}

std::unique_ptr<Model> tiny_model() {
  auto model = std::make_unique<Model>(tiny_config());
  model->init_weights(3);
  for (Param& p : model->params())
    if (p.value->ndim() > 1)
      for (float& w : p.value->vec()) w *= 10.0f;
  return model;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           (std::string("emo_eval_test_") + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Two domains: "prose" with 5 documents, "code" with 4, lengths 9..30.
std::string write_dataset(const TempDir& dir) {
  data::DatasetWriter writer({"prose", "code"}, 260);
  for (int d = 0; d < 9; ++d) {
    std::vector<int32_t> doc;
    for (int t = 0; t < 9 + 3 * d; ++t) doc.push_back((d * 37 + t * 11) % 256);
    writer.add(doc, d % 2 == 0 ? 0u : 1u);
  }
  writer.write(dir / "valid.bin");
  return dir / "valid.bin";
}

RoutingOptions standard() {
  RoutingOptions r;
  r.training = false;
  return r;
}

Tokenizer byte_tokenizer() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  return Tokenizer::from_parts(bytes, {}, kCl100kPattern,
                               {AddedToken{kEos, "<|endoftext|>"}, AddedToken{257, "<|pad|>"}});
}

// ---------------------------------------------------------------------------------------------------------
// Perplexity

TEST(Perplexity, ScoresEveryDomainAndATokenWeightedTotal) {
  TempDir dir;
  auto dataset = data::Dataset::open(write_dataset(dir));
  auto model = tiny_model();
  PerplexityOptions options;
  options.seq_len = 16;
  auto losses = evaluate_domains(*model, dataset, standard(), options);
  ASSERT_EQ(losses.size(), 3u);
  EXPECT_EQ(losses[0].domain, "prose");
  EXPECT_EQ(losses[1].domain, "code");
  EXPECT_EQ(losses[2].domain, "all");
  // prose documents: 9, 15, 21, 27, 33 tokens, each followed by EOS; every stream token but the last is
  // scored.
  EXPECT_EQ(losses[0].tokens, 105 + 5 - 1);
  EXPECT_EQ(losses[1].tokens, 12 + 18 + 24 + 30 + 4 - 1);
  EXPECT_EQ(losses[2].tokens, losses[0].tokens + losses[1].tokens);
  for (const auto& l : losses) {
    EXPECT_GT(l.loss, 0.0);
    EXPECT_NEAR(l.perplexity, std::exp(l.loss), 1e-9 * l.perplexity);
  }
  EXPECT_NEAR(losses[2].loss * losses[2].tokens,
              losses[0].loss * losses[0].tokens + losses[1].loss * losses[1].tokens, 1e-6);
}

TEST(Perplexity, DoesNotDependOnRowsPerForward) {
  TempDir dir;
  auto dataset = data::Dataset::open(write_dataset(dir));
  auto model = tiny_model();
  PerplexityOptions one, four;
  one.seq_len = four.seq_len = 16;
  one.batch_rows = 1;
  four.batch_rows = 4;
  auto a = evaluate_domains(*model, dataset, standard(), one);
  auto b = evaluate_domains(*model, dataset, standard(), four);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i].loss, b[i].loss, 1e-5) << a[i].domain;
}

TEST(Perplexity, SubsetRoutingKeepingEveryExpertEqualsStandardRouting) {
  TempDir dir;
  auto dataset = data::Dataset::open(write_dataset(dir));
  auto model = tiny_model();
  RoutingOptions all = standard();
  all.mode = RoutingMode::kSubset;
  all.subset = {{0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}};
  RoutingOptions some = all;
  some.subset = {{0, 3}, {1, 4}};
  PerplexityOptions options;
  options.seq_len = 16;
  options.domains = {"code"};
  auto full = evaluate_domains(*model, dataset, standard(), options);
  EXPECT_NEAR(evaluate_domains(*model, dataset, all, options)[0].loss, full[0].loss, 1e-6);
  EXPECT_NE(evaluate_domains(*model, dataset, some, options)[0].loss, full[0].loss);
}

TEST(Perplexity, RejectsAnUnknownDomainAndTheEmoPool) {
  TempDir dir;
  auto dataset = data::Dataset::open(write_dataset(dir));
  auto model = tiny_model();
  PerplexityOptions options;
  options.domains = {"law"};
  EXPECT_THROW(evaluate_domains(*model, dataset, standard(), options), Error);
  RoutingOptions pool;
  pool.mode = RoutingMode::kEmoPool;
  EXPECT_THROW(evaluate_domains(*model, dataset, pool, PerplexityOptions{}), Error);
}

// ---------------------------------------------------------------------------------------------------------
// Multiple choice

double direct_log_likelihood(const Model& model, const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& choice) {
  std::vector<int32_t> row = prompt;
  row.insert(row.end(), choice.begin(), choice.end());
  const int64_t T = static_cast<int64_t>(row.size()), V = 260;
  auto state = model.infer(Batch::from_tokens(1, T, row, {}, kEos), standard());
  double total = 0;
  for (int64_t p = static_cast<int64_t>(prompt.size()); p < T; ++p) {
    const float* logits = state->logits.data() + (p - 1) * V;
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[v]));
    total += logits[row[p]] - std::log(sum);
  }
  return total;
}

TEST(MultipleChoice, ChoiceLikelihoodsEqualScoringEachChoiceAlone) {
  auto model = tiny_model();
  McTokenQuestion q;
  q.prompt = {10, 20, 30, 40, 50};
  q.choices = {{7}, {8, 9, 10}, {200, 201}};
  q.choice_bytes = {1, 3, 2};
  auto ll = choice_log_likelihoods(*model, q, standard());
  ASSERT_EQ(ll.size(), 3u);
  for (size_t c = 0; c < 3; ++c)
    EXPECT_NEAR(ll[c], direct_log_likelihood(*model, q.prompt, q.choices[c]), 1e-4);
}

TEST(MultipleChoice, TheModelsOwnMostLikelyTokenScoresFullAccuracy) {
  auto model = tiny_model();
  std::vector<McTokenQuestion> questions;
  for (int i = 0; i < 4; ++i) {
    McTokenQuestion q;
    q.prompt = {static_cast<int32_t>(3 + i), 60, static_cast<int32_t>(90 + i)};
    auto state = model->infer(Batch::from_tokens(1, 3, q.prompt, {}, kEos), standard());
    const float* last = state->logits.data() + 2 * 260;
    int32_t best = static_cast<int32_t>(std::max_element(last, last + 256) - last);
    q.gold = i % 3;
    for (int c = 0; c < 3; ++c) q.choices.push_back({c == q.gold ? best : (best + 1 + c) % 256});
    q.choice_bytes = {1, 1, 1};
    questions.push_back(q);
  }
  McResult r = evaluate_mc(*model, "own", questions, standard());
  EXPECT_EQ(r.questions, 4);
  EXPECT_DOUBLE_EQ(r.accuracy, 1.0);
  EXPECT_DOUBLE_EQ(r.accuracy_norm, 1.0);
}

TEST(MultipleChoice, ReadsTheTaskFormatWithFewShotDemonstrations) {
  TempDir dir;
  std::ofstream(dir / "capitals.jsonl")
      << "{\"context\": \"Q: France?\\nA:\", \"choices\": [\" Paris\", \" Rome\"], \"gold\": 0, \"fewshot\": "
         "true}\n"
      << "\n"
      << "{\"context\": \"Q: Italy?\\nA:\", \"choices\": [\" Paris\", \" Rome\", \" Oslo\"], \"gold\": 1}\n";
  McTask task = load_mc_task(dir / "capitals.jsonl");
  EXPECT_EQ(task.name, "capitals");
  ASSERT_EQ(task.fewshot.size(), 1u);
  ASSERT_EQ(task.questions.size(), 1u);
  EXPECT_EQ(mc_prompt(task, task.questions[0]), "Q: France?\nA: Paris\n\nQ: Italy?\nA:");
  auto tokens = tokenize_mc_task(task, byte_tokenizer());
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_EQ(tokens[0].prompt.size(), mc_prompt(task, task.questions[0]).size());
  EXPECT_EQ(tokens[0].choice_bytes, (std::vector<int64_t>{6, 5, 5}));
  EXPECT_EQ(tokens[0].gold, 1);
  auto model = tiny_model();
  McResult r = evaluate_mc(*model, task.name, tokens, standard());
  EXPECT_EQ(r.questions, 1);
}

TEST(MultipleChoice, RejectsMalformedQuestionsNamingTheLine) {
  TempDir dir;
  std::ofstream(dir / "bad.jsonl") << "{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n"
                                   << "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}\n";
  try {
    load_mc_task(dir / "bad.jsonl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl: line 2: gold 2 is not a choice index"),
              std::string::npos)
        << e.what();
  }
}

TEST(MultipleChoice, BuiltInNextSegmentTaskUsesSameDomainDistractors) {
  TempDir dir;
  auto dataset = data::Dataset::open(write_dataset(dir));
  auto questions = make_next_segment_task(dataset, "prose", 3, 6, 3, 3, 1);
  ASSERT_EQ(questions.size(), 3u);
  for (size_t i = 0; i < questions.size(); ++i) {
    auto doc = dataset.document(2 * i);  // prose documents are 0, 2, 4, ...
    const auto& q = questions[i];
    EXPECT_EQ(q.prompt, std::vector<int32_t>(doc.begin(), doc.begin() + 6));
    EXPECT_EQ(q.choices[q.gold], std::vector<int32_t>(doc.begin() + 6, doc.begin() + 9));
    for (size_t c = 0; c < q.choices.size(); ++c) {
      if (static_cast<int64_t>(c) == q.gold) continue;
      bool from_other_prose = false;
      for (int64_t d : {0, 2, 4, 6, 8}) {
        auto other = dataset.document(d);
        if (d != static_cast<int64_t>(2 * i) &&
            q.choices[c] == std::vector<int32_t>(other.begin() + 6, other.begin() + 9))
          from_other_prose = true;
      }
      EXPECT_TRUE(from_other_prose) << "question " << i << " choice " << c;
    }
  }
  auto again = make_next_segment_task(dataset, "prose", 3, 6, 3, 3, 1);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(again[i].choices, questions[i].choices);
  EXPECT_THROW(make_next_segment_task(dataset, "prose", 3, 6, 3, 6, 1), Error);  // only 5 prose documents
}

// ---------------------------------------------------------------------------------------------------------
// Built-in dictionary task

DictionaryEntry parsed(const std::string& id, const std::string& text) {
  auto entry = parse_dictionary_entry(id, text);
  EXPECT_TRUE(entry.has_value()) << id;
  return entry.value_or(DictionaryEntry{});
}

TEST(DictionaryTask, ParsesTheLayoutsOfTheThreeDictionaries) {
  struct Case {
    const char* what;
    std::string id, text, headword, definition;
  };
  const std::vector<Case> cases = {
      {"gcide head: Word, pos. [etymology] (Label) definition", "gcide/Prepuce/0/0",
       "Prepuce, n. [F. pr['e]puce, L. praeputium.] (Anat.) The foreskin of the body.", "Prepuce",
       "The foreskin of the body."},
      {"gcide head with a pronunciation; the index headword may differ", "gcide/pubes/0/0",
       "Pubis (p[=u]\"b[i^]s), n. [NL. See Pubes.] (Anat.) The ventral and anterior of the three principal "
       "bones "
       "composing either half of the pelvis. --Quain.",
       "Pubis", "The ventral and anterior of the three principal bones composing either half of the pelvis."},
      {"gcide head with the etymology before the comma; a definition cut before --",
       "gcide/Primum mobile/0/0",
       "Primum mobile [L., first movable] (Astron.) In the Ptolemaic system, the outermost of the revolving "
       "spheres; -- called also first mover.",
       "Primum mobile", "In the Ptolemaic system, the outermost of the revolving spheres"},
      {"gcide collocation: Index word: Collocation (Label), definition", "gcide/Ladies/0/15",
       "Ladies: Lady crab (Zool.), a handsomely spotted swimming crab [Obs.] common on sandy shores.",
       "Lady crab", "a handsomely spotted swimming crab common on sandy shores."},
      {"foldoc: headword, blank line, <category> definition over lines", "foldoc/16-bit application/0",
       "16-bit application\n\n   <operating system> Software for MS-DOS or Microsoft\n"
       "   Windows which originally ran on the 16-bit Intel 8088.",
       "16-bit application",
       "Software for MS-DOS or Microsoft Windows which originally ran on the 16-bit Intel 8088."},
      {"jargon: headword, part of speech, blank line, [origin] definition", "jargon/amp off/0",
       "amp off\n vt.\n\n    [Purdue] To run in background. From the Unix shell '&' operator.", "amp off",
       "To run in background. From the Unix shell '&' operator."},
  };
  for (const Case& c : cases) {
    DictionaryEntry e = parsed(c.id, c.text);
    EXPECT_EQ(e.headword, c.headword) << c.what;
    EXPECT_EQ(e.definition, c.definition) << c.what;
  }
}

TEST(DictionaryTask, CutsLongDefinitionsAtASentenceEnd) {
  std::string long_text = "widget\n\n   <jargon> A small gadget. ";
  for (int i = 0; i < 40; ++i) long_text += "More words here. ";
  DictionaryEntry e = parsed("foldoc/widget/0", long_text);
  EXPECT_LE(e.definition.size(), kMaxDefinitionBytes);
  EXPECT_EQ(e.definition.back(), '.');
  EXPECT_EQ(e.definition.rfind("A small gadget. More words here.", 0), 0u);
}

TEST(DictionaryTask, SkipsEntriesThatMakePoorQuestions) {
  EXPECT_FALSE(
      parse_dictionary_entry("gcide/Spathose/0/0", "Spathose, a. (Min.) See Spathic."));  // reference
  EXPECT_FALSE(parse_dictionary_entry("gcide/antacid/0/2",
                                      "antacid: (Computers) a data storage device used to "
                                      "temporarily store input or output data."))
      << "a sense under its index word, which may not be the word defined";
  EXPECT_FALSE(
      parse_dictionary_entry("gcide/Dextronic/0/1", "Dextronic: Dextronic acid, a sirupy substance."))
      << "no domain label: the headword cannot be told from the definition";
  EXPECT_FALSE(
      parse_dictionary_entry("jargon/app/0", "app\n n.\n\n    What an APP is: a program vendors chase."))
      << "the definition names its headword";
  EXPECT_FALSE(parse_dictionary_entry("reuters/12", "Title\n\nSome news story that is long enough."));
  EXPECT_FALSE(parse_dictionary_entry("foldoc/x/0", "x\n\n   <char> Short."));  // too short
  EXPECT_TRUE(
      parse_dictionary_entry("jargon/app/1", "app\n n.\n\n    Short for application program.").has_value())
      << "a headword inside a longer word is not named";
}

std::string corpus_line(const std::string& id, const std::string& domain, const std::string& text) {
  return nlohmann::json{{"id", id}, {"domain", domain}, {"source", "test"}, {"text", text}}.dump() + "\n";
}

// A corpus split: 6 computing entries (one duplicate headword), 2 medicine entries, 1 news document.
std::string write_corpus_split(const std::string& path) {
  std::ofstream out(path);
  for (const char* word : {"alpha", "bravo", "charlie", "delta", "echo"})
    out << corpus_line(std::string("foldoc/") + word + "/0", "computing",
                       std::string(word) + "\n\n   <tag> A made-up definition of a computing term.");
  out << corpus_line("jargon/Alpha/0", "computing", "Alpha\n n.\n\n    The same headword in another case.");
  out << corpus_line("gcide/Pain/0/0", "medicine", "Pain, n. (Med.) An unpleasant sensation of the body.");
  out << corpus_line("gcide/Fever/0/0", "medicine", "Fever, n. (Med.) A raised temperature of the body.");
  out << corpus_line("reuters/1", "news", "Markets\n\nShares rose on Monday in busy trading.");
  return path;
}

TEST(DictionaryTask, QuestionsOfADomainAreDeterministicWithSameDomainDistractors) {
  TempDir dir;
  auto entries = read_dictionary_entries(write_corpus_split(dir / "validation.jsonl"));
  ASSERT_EQ(entries.count("news"), 0u);
  ASSERT_EQ(entries["computing"].size(), 5u) << "each headword once, in any case";
  ASSERT_EQ(entries["medicine"].size(), 2u);
  McTask task = make_definition_task("computing", entries["computing"], 3, 4, 7);
  EXPECT_EQ(task.name, "definition/computing");
  ASSERT_EQ(task.questions.size(), 3u);
  const std::vector<std::string> words = {" alpha", " bravo", " charlie", " delta", " echo"};
  for (size_t i = 0; i < 3; ++i) {
    const McQuestion& q = task.questions[i];
    EXPECT_EQ(q.context, "Definition: A made-up definition of a computing term.\nTerm:");
    ASSERT_EQ(q.choices.size(), 4u);
    EXPECT_EQ(q.choices[q.gold], words[i]);
    std::set<std::string> distinct(q.choices.begin(), q.choices.end());
    EXPECT_EQ(distinct.size(), 4u);
    for (const auto& c : q.choices) EXPECT_NE(std::find(words.begin(), words.end(), c), words.end()) << c;
  }
  save_mc_task(task, dir / "definition_computing.jsonl");
  McTask loaded = load_mc_task(dir / "definition_computing.jsonl");
  ASSERT_EQ(loaded.questions.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(loaded.questions[i].context, task.questions[i].context);
    EXPECT_EQ(loaded.questions[i].choices, task.questions[i].choices);
    EXPECT_EQ(loaded.questions[i].gold, task.questions[i].gold);
  }
  McTask again = make_definition_task("computing", entries["computing"], 3, 4, 7);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(again.questions[i].choices, task.questions[i].choices);
  EXPECT_THROW(make_definition_task("medicine", entries["medicine"], 3, 4, 7), Error);  // 2 entries < 4
}

TEST(DictionaryTask, EvalAddsADefinitionTaskForEachDictionaryDomain) {
  TempDir dir;
  const std::string split = write_corpus_split(dir / "validation.jsonl");
  Tokenizer tokenizer = byte_tokenizer();
  data::DatasetWriter writer({"computing", "medicine", "news"}, 260);
  for (const data::Document& doc : data::read_corpus_jsonl(split)) {
    const uint32_t domain = doc.domain == "computing" ? 0 : doc.domain == "medicine" ? 1 : 2;
    writer.add(tokenizer.encode_ordinary(doc.text.substr(0, 40)), domain);
  }
  writer.write(dir / "validation.bin");
  EvalRequest request;
  request.data_path = dir / "validation.bin";  // the .jsonl beside it is found
  request.builtin_mc = 2;
  request.builtin_prompt_len = 4;
  request.builtin_choice_len = 4;
  request.builtin_choices = 3;
  auto model = tiny_model();
  EvalReport report = run_eval(*model, standard(), &tokenizer, request);
  std::vector<std::string> names;
  for (const McResult& r : report.tasks) names.push_back(r.task);
  EXPECT_NE(std::find(names.begin(), names.end(), "definition/computing"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "definition/news"), names.end());
  for (const McResult& r : report.tasks)
    if (r.task == "definition/computing") {
      EXPECT_EQ(r.questions, 2);
    }
  EXPECT_TRUE(report.to_json()["tasks"].is_array());
}

}  // namespace
}  // namespace emo
