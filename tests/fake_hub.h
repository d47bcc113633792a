// A stand-in for the Hugging Face Hub on loopback ports, for testing `emo pull` without the internet. Two
// servers, as the real Hub has two hosts: the Hub itself (the API's file list, resolve/{revision}/{file}
// with X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size) and a storage host that large (LFS) files redirect
// to and that serves them with HTTP Range. Counts the body bytes it sends and the requests, and injects
// faults on request: a connection dropped mid-body, an HTTP 500, a 429 with Retry-After, a truncated range,
// content that does not match its hash, a 401 when the token is missing.
#pragma once

#include <httplib.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "core/error.h"
#include "data/process.h"
#include "hub/hub_client.h"

namespace emo::testing {

class FakeHub {
 public:
  enum class Fault { kDropMidBody, kServerError, kRateLimited, kTruncatedRange, kUnauthorized };
  static constexpr const char* kCommit = "0123456789abcdef0123456789abcdef01234567";

  struct File {
    std::shared_ptr<const std::string> content;  // shared: a request does not copy a shard
    bool lfs = false;
    std::string sha256, git_blob_id;  // computed once
    std::string claimed_sha256;       // "" = the true one; else the hub announces this (a wrong hash)
  };

  explicit FakeHub(std::string repo) : repo_(std::move(repo)) {
    install_hub_routes();
    install_storage_routes();
    // As real servers do: without it a head and a body written separately wait for a delayed ACK (40 ms).
    hub_.set_tcp_nodelay(true);
    storage_.set_tcp_nodelay(true);
    hub_port_ = hub_.bind_to_any_port("127.0.0.1");
    storage_port_ = storage_.bind_to_any_port("127.0.0.1");
    EMO_CHECK(hub_port_ > 0 && storage_port_ > 0, "fake_hub", "could not bind a loopback port");
    hub_thread_ = std::thread([this] { hub_.listen_after_bind(); });
    storage_thread_ = std::thread([this] { storage_.listen_after_bind(); });
    for (int i = 0; i < 2000 && !(hub_.is_running() && storage_.is_running()); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeHub() {
    hub_.stop();
    storage_.stop();
    hub_thread_.join();
    storage_thread_.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(hub_port_); }
  const std::string& repo() const { return repo_; }

  void add_file(const std::string& name, std::string content, bool lfs) {
    std::lock_guard lock(mutex_);
    File f;
    f.sha256 = emo::data::sha256_hex(content);
    f.git_blob_id = emo::data::git_blob_sha1_hex(content);
    f.content = std::make_shared<const std::string>(std::move(content));
    f.lfs = lfs;
    files_[name] = std::move(f);
  }
  void claim_wrong_hash(const std::string& name) {
    std::lock_guard lock(mutex_);
    File& f = files_.at(name);
    f.claimed_sha256 = f.lfs ? std::string(64, 'a') : std::string(40, 'a');
  }
  void require_token(std::string token) {
    std::lock_guard lock(mutex_);
    token_ = std::move(token);
  }
  // The next `times` content requests whose path contains `path_part` get `fault`.
  void inject(Fault fault, const std::string& path_part, int times = 1) {
    std::lock_guard lock(mutex_);
    for (int i = 0; i < times; ++i) faults_.push_back({fault, path_part});
  }
  // Blocks every content request from the n-th on (0-based, counting from now) until release(): lets a
  // test kill a client in the middle of a download.
  void hold_from(int64_t n) {
    std::lock_guard lock(mutex_);
    hold_at_ = content_requests_ + n;
  }
  void release() {
    {
      std::lock_guard lock(mutex_);
      hold_at_ = -1;
    }
    released_.notify_all();
  }
  bool holding() const { return held_.load() > 0; }

  uint64_t body_bytes() const { return body_bytes_.load(); }
  int64_t content_requests() const {
    std::lock_guard lock(mutex_);
    return content_requests_;
  }
  int64_t faults_left() const {
    std::lock_guard lock(mutex_);
    return static_cast<int64_t>(faults_.size());
  }
  // Requests that reached the storage host with an Authorization header (the token must stay on the Hub).
  int64_t storage_auth_headers() const { return storage_auth_.load(); }
  void reset_counts() {
    body_bytes_ = 0;
    std::lock_guard lock(mutex_);
    content_requests_ = 0;
  }

 private:
  struct PendingFault {
    Fault fault;
    std::string path_part;
  };

  std::optional<Fault> take_fault(const std::string& path) {
    for (auto it = faults_.begin(); it != faults_.end(); ++it)
      if (path.find(it->path_part) != std::string::npos) {
        const Fault f = it->fault;
        faults_.erase(it);
        return f;
      }
    return std::nullopt;
  }

  bool authorized(const httplib::Request& req) const {
    return token_.empty() || req.get_header_value("Authorization") == "Bearer " + token_;
  }

  void file_headers(const File& f, httplib::Response& res) const {
    res.set_header("X-Repo-Commit", kCommit);
    const std::string& blob = f.git_blob_id;
    if (f.lfs) {
      res.set_header("ETag", "\"" + blob + "\"");
      res.set_header("X-Linked-Etag", "\"" + (f.claimed_sha256.empty() ? f.sha256 : f.claimed_sha256) + "\"");
      res.set_header("X-Linked-Size", std::to_string(f.content->size()));
    } else {
      res.set_header("ETag", "\"" + (f.claimed_sha256.empty() ? blob : f.claimed_sha256) + "\"");
    }
  }

  // Serves f's content, or its byte range when the request asks for one, applying a pending fault.
  void serve(const httplib::Request& req, httplib::Response& res, const std::string& content) {
    // cpp-httplib would cut the range out of the body itself after the handler; the handler does it here,
    // as a real server does, so that faults can be shaped.
    std::string range_header = req.get_header_value("Range");
    const_cast<httplib::Request&>(req).ranges.clear();
    uint64_t begin = 0, end = content.size();  // [begin, end)
    bool ranged = false;
    if (range_header.rfind("bytes=", 0) == 0) {
      const std::string spec = range_header.substr(6);
      const size_t dash = spec.find('-');
      uint64_t a = 0, b = 0;
      std::from_chars(spec.data(), spec.data() + dash, a);
      std::from_chars(spec.data() + dash + 1, spec.data() + spec.size(), b);
      if (dash == std::string::npos || a > b || b >= content.size()) {
        res.status = 416;
        return;
      }
      begin = a, end = b + 1, ranged = true;
    }
    std::optional<Fault> fault;
    {
      std::unique_lock lock(mutex_);
      const int64_t index = content_requests_++;
      if (hold_at_ >= 0 && index >= hold_at_) {
        ++held_;
        released_.wait(lock, [&] { return hold_at_ < 0; });
        --held_;
        res.status = 503;
        return;
      }
      fault = take_fault(req.path);
    }
    if (fault == Fault::kServerError) {
      res.status = 500;
      return;
    }
    if (fault == Fault::kRateLimited) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      res.set_header("X-Error-Code", "RateLimited");
      return;
    }
    if (ranged) {
      res.status = 206;
      res.set_header("Content-Range", "bytes " + std::to_string(begin) + "-" + std::to_string(end - 1) + "/" +
                                          std::to_string(content.size()));
    }
    std::string body = content.substr(begin, end - begin);
    if (fault == Fault::kTruncatedRange) body.resize(body.size() / 2);
    if (fault == Fault::kDropMidBody) {
      const size_t length = body.size();
      res.set_content_provider(length, "application/octet-stream",
                               [this, body](size_t offset, size_t, httplib::DataSink& sink) {
                                 if (offset > 0) return false;  // the connection drops halfway
                                 sink.write(body.data(), body.size() / 2);
                                 body_bytes_ += body.size() / 2;
                                 return true;
                               });
      return;
    }
    if (req.method == "GET") body_bytes_ += body.size();
    res.set_content(body, "application/octet-stream");
  }

  void install_hub_routes() {
    hub_.Get(R"(/api/models/(.+)/revision/([^/]+))",
             [this](const httplib::Request& req, httplib::Response& res) {
               std::lock_guard lock(mutex_);
               if (req.matches[1] != repo_) return not_found(res, "RepoNotFound");
               if (!authorized(req)) return unauthorized(res);
               nlohmann::json j = {{"id", repo_}, {"sha", kCommit}, {"siblings", nlohmann::json::array()}};
               for (const auto& [name, f] : files_) j["siblings"].push_back({{"rfilename", name}});
               res.set_content(j.dump(), "application/json");
             });
    hub_.Get(R"(/(.+)/resolve/([^/]+)/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      File file;
      {
        std::lock_guard lock(mutex_);
        if (req.matches[1] != repo_) return not_found(res, "RepoNotFound");
        if (req.matches[2] != "main" && req.matches[2] != kCommit) return not_found(res, "RevisionNotFound");
        if (!authorized(req)) return unauthorized(res);
        auto it = files_.find(req.matches[3]);
        if (it == files_.end()) return not_found(res, "EntryNotFound");
        file = it->second;
      }
      file_headers(file, res);
      if (file.lfs) {
        res.status = 302;
        res.set_header("Location", "http://127.0.0.1:" + std::to_string(storage_port_) + "/lfs/" +
                                       std::string(req.matches[3]) + "?signature=x");
        return;
      }
      serve(req, res, *file.content);
    });
  }

