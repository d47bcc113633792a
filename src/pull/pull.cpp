#include "pull/pull.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "data/process.h"
#include "infer/generate.h"
#include "infer/quantize.h"
#include "infer/weights.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "select/examples.h"
#include "select/prune.h"
#include "select/subset.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
constexpr const char* kOp = "pull";
constexpr const char* kJournal = "journal.jsonl";
constexpr const char* kJournalFormat = "emo-pull-journal";
// Bounds on sizes the Hub announces before they reach an allocation.
constexpr uint64_t kMaxSmallFile = 64ull << 20;     // a file fetched whole in one request
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // a safetensors JSON header

// A byte range [begin, end) of a repository file.
struct Range {
  std::string file;
  uint64_t begin = 0, end = 0;
  uint64_t size() const { return end - begin; }
  bool operator<(const Range& o) const {
    return std::tie(file, begin, end) < std::tie(o.file, o.begin, o.end);
  }
};

bool is_hex(const std::string& s, size_t length) {
  return s.size() == length && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(c); });
}

// The staging directory "<out>.emo-pull/": the repository's files under their names (shards sparse, at
// their full size) and journal.jsonl, whose first line names the repository and commit and each further line
// one completed range {"file", "begin", "end", "sha256"} (or {"forget": file} when a file failed its check).
class Stage {
 public:
  Stage(fs::path dir, const std::string& repo, const std::string& commit) : dir_(std::move(dir)) {
    if (fs::exists(dir_)) load(repo, commit);
    if (!fs::exists(dir_ / kJournal)) {
      fs::create_directories(dir_);
      mark_unfinished_output(dir_.string(), kOp);  // never to be taken for a model: its shards have holes
      const nlohmann::json head = {{"format", kJournalFormat}, {"repo", repo}, {"commit", commit}};
      atomic_write_file((dir_ / kJournal).string(), head.dump() + "\n");
    }
    mark_unfinished_output(dir_.string(), kOp);  // this process is the one writing it now
    journal_ = ::open((dir_ / kJournal).c_str(), O_WRONLY | O_APPEND);
    if (journal_ < 0) fail_file(kOp, (dir_ / kJournal).string(), std::strerror(errno));
  }
  ~Stage() {
    for (auto& [name, fd] : fds_) ::close(fd);
    if (journal_ >= 0) ::close(journal_);
  }

  const fs::path& dir() const { return dir_; }
  std::string path(const std::string& file) const { return (dir_ / file).string(); }
  uint64_t reused_bytes() const { return reused_; }

  bool done(const Range& r) const {
    std::lock_guard lock(mutex_);
    return done_.count(r) != 0;
  }
  // Bytes of `file` covered by completed ranges.
  uint64_t covered(const std::string& file) const {
    std::lock_guard lock(mutex_);
    uint64_t total = 0, reach = 0;
    for (auto it = done_.lower_bound(Range{file, 0, 0}); it != done_.end() && it->file == file; ++it) {
      if (it->end > reach) total += it->end - std::max(it->begin, reach);
      reach = std::max(reach, it->end);
    }
    return total;
  }

  // The staged file at its full size (a sparse file: only what is written takes space).
  void reserve(const std::string& file, uint64_t size) {
    std::lock_guard lock(mutex_);
    const int fd = fd_of(file);
    struct stat st {};
    if (::fstat(fd, &st) != 0 ||
        (static_cast<uint64_t>(st.st_size) != size && ::ftruncate(fd, static_cast<off_t>(size)) != 0))
      fail_file(kOp, path(file), cat("could not size the staged file: ", std::strerror(errno)));
  }

  // Writes a fetched range into its file and records it in the journal. Neither is fsync'ed: a killed
  // process loses nothing the kernel already has, and after a power loss a recorded range whose bytes did
  // not reach the disk fails its sha256 check when the journal is loaded, and is fetched again.
  void store(const Range& r, const std::string& bytes) {
    std::lock_guard lock(mutex_);
    const int fd = fd_of(r.file);
    for (size_t at = 0; at < bytes.size();) {
      const ssize_t n = ::pwrite(fd, bytes.data() + at, bytes.size() - at, static_cast<off_t>(r.begin + at));
      if (n <= 0) fail_file(kOp, path(r.file), cat("write failed: ", std::strerror(errno)));
      at += static_cast<size_t>(n);
    }
    append({{"file", r.file}, {"begin", r.begin}, {"end", r.end}, {"sha256", data::sha256_hex(bytes)}});
    done_.insert(r);
  }

