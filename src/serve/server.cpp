#include "serve/server.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>

#include "core/error.h"

namespace emo::serve {
namespace {

using nlohmann::json;

const char* kJson = "application/json";

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(e.to_json().dump(-1, ' ', false, json::error_handler_t::replace), kJson);
}

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

std::string random_id(const std::string& prefix) {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  static const char* digits = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string id = prefix;
  for (int i = 0; i < 24; ++i) id += digits[rng() % 62];
  return id;
}

ApiError timeout_error() {
  ApiError e;
  e.status = 504;
  e.type = "server_error";
  e.code = "timeout";
  e.message = "the request did not finish within the server's --timeout";
  return e;
}

// A Prometheus label value: backslash, quote and newline escaped.
std::string label_value(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// A sample value as Prometheus reads it: integers in full (byte counts beyond 6 digits), +Inf.
std::string metric_value(double value) {
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 9e15)
    return std::to_string(static_cast<int64_t>(value));
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

Server::Server(Engine& engine, ServerOptions options)
    : engine_(engine), options_(std::move(options)), http_(std::make_unique<httplib::Server>()) {
  http_->set_payload_max_length(options_.max_body_bytes);
  // A handler thread per running stream and per waiting request, with room for /metrics and /health.
  const size_t threads = std::max<size_t>(CPPHTTPLIB_THREAD_POOL_COUNT, 2 * engine_.slots() + 4);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_read_timeout(options_.read_timeout);
  http_->set_write_timeout(options_.read_timeout);
  // httplib's own refusals (no route, body too long) get OpenAI's error object too.
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.status = res.status;
    if (res.status == 404) {
      e.message = "no route " + req.method + " " + req.path;
      e.code = "unknown_url";
    } else if (res.status == 413) {
      e.message = "the request body is longer than the server's --max-body";
      e.code = "body_too_large";
    } else {
      e.message = cat("HTTP status ", res.status);
    }
    res.set_content(e.to_json().dump(-1, ' ', false, json::error_handler_t::replace), kJson);
  });
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.api_key.empty() || req.path.rfind("/v1/", 0) != 0)
      return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + options_.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.status = 401;
    e.code = "invalid_api_key";
    e.message = req.has_header("Authorization")
                    ? "Incorrect API key provided."
                    : "You didn't provide an API key (Authorization: Bearer KEY).";
    send_error(res, e);
    ++rejected_;
    return httplib::Server::HandlerResponse::Handled;
  });

  http_->Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", kJson);
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics(), "text/plain; version=0.0.4");
  });
  http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const auto created =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    json model = {
        {"id", options_.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "emo"}};
    model["packs"] = engine_.pack_names();
    model["context_length"] = engine_.config().max_position_embeddings;
    res.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump(), kJson);
  });

  auto completion = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      std::shared_ptr<Job> job;
      try {
        CompletionRequest request = parse_completion_request(req.body, chat);
        job = engine_.submit(request);
      } catch (const ApiError& e) {
        ++rejected_;
        send_error(res, e);
        return;
      }
      ResponseIds ids;
      ids.id = random_id(chat ? "chatcmpl-" : "cmpl-");
      ids.created = std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
      ids.model = job->request.model.empty() ? options_.model_name : job->request.model;
      const auto deadline = std::chrono::steady_clock::now() + options_.request_timeout;
      ++served_;
      if (!job->request.stream) {
        while (true) {
          Job::Update u = job->take(std::chrono::milliseconds(200));
          if (u.done) {
            if (u.error) return send_error(res, *u.error);
            res.set_content(response_json(job->request, ids, *u.result)
                                .dump(-1, ' ', false, json::error_handler_t::replace),
                            kJson);
            return;
          }
          if (std::chrono::steady_clock::now() > deadline) {
            job->cancel();
            return send_error(res, timeout_error());
          }
        }
      }
      auto first = std::make_shared<bool>(true);
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [job, ids, first, deadline](size_t, httplib::DataSink& sink) {
            Job::Update u = job->take(std::chrono::milliseconds(200));
            std::string out;
            if (!u.text.empty()) {
              out += sse(chunk_json(job->request, ids, u.text, "", *first));
              *first = false;
            }
            if (!u.done && std::chrono::steady_clock::now() > deadline) {
              job->cancel();
              u.done = true;
              u.error = timeout_error();
            }
            if (u.done) {
              if (u.error) {
                out += sse(u.error->to_json());
              } else {
                out += sse(chunk_json(job->request, ids, "", u.result->finish_reason, *first));
                if (job->request.include_usage) out += sse(usage_chunk_json(job->request, ids, *u.result));
              }
              out += "data: [DONE]\n\n";
            }
            if (!out.empty() && !sink.write(out.data(), out.size())) {
              job->cancel();
              return false;
            }
            if (u.done) sink.done();
            return true;
          },
          [job](bool success) {
            if (!success) job->cancel();  // the client went away: stop decoding for it
          });
    };
  };
  http_->Post("/v1/completions", completion(false));
  http_->Post("/v1/chat/completions", completion(true));
}

