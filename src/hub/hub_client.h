// A client of the Hugging Face Hub's file protocol, as its own Python client (huggingface_hub) uses it:
//   HEAD {endpoint}/{repo}/resolve/{revision}/{file}  -> X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size,
//        and for large files a redirect (Location) to the storage host, which is not followed by the HEAD;
//   GET  the same URL (redirects followed) with "Range: bytes=a-b" for any part of a file;
//   GET  {endpoint}/api/models/{repo}/revision/{revision} -> the commit and the file list ("siblings").
// Requests carry "Authorization: Bearer TOKEN" when a token is set (libcurl does not pass it on to another
// host when following a redirect). Passing faults are retried with a growing wait: a dropped connection, a
// body shorter or longer than asked for, HTTP 429 / 5xx (waiting what Retry-After says, bounded); others
// (401, 403, 404, ...) fail at once with the Hub's X-Error-Code. Thread-safe: each call takes an idle libcurl
// handle (or a new one) and gives it back after.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hub/http_head.h"

namespace emo {

struct HubConfig {
  std::string endpoint = "https://huggingface.co";
  std::string token;            // "" = anonymous
  int max_retries = 5;          // after the first try
  double first_wait = 0.5;      // seconds before the first retry, doubled each time
  double max_wait = 60;         // longest wait between tries (a longer Retry-After is cut to this)
  double connect_timeout = 30;  // seconds
};

// HF_ENDPOINT (default https://huggingface.co, trailing '/' dropped); the token from HF_TOKEN, else the file
// HF_TOKEN_PATH, else $HF_HOME/token, else ~/.cache/huggingface/token (what `huggingface-cli login` writes).
HubConfig hub_config_from_environment();

class HubClient {
 public:
  explicit HubClient(HubConfig config);
  ~HubClient();
  HubClient(const HubClient&) = delete;
  HubClient& operator=(const HubClient&) = delete;

  const HubConfig& config() const { return config_; }
  // {endpoint}/{repo}/resolve/{revision}/{file} (revision and file URL-escaped, '/' kept in file).
  std::string resolve_url(const std::string& repo, const std::string& revision,
                          const std::string& file) const;
  std::string api_url(const std::string& repo, const std::string& revision) const;

  // HEAD of a file; nullopt when the Hub answers 404 (no such file), emo::Error for other failures.
  std::optional<HubFileInfo> file_info(const std::string& repo, const std::string& revision,
                                       const std::string& file);
  // The body of `url`, or of its bytes [begin, end) when end > begin (the answer must be exactly those
  // bytes). `what` names the transfer in messages ("model.safetensors bytes 0-7").
  std::string get(const std::string& url, const std::string& what, uint64_t begin = 0, uint64_t end = 0);

  // Body bytes received so far, over all calls (retried ones included).
  uint64_t bytes_received() const { return bytes_received_.load(); }
  int64_t requests() const { return requests_.load(); }
  // Connections opened so far: libcurl handles are kept between calls, so requests to the same host reuse
  // an open connection (and TLS session) instead of opening one each.
  int64_t connections() const { return connections_.load(); }

 private:
  struct Answer {
    HttpHead head;
    std::string body;
    std::string transport_error;  // "" when the exchange completed
  };
  Answer perform(const std::string& url, bool head_only, uint64_t begin, uint64_t end, bool follow);

  HubConfig config_;
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<int64_t> requests_{0};
  std::atomic<int64_t> connections_{0};
  std::mutex idle_mutex_;
  std::vector<void*> idle_;  // CURL handles between calls
};

}  // namespace emo