  // Drops every recorded range of `file` (it failed its check): the next run fetches it again.
  void forget(const std::string& file) {
    std::lock_guard lock(mutex_);
    append({{"forget", file}});
    for (auto it = done_.lower_bound(Range{file, 0, 0}); it != done_.end() && it->file == file;)
      it = done_.erase(it);
  }

 private:
  void append(const nlohmann::json& line) {
    const std::string text = line.dump() + "\n";
    if (::write(journal_, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      fail_file(kOp, (dir_ / kJournal).string(), cat("write failed: ", std::strerror(errno)));
  }

  int fd_of(const std::string& file) {
    auto it = fds_.find(file);
    if (it != fds_.end()) return it->second;
    fs::create_directories(fs::path(path(file)).parent_path());
    const int fd = ::open(path(file).c_str(), O_RDWR | O_CREAT, 0644);
    if (fd < 0) fail_file(kOp, path(file), std::strerror(errno));
    return fds_[file] = fd;
  }

  // Takes over an earlier run's staging directory: ranges whose bytes still hash as recorded are kept.
  void load(const std::string& repo, const std::string& commit) {
    const std::string journal = (dir_ / kJournal).string();
    if (!fs::exists(journal))
      fail_file(kOp, dir_.string(),
                "exists but holds no journal.jsonl: not a staging directory of emo pull; remove it or choose "
                "another --out");
    std::ifstream in(journal);
    std::string line;
    std::vector<nlohmann::json> lines;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      try {
        lines.push_back(parse_json(line, journal, kOp, number));
      } catch (const Error&) {
        log_warn(cat("[pull] ", journal, ": line ", number,
                     " is incomplete (a run was killed while writing "
                     "it); the ranges after it are fetched again"));
        break;
      }
    }
    const bool same = !lines.empty() && lines[0].value("format", "") == kJournalFormat &&
                      lines[0].value("repo", "") == repo && lines[0].value("commit", "") == commit;
    if (!same) {
      if (lines.empty() || lines[0].value("format", "") != kJournalFormat)
        fail_file(kOp, journal, "is not a journal of emo pull; remove the directory or choose another --out");
      log_info(cat("[pull] ", dir_.string(), " was staged from ", lines[0].value("repo", ""), " at ",
                   lines[0].value("commit", ""), "; starting again for ", repo, " at ", commit));
      fs::remove_all(dir_);  // our own staging directory, of another commit
      return;
    }
    std::map<Range, std::string> recorded;
    for (size_t i = 1; i < lines.size(); ++i) {
      const nlohmann::json& j = lines[i];
      if (j.contains("forget")) {
        const std::string file = j["forget"];
        std::erase_if(recorded, [&](const auto& entry) { return entry.first.file == file; });
        continue;
      }
      recorded[Range{j.value("file", ""), j.value("begin", uint64_t{0}), j.value("end", uint64_t{0})}] =
          j.value("sha256", "");
    }
    for (const auto& [range, sha] : recorded) {
      const std::string file = path(range.file);
      if (range.file.empty() || !fs::exists(file) || fs::file_size(file) < range.end ||
          data::sha256_file_range_hex(file, range.begin, range.size()) != sha)
        continue;  // lost or damaged: fetched again
      done_.insert(range);
      reused_ += range.size();
    }
    log_info(cat("[pull] resuming: ", done_.size(), " completed range(s), ", human_bytes(double(reused_)),
                 " kept from the interrupted run"));
  }

  fs::path dir_;
  int journal_ = -1;
  mutable std::mutex mutex_;
  std::set<Range> done_;
  std::map<std::string, int> fds_;
  uint64_t reused_ = 0;
};

// One pull: the Hub, the staging directory, and what this run fetched.
class Puller {
 public:
  Puller(HubClient& hub, const PullOptions& options) : hub_(hub), options_(options) {}

  PullSummary run();

 private:
  struct RepoFile {
    std::string name;
    HubFileInfo info;
  };

  std::string url(const std::string& file) const { return hub_.resolve_url(options_.repo, commit_, file); }