Server::~Server() = default;

int Server::bind() {
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
    if (port_ <= 0) fail("serve", cat("cannot bind a port on ", options_.host));
  } else {
    if (!http_->bind_to_port(options_.host, options_.port))
      fail("serve",
           cat("cannot bind ", options_.host, ":", options_.port, " (in use, or not an address here?)"));
    port_ = options_.port;
  }
  return port_;
}

void Server::listen() {
  http_->listen_after_bind();
}

void Server::stop() {
  http_->stop();
}

std::string Server::metrics() const {
  const EngineStats& s = engine_.stats();
  std::ostringstream out;
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    out << "# HELP emo_" << name << " " << help << "\n# TYPE emo_" << name << " " << type << "\nemo_" << name
        << " " << metric_value(value) << "\n";
  };
  metric("requests_total", "counter", "Completion requests the engine ran.", s.requests);
  metric("requests_failed_total", "counter", "Requests that ended with an error in the engine.",
         s.requests_failed);
  metric("requests_cancelled_total", "counter", "Requests stopped because the client went away or timed out.",
         s.requests_cancelled);
  metric("requests_rejected_total", "counter", "Requests refused before running (4xx, 503).", rejected_);
  metric("prompt_tokens_total", "counter", "Prompt tokens of the requests run.", s.prompt_tokens);
  metric("prompt_tokens_cached_total", "counter", "Prompt tokens taken from the KV cache of an earlier turn.",
         s.cached_prompt_tokens);
  metric("generated_tokens_total", "counter", "Tokens generated.", s.generated_tokens);
  metric("prefix_reuses_total", "counter", "Requests that reused a cached prefix.", s.prefix_reuses);
  metric("fresh_prefills_total", "counter", "Requests that prefilled from an empty cache.", s.fresh_prefills);
  metric("subsets_chosen_total", "counter", "Expert subsets chosen by the engine.", s.subsets_chosen);
  metric("requests_running", "gauge", "Requests in a slot (prefilling or decoding).", s.running);
  metric("slots", "gauge", "Sequences the engine decodes together (--parallel).",
         static_cast<double>(engine_.slots()));
  metric("batch_steps_total", "counter", "Batched decoder steps run.", s.steps);
  metric("batch_sequences_total", "counter",
         "Sequences over all batched steps (divided by the steps: the mean batch).", s.step_sequences);
  metric("queue_length", "gauge", "Requests waiting for the engine.",
         static_cast<double>(engine_.queue_length()));
  metric("experts_loaded", "gauge", "Experts resident in memory.",
         static_cast<double>(engine_.experts_loaded()));
  metric("kv_cache_bytes", "gauge", "Bytes of the KV cache in use.",
         static_cast<double>(engine_.kv_cache_bytes()));
  const ExpertCacheStats cache = engine_.expert_cache_stats();
  metric("expert_cache_hits_total", "counter", "Experts a request pinned that were already held.",
         static_cast<double>(cache.hits));
  metric("expert_cache_misses_total", "counter", "Experts a request pinned that had to be loaded.",
         static_cast<double>(cache.misses));
  metric("expert_cache_evictions_total", "counter", "Experts dropped from memory to stay within the budget.",
         static_cast<double>(cache.evictions));
  metric("expert_cache_resident_bytes", "gauge", "Bytes of the experts held (pinned or cached).",
         static_cast<double>(cache.resident_bytes));
  metric("expert_cache_pinned_bytes", "gauge", "Bytes of the experts pinned by running requests.",
         static_cast<double>(cache.pinned_bytes));
  metric("expert_cache_budget_bytes", "gauge", "The --memory-budget for the experts (+Inf: no limit).",
         cache.budget_bytes > 0 ? static_cast<double>(cache.budget_bytes)
                                : std::numeric_limits<double>::infinity());
  out << "# HELP emo_requests_by_experts_total Requests run per expert subset (all, a pack, a chosen id).\n"
      << "# TYPE emo_requests_by_experts_total counter\n";
  for (const auto& [id, count] : engine_.requests_by_subset())
    out << "emo_requests_by_experts_total{experts=\"" << label_value(id) << "\"} " << count << "\n";
  metric("uptime_seconds", "gauge", "Seconds since the server started.",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
  return out.str();
}

}  // namespace emo::serve
