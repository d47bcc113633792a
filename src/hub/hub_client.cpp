#include "hub/hub_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/log.h"

namespace emo {
namespace {

constexpr const char* kOp = "hub";
// An unranged GET is for small files (config, tokenizer, index); anything larger is fetched in ranges.
constexpr uint64_t kMaxWholeBody = 1ull << 30;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::string token;
  std::getline(in, token);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  return token;
}

// URL-escapes s, keeping '/' when keep_slash (file paths inside a repository).
std::string escape(const std::string& s, bool keep_slash) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

struct Transfer {
  std::string head_lines, body;
  uint64_t limit = kMaxWholeBody;
  bool overflow = false;
  std::atomic<uint64_t>* counter = nullptr;
};

size_t on_header(char* data, size_t size, size_t count, void* user) {
  static_cast<Transfer*>(user)->head_lines.append(data, size * count);
  return size * count;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  *t->counter += n;
  if (t->body.size() + n > t->limit) {
    t->overflow = true;
    return 0;  // aborts the transfer
  }
  t->body.append(data, n);
  return n;
}

}  // namespace

HubConfig hub_config_from_environment() {
  HubConfig config;
  std::string endpoint = env("HF_ENDPOINT");
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  if (!endpoint.empty()) config.endpoint = endpoint;
  config.token = env("HF_TOKEN");
  if (config.token.empty() && !env("HF_TOKEN_PATH").empty())
    config.token = read_token_file(env("HF_TOKEN_PATH"));
  if (config.token.empty() && !env("HF_HOME").empty())
    config.token = read_token_file((std::filesystem::path(env("HF_HOME")) / "token").string());
  if (config.token.empty() && env("HF_HOME").empty() && !env("HOME").empty())
    config.token =
        read_token_file((std::filesystem::path(env("HOME")) / ".cache/huggingface/token").string());
  return config;
}

HubClient::HubClient(HubConfig config) : config_(std::move(config)) {
  global_init();
}

HubClient::~HubClient() {
  for (void* handle : idle_) curl_easy_cleanup(static_cast<CURL*>(handle));
}

std::string HubClient::resolve_url(const std::string& repo, const std::string& revision,
                                   const std::string& file) const {
  return cat(config_.endpoint, "/", repo, "/resolve/", escape(revision, false), "/", escape(file, true));
}

std::string HubClient::api_url(const std::string& repo, const std::string& revision) const {
  return cat(config_.endpoint, "/api/models/", repo, "/revision/", escape(revision, false));
}

HubClient::Answer HubClient::perform(const std::string& url, bool head_only, uint64_t begin, uint64_t end,
                                     bool follow) {
  ++requests_;
  Transfer transfer;
  transfer.counter = &bytes_received_;
  if (end > begin) transfer.limit = end - begin;
  CURL* reused = nullptr;
  {
    std::lock_guard lock(idle_mutex_);
    if (!idle_.empty()) reused = static_cast<CURL*>(idle_.back()), idle_.pop_back();
  }
  // Given back reset (options cleared, open connections kept) for the next call.
  auto give_back = [this](CURL* handle) {
    curl_easy_reset(handle);
    std::lock_guard lock(idle_mutex_);
    idle_.push_back(handle);
  };
  std::unique_ptr<CURL, decltype(give_back)> curl(reused ? reused : curl_easy_init(), give_back);
  EMO_CHECK(curl, kOp, "libcurl could not start a transfer");
  curl_slist* headers = nullptr;
  if (!config_.token.empty())
    headers = curl_slist_append(headers, ("Authorization: Bearer " + config_.token).c_str());
  // The raw bytes, as the Hub's client asks for them: sizes and hashes are of the uncompressed content.
  headers = curl_slist_append(headers, "Accept-Encoding: identity");
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> header_list(headers, curl_slist_free_all);
  const std::string range = cat(begin, "-", end - 1);
  CURL* h = curl.get();
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_USERAGENT, "emo/0.1.0");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
  curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config_.connect_timeout * 1000));
  // A transfer that stalls (under 1 byte/s for 60 s) is a dropped connection to retry.
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &transfer);
  if (head_only) curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  if (end > begin) curl_easy_setopt(h, CURLOPT_RANGE, range.c_str());
  const CURLcode code = curl_easy_perform(h);
  long opened = 0;
  if (curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &opened) == CURLE_OK) connections_ += opened;
  Answer answer;
  if (!transfer.head_lines.empty()) answer.head = parse_http_head(transfer.head_lines);
  answer.body = std::move(transfer.body);
  if (transfer.overflow)
    answer.transport_error = cat("the server sent more than the ", transfer.limit, " bytes asked for");
  else if (code != CURLE_OK)
    answer.transport_error = cat(curl_easy_strerror(code), " (libcurl ", static_cast<int>(code), ")");
  return answer;
}