  // The Hub's answer for a file; nullopt when the repository has no such file.
  std::optional<RepoFile> head(const std::string& name);
  // A file fetched whole and checked against the Hub's hash (skipped when staged and intact).
  void fetch_whole(const RepoFile& file);
  // Ranges fetched `parallel` at a time (those already staged skipped).
  void fetch(const std::vector<Range>& ranges, const std::string& what);
  // Shard headers staged, then the shards opened from the staging directory.
  void fetch_headers(const std::vector<RepoFile>& shards);
  // The byte ranges of the given tensors, adjacent ones merged, cut to max_range_bytes.
  std::vector<Range> ranges_of(const std::vector<std::string>& tensors) const;
  void check_complete(const RepoFile& file);
  nlohmann::json source_record(const std::vector<RepoFile>& files) const;

  void pull_selection();
  void pull_all();
  // The guard of --out: what the pull reads besides the Hub may not be, hold or lie inside it.
  OutputRules output_rules() const {
    return {kOp, {options_.subset, options_.examples, options_.tokenizer}, options_.force};
  }

  HubClient& hub_;
  const PullOptions& options_;
  std::string commit_;
  std::unique_ptr<Stage> stage_;
  std::map<std::string, std::pair<std::string, TensorInfo>> tensors_;  // name -> (shard, info)
  std::atomic<uint64_t> fetched_{0};
  uint64_t repo_bytes_ = 0;
};

std::optional<Puller::RepoFile> Puller::head(const std::string& name) {
  check_repo_file_name(name, options_.repo);
  auto info = hub_.file_info(options_.repo, commit_.empty() ? options_.revision : commit_, name);
  if (!info) return std::nullopt;
  if (!commit_.empty() && info->commit != commit_)
    fail_file(kOp, name, cat("the Hub answers for commit ", info->commit, ", the pull is of ", commit_));
  return RepoFile{name, *info};
}

void Puller::fetch_whole(const RepoFile& file) {
  const uint64_t size = static_cast<uint64_t>(file.info.size);
  const Range whole{file.name, 0, size};
  if (stage_->done(whole)) return;
  if (size > kMaxSmallFile)
    fail_file(kOp, file.name,
              cat("the Hub gives a size of ", size, " bytes, more than the ", kMaxSmallFile,
                  " a small file may have"));
  std::string bytes = hub_.get(url(file.name), file.name);
  if (bytes.size() != size)
    fail_file(kOp, file.name, cat(bytes.size(), " bytes arrived, the Hub announced ", size));
  const std::string expected = file.info.etag;
  if (file.info.lfs && is_hex(expected, 64) && data::sha256_hex(bytes) != expected)
    fail_file(kOp, file.name,
              cat("wrong hash: sha256 ", data::sha256_hex(bytes), ", the Hub says ", expected));
  if (!file.info.lfs && is_hex(expected, 40) && data::git_blob_sha1_hex(bytes) != expected)
    fail_file(kOp, file.name,
              cat("wrong hash: git blob id ", data::git_blob_sha1_hex(bytes), ", the Hub says ", expected));
  stage_->reserve(file.name, size);
  stage_->store(whole, bytes);
  fetched_ += size;
}

void Puller::fetch(const std::vector<Range>& all, const std::string& what) {
  std::vector<Range> todo;
  uint64_t total = 0;
  for (const Range& r : all)
    if (!stage_->done(r)) todo.push_back(r), total += r.size();
  if (todo.empty()) return;
  Progress progress(cat("pull ", what), static_cast<int64_t>(total), "B");
  std::mutex mutex;
  uint64_t done_bytes = 0;
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  // Network waits, not computation: these threads sleep on sockets, so they are not the compute pool's.
  auto worker = [&] {
    for (size_t i; (i = next++) < todo.size();) {
      {
        std::lock_guard lock(mutex);
        if (error) return;
      }
      const Range& r = todo[i];
      try {
        const std::string bytes =
            hub_.get(url(r.file), cat(r.file, " bytes ", r.begin, "-", r.end - 1), r.begin, r.end);
        stage_->store(r, bytes);
        fetched_ += r.size();
        std::lock_guard lock(mutex);
        done_bytes += r.size();
        progress.update(static_cast<int64_t>(done_bytes));
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
        return;
      }
    }
  };
  const int threads = std::clamp<int>(options_.parallel, 1, 16);
  std::vector<std::thread> pool;
  try {
    for (int t = 1; t < std::min<int>(threads, static_cast<int>(todo.size())); ++t) pool.emplace_back(worker);
  } catch (const std::system_error& e) {
    // The workers already started stop at their next range; they are joined below, never left to abort.
    std::lock_guard lock(mutex);
    error = std::make_exception_ptr(Error(cat("[pull] could not start download thread ", pool.size() + 1,
                                              ": ", e.what(), " (use --parallel 1)")));
  }
  worker();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  progress.finish();
}

void Puller::fetch_headers(const std::vector<RepoFile>& shards) {
  std::vector<Range> prefixes, headers;
  for (const RepoFile& s : shards) {
    if (s.info.size < 8) fail_file(kOp, s.name, cat("the Hub gives a size of ", s.info.size, " bytes"));
    stage_->reserve(s.name, static_cast<uint64_t>(s.info.size));
    prefixes.push_back({s.name, 0, 8});
  }
  fetch(prefixes, "headers");
  for (const RepoFile& s : shards) {
    uint8_t prefix[8] = {};
    std::ifstream in(stage_->path(s.name), std::ios::binary);
    in.read(reinterpret_cast<char*>(prefix), 8);
    uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | prefix[i];
    if (length > kMaxHeaderBytes || length > static_cast<uint64_t>(s.info.size) - 8)
      fail_at(kOp, s.name, "byte 0",
              cat("header length ", length, " in a file of ", s.info.size, " bytes (at most ",
                  kMaxHeaderBytes, ")"));
    headers.push_back({s.name, 8, 8 + length});
  }
  fetch(headers, "headers");
  for (const RepoFile& s : shards) {
    const SafetensorsFile file = SafetensorsFile::open(stage_->path(s.name));
    for (const auto& [name, info] : file.tensors()) {
      if (tensors_.count(name))
        fail_file(kOp, s.name, cat("tensor '", name, "' is also in ", tensors_[name].first));
      tensors_[name] = {s.name, info};
    }
    repo_bytes_ += static_cast<uint64_t>(s.info.size);
  }
}

std::vector<Range> Puller::ranges_of(const std::vector<std::string>& names) const {
  std::vector<Range> pieces;
  for (const std::string& name : names) {
    const auto& [shard, info] = tensors_.at(name);
    if (info.nbytes > 0) pieces.push_back({shard, info.file_offset, info.file_offset + info.nbytes});
  }
  std::sort(pieces.begin(), pieces.end());
  std::vector<Range> merged;
  for (const Range& p : pieces) {
    if (!merged.empty() && merged.back().file == p.file && merged.back().end == p.begin)
      merged.back().end = p.end;
    else
      merged.push_back(p);
  }
  std::vector<Range> cut;
  const uint64_t step = std::max<uint64_t>(options_.max_range_bytes, 1);
  for (const Range& m : merged)
    for (uint64_t at = m.begin; at < m.end; at += step)
      cut.push_back({m.file, at, std::min(m.end, at + step)});
  return cut;
}

void Puller::check_complete(const RepoFile& file) {
  const uint64_t size = static_cast<uint64_t>(file.info.size);
  if (stage_->covered(file.name) != size) return;  // a partial shard: no hash to check it against
  const std::string path = stage_->path(file.name);
  const std::string expected = file.info.etag;
  std::string got;
  if (file.info.lfs && is_hex(expected, 64))
    got = data::sha256_file_hex(path);
  else if (!file.info.lfs && is_hex(expected, 40))
    got = data::git_blob_sha1_hex(data::read_file_bytes(path));
  else
    return;
  if (got != expected) {
    stage_->forget(file.name);
    fail_file(kOp, file.name,
              cat("wrong hash: ", file.info.lfs ? "sha256 " : "git blob id ", got, ", the Hub says ",
                  expected, " (its ranges will be fetched again)"));
  }
}

nlohmann::json Puller::source_record(const std::vector<RepoFile>& files) const {
  nlohmann::json record = {{"hub_repo", options_.repo}, {"revision", options_.revision}, {"commit", commit_}};
  nlohmann::json listed = nlohmann::json::object();
  for (const RepoFile& f : files)
    listed[f.name] = {{"size", f.info.size}, {f.info.lfs ? "sha256" : "git_blob_id", f.info.etag}};
  record["files"] = listed;
  return record;
}

void Puller::pull_selection() {
  std::vector<RepoFile> small;
  auto config_file = head("config.json");
  if (!config_file)
    fail_file(kOp, options_.repo, "the repository has no config.json at " + options_.revision);
  commit_ = config_file->info.commit;
  stage_ = std::make_unique<Stage>(fs::path(options_.out + ".emo-pull"), options_.repo, commit_);
  small.push_back(*config_file);
  auto index = head(SafetensorsCheckpoint::kIndexFile);
  if (index) small.push_back(*index);
  for (const char* name : kCompanionFiles)
    if (auto f = head(name)) small.push_back(*f);
  for (const RepoFile& f : small) fetch_whole(f);

  std::vector<std::string> shard_names;
  if (index) {
    const nlohmann::json j = read_json_file(stage_->path(index->name), kOp);
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail_file(kOp, index->name, "no \"weight_map\" object");
    std::set<std::string> unique;
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string())
        fail_file(kOp, index->name, cat("weight_map['", tensor, "'] is not a file name"));
      unique.insert(file.get<std::string>());
    }
    shard_names.assign(unique.begin(), unique.end());
  } else {
    shard_names.push_back(SafetensorsCheckpoint::kSingleFile);
  }
  std::vector<RepoFile> shards;
  for (const std::string& name : shard_names) {
    auto f = head(name);
    if (!f) fail_file(kOp, options_.repo, cat("the repository has no ", name, " at ", commit_));
    shards.push_back(*f);
  }
  fetch_headers(shards);

  const ModelConfig config = ModelConfig::load(stage_->path("config.json"));
  EMO_CHECK(config.is_moe(), kOp, options_.repo,
            " is a dense model: there are no experts to choose; use --all");
  // Everything but the routed experts: the shared experts are always kept.
  const ExpertSubset layout =
      ExpertSubset::for_model(config, std::max<int64_t>(options_.keep_k, 1), "layout");
  std::map<std::pair<int64_t, int64_t>, std::vector<std::string>> expert_tensors;
  std::vector<std::string> always;
  for (const auto& [name, where] : tensors_) {
    const auto expert = expert_of_tensor(name);
    const bool shared = expert && std::count(layout.shared[expert->first].begin(),
                                             layout.shared[expert->first].end(), expert->second) > 0;
    if (expert && !shared)
      expert_tensors[*expert].push_back(name);
    else
      always.push_back(name);
  }
  fetch(ranges_of(always), "non-expert tensors");
  auto fetch_layer = [&](int64_t layer, const std::vector<int32_t>& routed) {
    std::vector<std::string> names;
    for (int32_t e : routed) {
      auto it = expert_tensors.find({layer, e});
      if (it != expert_tensors.end()) names.insert(names.end(), it->second.begin(), it->second.end());
    }
    fetch(ranges_of(names), cat("layer ", layer, " experts"));
  };

  ExpertSubset subset;
  if (!options_.subset.empty()) {
    subset = ExpertSubset::load(options_.subset, config);
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) fetch_layer(l, subset.routed[l]);
  } else {
    const std::string tokenizer =
        options_.tokenizer.empty() ? stage_->path("tokenizer.json") : options_.tokenizer;
    if (!fs::exists(tokenizer))
      fail_file(kOp, options_.repo, "the repository has no tokenizer.json: give --tokenizer FILE");
    const Examples examples = examples_from_file(options_.examples, Tokenizer::load(tokenizer));
    auto weights = InferWeights::open(stage_->dir().string());
    subset =
        select_layerwise(*weights, examples.sequences, options_.keep_k, examples.description, fetch_layer);
  }
  for (const RepoFile& s : shards) check_complete(s);

  std::vector<RepoFile> all_files = small;
  all_files.insert(all_files.end(), shards.begin(), shards.end());
  const nlohmann::json source = source_record(all_files);
  if (!options_.dtype) {
    prune_checkpoint(stage_->dir().string(), subset, options_.out, source, output_rules());
  } else {
    // A sibling, not inside the staging directory: an output may not lie inside its input.
    const std::string pruned = options_.out + ".emo-pull-pruned";
    prune_checkpoint(stage_->dir().string(), subset, pruned, source, {kOp, {}, true});
    quantize_checkpoint(pruned, options_.out, *options_.dtype, output_rules());
    fs::remove_all(pruned);  // ours, written just above
  }
}

