// The HTTP side of `emo serve` (docs/serve.md): OpenAI's routes over cpp-httplib, in front of one Engine.
// Handlers parse and check the request (src/serve/openai), submit it and wait for its Job, or stream it as
// server-sent events in OpenAI's chunk format ending in `data: [DONE]`.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "serve/engine.h"

namespace httplib {
class Server;
}

namespace emo::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (port() tells which)
  std::string api_key;  // non-empty: /v1/* requires "Authorization: Bearer KEY"
  std::string model_name = "emo";
  size_t max_body_bytes = 4 << 20;
  std::chrono::seconds request_timeout{600};  // a request not finished by then ends (504, or a stream error)
  std::chrono::seconds read_timeout{30};      // a client that does not send its request in time is dropped
};

class Server {
 public:
  Server(Engine& engine, ServerOptions options);
  ~Server();
  // Binds the address; throws emo::Error when it cannot. Returns the port.
  int bind();
  int port() const { return port_; }
  // Serves until stop() (blocks).
  void listen();
  // Stops accepting connections and returns once the running handlers have ended.
  void stop();
  int64_t requests_served() const { return served_; }

 private:
  std::string metrics() const;

  Engine& engine_;
  const ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::atomic<int64_t> served_{0}, rejected_{0};
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace emo::serve