std::optional<HubFileInfo> HubClient::file_info(const std::string& repo, const std::string& revision,
                                                const std::string& file) {
  std::string url = resolve_url(repo, revision, file);
  for (int attempt = 0;; ++attempt) {
    Answer a = perform(url, true, 0, 0, false);
    const int status = a.head.status;
    // A relative redirect is the Hub's answer for a renamed repository: follow it, as huggingface_hub does.
    const std::string location = a.head.header("location");
    if (a.transport_error.empty() && status >= 300 && status < 400 && location.substr(0, 1) == "/" &&
        attempt < 5) {
      url = config_.endpoint + location;
      continue;
    }
    const bool passing = !a.transport_error.empty() || status == 429 || status >= 500;
    if (!passing) {
      if (status == 404) return std::nullopt;
      if (status == 401 || status == 403)
        fail_file(kOp, url,
                  cat(hub_error_text(a.head), ": the repository is private or gated; give a token ",
                      "(HF_TOKEN, or the file written by `huggingface-cli login`)"));
      if (status >= 400 || status < 200) fail_file(kOp, url, hub_error_text(a.head));
      HubFileInfo info = hub_file_info(a.head);
      if (info.commit.empty())
        fail_file(kOp, url, "the answer has no X-Repo-Commit header (not a Hub endpoint?)");
      if (info.size < 0) fail_file(kOp, url, "the answer gives no size (X-Linked-Size or Content-Length)");
      return info;
    }
    if (attempt >= config_.max_retries)
      fail_file(kOp, url,
                cat(a.transport_error.empty() ? hub_error_text(a.head) : a.transport_error,
                    " (gave up after ", attempt + 1, " tries)"));
    double wait = config_.first_wait * std::pow(2.0, attempt);
    if (auto asked = retry_after_seconds(a.head)) wait = *asked;
    wait = std::min(wait, config_.max_wait);
    log_warn(cat("[hub] HEAD ", file, ": ",
                 a.transport_error.empty() ? hub_error_text(a.head) : a.transport_error, "; retry ",
                 attempt + 1, " of ", config_.max_retries, " in ", wait, " s"));
    std::this_thread::sleep_for(std::chrono::duration<double>(wait));
  }
}

std::string HubClient::get(const std::string& url, const std::string& what, uint64_t begin, uint64_t end) {
  const bool ranged = end > begin;
  for (int attempt = 0;; ++attempt) {
    Answer a = perform(url, false, begin, end, true);
    const int status = a.head.status;
    std::string problem;
    std::optional<double> asked_wait;
    if (!a.transport_error.empty()) {
      problem = a.transport_error;
    } else if (status == 429 || status >= 500) {
      problem = hub_error_text(a.head);
      asked_wait = retry_after_seconds(a.head);
    } else if (status == 401 || status == 403) {
      fail_file(kOp, what,
                cat(hub_error_text(a.head), " from ", url, ": the repository is private or gated; ",
                    "give a token (HF_TOKEN, or the file written by `huggingface-cli login`)"));
    } else if (status < 200 || status >= 300) {
      fail_file(kOp, what, cat(hub_error_text(a.head), " from ", url));
    } else if (ranged) {
      const auto range = parse_content_range(a.head.header("content-range"));
      if (status != 206 || !range || range->begin != begin || range->end != end - 1)
        fail_file(kOp, what,
                  cat("asked ", url, " for bytes ", begin, "-", end - 1, ", got HTTP ", status,
                      " with Content-Range '", a.head.header("content-range"),
                      "' (the server does not serve ranges?)"));
      if (a.body.size() != end - begin)
        problem = cat("truncated range: ", a.body.size(), " of ", end - begin, " bytes arrived");
    } else if (auto length = a.head.header("content-length");
               !length.empty() && std::to_string(a.body.size()) != length) {
      problem = cat("truncated body: ", a.body.size(), " bytes of Content-Length ", length);
    }
    if (problem.empty()) return std::move(a.body);
    if (attempt >= config_.max_retries)
      fail_file(kOp, what, cat(problem, " from ", url, " (gave up after ", attempt + 1, " tries)"));
    const double wait =
        std::min(asked_wait.value_or(config_.first_wait * std::pow(2.0, attempt)), config_.max_wait);
    log_warn(cat("[hub] ", what, ": ", problem, "; retry ", attempt + 1, " of ", config_.max_retries, " in ",
                 wait, " s"));
    std::this_thread::sleep_for(std::chrono::duration<double>(wait));
  }
}

}  // namespace emo