void Puller::pull_all() {
  const nlohmann::json listing =
      parse_json(hub_.get(hub_.api_url(options_.repo, options_.revision), "file list"),
                 hub_.api_url(options_.repo, options_.revision), kOp);
  if (!listing.contains("sha") || !listing["sha"].is_string() || !listing.contains("siblings") ||
      !listing["siblings"].is_array())
    fail_file(kOp, options_.repo, "the Hub's answer has no \"sha\" and \"siblings\"");
  commit_ = listing["sha"];
  stage_ = std::make_unique<Stage>(fs::path(options_.out + ".emo-pull"), options_.repo, commit_);
  std::vector<RepoFile> files;
  for (const nlohmann::json& sibling : listing["siblings"]) {
    if (!sibling.contains("rfilename") || !sibling["rfilename"].is_string())
      fail_file(kOp, options_.repo, "a sibling without \"rfilename\"");
    auto f = head(sibling["rfilename"]);
    if (!f) fail_file(kOp, sibling["rfilename"].get<std::string>(), "listed but not found at " + commit_);
    files.push_back(*f);
  }
  std::vector<Range> ranges;
  for (const RepoFile& f : files) {
    const uint64_t size = static_cast<uint64_t>(std::max<int64_t>(f.info.size, 0));
    if (!f.info.lfs && size <= kMaxSmallFile) {
      fetch_whole(f);
      continue;
    }
    repo_bytes_ += size;
    stage_->reserve(f.name, size);
    const uint64_t step = std::max<uint64_t>(options_.max_range_bytes, 1);
    for (uint64_t at = 0; at < size; at += step) ranges.push_back({f.name, at, std::min(size, at + step)});
  }
  fetch(ranges, "files");
  for (const RepoFile& f : files) check_complete(f);

  if (options_.dtype) {
    quantize_checkpoint(stage_->dir().string(), options_.out, *options_.dtype, output_rules());
    return;
  }
  write_output_directory(options_.out, output_rules(), [&](const std::string& temp_dir) {
    for (const RepoFile& f : files) {
      const fs::path to = fs::path(temp_dir) / f.name;
      fs::create_directories(to.parent_path());
      // Moved, not copied: a mirror of a 50 GB repository must not need 100 GB (same file system: the
      // staging directory and the output are siblings).
      fs::rename(stage_->path(f.name), to);
    }
  });
}

