// The one error type of emo. Every failure that a user can cause (bad file, bad argument, bad config) is an
// emo::Error whose message starts with the operation in brackets and, for files, names the file and the
// position: "[safetensors] model.safetensors: byte 812: tensor 'lm_head.weight' ends past the file end".
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace emo {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A run stopped by SIGINT or SIGTERM after saving its state (emo train, emo reproduce). Still an emo::Error
// (the message says what was kept and how to resume), but the command line exits with 128 + signal (130,
// 143) as a shell does for a process a signal ended, so that scripts and schedulers can tell a stop from a
// failure (1) and from a finished run (0).
class Interrupted : public Error {
 public:
  Interrupted(int signal, const std::string& message) : Error(message), signal_(signal) {}
  int signal() const { return signal_; }
  int exit_status() const { return 128 + signal_; }

 private:
  int signal_;
};

// "[op] message"
[[noreturn]] void fail(const std::string& op, const std::string& message);
// "[op] file: message"
[[noreturn]] void fail_file(const std::string& op, const std::string& file, const std::string& message);
// "[op] file: position: message" (position is free text: "byte 812", "line 3, column 7", "row 12")
[[noreturn]] void fail_at(const std::string& op, const std::string& file, const std::string& position,
                          const std::string& message);

// Builds a message from streamable parts: fail("gemm", cat("M=", m, " exceeds ", n)).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace emo

// Checks an invariant that bad input can break; throws emo::Error("[op] message") when it does not hold.
#define EMO_CHECK(cond, op, ...)                             \
  do {                                                       \
    if (!(cond)) ::emo::fail((op), ::emo::cat(__VA_ARGS__)); \
  } while (0)
