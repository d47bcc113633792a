#include "data/tokenize_corpus.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/process.h"

namespace emo::data {

std::vector<std::vector<int32_t>> encode_documents(const Tokenizer& tokenizer,
                                                   const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> ids(texts.size());
  parallel_tasks(static_cast<int64_t>(texts.size()),
                 [&](int64_t i) { ids[i] = tokenizer.encode_ordinary(texts[i]); });
  return ids;
}

TokenizeSummary tokenize_corpus(const TokenizeOptions& options) {
  Timer timer;
  namespace fs = std::filesystem;
  std::string manifest_path = (fs::path(options.corpus_dir) / "manifest.json").string();
  std::vector<std::string> domain_names;
  try {
    domain_names = nlohmann::json::parse(read_file_bytes(manifest_path))
                       .at("domain_names")
                       .get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    fail_file("corpus", manifest_path, cat("expected a corpus manifest with \"domain_names\": ", e.what()));
  }
  std::string jsonl = (fs::path(options.corpus_dir) / (options.split + ".jsonl")).string();
  std::vector<Document> documents = read_corpus_jsonl(jsonl);
  Tokenizer tokenizer = Tokenizer::load(options.tokenizer_path);
  EMO_CHECK(tokenizer.vocab_size() > 0 && tokenizer.vocab_size() <= UINT32_MAX, "corpus", "vocabulary size ",
            tokenizer.vocab_size());

  DatasetWriter writer(domain_names, static_cast<uint32_t>(tokenizer.vocab_size()));
  TokenizeSummary summary;
  Progress progress("tokenize " + options.split, static_cast<int64_t>(documents.size()), "doc");
  const size_t chunk = 2048;  // documents per encode round: bounds memory and paces the progress line
  for (size_t begin = 0; begin < documents.size(); begin += chunk) {
    size_t end = std::min(documents.size(), begin + chunk);
    std::vector<std::string> texts;
    for (size_t i = begin; i < end; ++i) texts.push_back(std::move(documents[i].text));
    auto ids = encode_documents(tokenizer, texts);
    for (size_t i = begin; i < end; ++i) {
      auto domain = std::find(domain_names.begin(), domain_names.end(), documents[i].domain);
      if (domain == domain_names.end())
        fail_file("corpus", jsonl,
                  cat("document '", documents[i].id, "' has domain '", documents[i].domain,
                      "' missing from the manifest"));
      writer.add(std::span<const int32_t>(ids[i - begin]),
                 static_cast<uint32_t>(domain - domain_names.begin()));
      summary.bytes += static_cast<int64_t>(texts[i - begin].size());
    }
    progress.update(static_cast<int64_t>(end),
                    cat(human_count(static_cast<double>(writer.num_tokens())), " tokens"));
  }
  progress.finish();
  summary.out_path = options.out_path.empty()
                         ? (fs::path(options.corpus_dir) / (options.split + ".bin")).string()
                         : options.out_path;
  writer.write(summary.out_path);
  summary.documents = writer.num_documents();
  summary.tokens = writer.num_tokens();
  summary.seconds = timer.seconds();
  return summary;
}

}  // namespace emo::data