  void install_storage_routes() {
    storage_.Get(R"(/lfs/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.has_header("Authorization")) ++storage_auth_;
      std::shared_ptr<const std::string> content;
      {
        std::lock_guard lock(mutex_);
        auto it = files_.find(req.matches[1]);
        if (it == files_.end()) return not_found(res, "EntryNotFound");
        content = it->second.content;
      }
      serve(req, res, *content);
    });
  }

  static void not_found(httplib::Response& res, const char* code) {
    res.status = 404;
    res.set_header("X-Error-Code", code);
  }
  static void unauthorized(httplib::Response& res) {
    res.status = 401;
    res.set_header("X-Error-Code", "GatedRepo");
    res.set_header("X-Error-Message", "Access to this model is restricted");
  }

  std::string repo_, token_;
  httplib::Server hub_, storage_;
  int hub_port_ = 0, storage_port_ = 0;
  std::thread hub_thread_, storage_thread_;
  mutable std::mutex mutex_;
  std::condition_variable released_;
  std::map<std::string, File> files_;
  std::deque<PendingFault> faults_;
  int64_t content_requests_ = 0, hold_at_ = -1;
  std::atomic<int> held_{0};
  std::atomic<uint64_t> body_bytes_{0};
  std::atomic<int64_t> storage_auth_{0};
};

// A client of `hub` that retries quickly (the waits of a real run are seconds).
inline HubClient fast_client(const FakeHub& hub, std::string token = "") {
  HubConfig config;
  config.endpoint = hub.endpoint();
  config.token = std::move(token);
  config.first_wait = 0.01;
  config.max_retries = 3;
  return HubClient(config);
}

}  // namespace emo::testing
