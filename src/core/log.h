// Logging and progress. On a terminal a progress line redraws in place with rate and ETA; otherwise (logs,
// CI) it prints plain lines at a bounded rate.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace emo {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
// Writes "[emo] message" (info) or "[emo warn] message" to stderr.
void log(LogLevel level, const std::string& message);
inline void log_info(const std::string& message) {
  log(LogLevel::kInfo, message);
}
inline void log_warn(const std::string& message) {
  log(LogLevel::kWarn, message);
}
inline void log_debug(const std::string& message) {
  log(LogLevel::kDebug, message);
}

bool stderr_is_terminal();

// Wall-clock seconds since an arbitrary start.
double now_seconds();

class Timer {
 public:
  Timer() : start_(now_seconds()) {}
  double seconds() const { return now_seconds() - start_; }
  void reset() { start_ = now_seconds(); }

 private:
  double start_;
};

// A progress reporter: `Progress p("train", total, "tok"); p.update(done, "loss 3.2");`. While one is open,
// those created inside it (nested work) stay silent.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "it");
  ~Progress();
  // Sets the amount done so far and an optional status text shown after the rate.
  void update(int64_t done, const std::string& status = "");
  // Final line with the total time and mean rate.
  void finish(const std::string& status = "");

 private:
  void draw(bool final_line);

  std::string label_, unit_, status_;
  int64_t total_, done_ = 0;
  double start_, last_draw_ = -1e9;
  bool terminal_, finished_ = false;
  bool silent_;  // another Progress was already open: this one stays quiet
};

// "1.2k", "3.4M" for rates and counts.
std::string human_count(double value);
// "1h02m", "3m05s", "12s"
std::string human_duration(double seconds);
// "12.3 MiB"
std::string human_bytes(double bytes);
// A size as people write it: "1048576" (bytes), "512MiB", "2GiB", "1.5 GiB" (K/M/G/T alone, KiB.. TiB: powers
// of 1024; KB/MB/GB/TB: powers of 1000; a trailing B optional). Throws emo::Error naming `what` otherwise.
int64_t parse_bytes(const std::string& text, const std::string& what);

}  // namespace emo