PullSummary Puller::run() {
  Timer timer;
  const int modes =
      (options_.keep_k > 0 || !options_.examples.empty()) + !options_.subset.empty() + options_.all;
  if (modes != 1) fail(kOp, "give one of --keep-k K --examples FILE, --subset FILE or --all");
  if ((options_.keep_k > 0) != !options_.examples.empty()) fail(kOp, "--keep-k and --examples go together");
  if (options_.out.empty()) fail(kOp, "give --out DIR");
  if (options_.dtype && options_.dtype->dtype != DType::kBF16 && options_.dtype->dtype != DType::kI8 &&
      options_.dtype->dtype != DType::kQ4_0)
    fail(kOp, "--dtype converts to bf16, int8 or q4 (f32 = as stored)");
  check_new_output(options_.out, output_rules());  // before any request: refused outputs cost nothing
  const uint64_t received_before = hub_.bytes_received();
  const int64_t requests_before = hub_.requests();
  if (options_.all)
    pull_all();
  else
    pull_selection();
  PullSummary summary;
  summary.commit = commit_;
  summary.bytes_fetched = fetched_;
  summary.bytes_reused = stage_->reused_bytes();
  summary.bytes_received = hub_.bytes_received() - received_before;
  summary.requests = hub_.requests() - requests_before;
  summary.repo_bytes = repo_bytes_;
  const fs::path staging = stage_->dir();
  stage_.reset();
  fs::remove_all(staging);  // complete: the staging directory (ours) is no longer needed
  summary.seconds = timer.seconds();
  return summary;
}

}  // namespace

void check_repo_file_name(const std::string& name, const std::string& source) {
  auto bad = [&](const std::string& why) { fail_file(kOp, source, cat("file name '", name, "': ", why)); };
  if (name.empty()) bad("empty");
  if (name.front() == '/') bad("an absolute path");
  if (name.find('\\') != std::string::npos) bad("a backslash");
  if (name.find('\0') != std::string::npos) bad("a NUL byte");
  size_t start = 0;
  while (start <= name.size()) {
    const size_t slash = std::min(name.find('/', start), name.size());
    const std::string part = name.substr(start, slash - start);
    if (part.empty() || part == "." || part == "..") bad("an empty, '.' or '..' path component");
    start = slash + 1;
  }
}

PullSummary pull_model(HubClient& hub, const PullOptions& options) {
  PullOptions checked = options;
  while (checked.out.size() > 1 && checked.out.back() == '/') checked.out.pop_back();
  return Puller(hub, checked).run();
}

}  // namespace emo
