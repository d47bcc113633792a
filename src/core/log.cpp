#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#include "core/error.h"

namespace emo {
namespace {

LogLevel g_level = LogLevel::kInfo;
std::mutex g_mu;

}  // namespace

void set_log_level(LogLevel level) {
  g_level = level;
}
LogLevel log_level() {
  return g_level;
}

void log(LogLevel level, const std::string& message) {
  if (level < g_level) return;
  static const char* prefix[] = {"[emo debug] ", "[emo] ", "[emo warn] ", "[emo error] "};
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s%s\n", prefix[static_cast<int>(level)], message.c_str());
}

bool stderr_is_terminal() {
  static const bool tty = isatty(STDERR_FILENO) && std::getenv("CI") == nullptr;
  return tty;
}

double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

std::string human_count(double v) {
  char buf[32];
  const char* suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(v) >= 1000.0 && i < 4) {
    v /= 1000.0;
    ++i;
  }
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f%s" : "%.1f%s", v, suffix[i]);
  return buf;
}

std::string human_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  long t = std::lround(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string human_bytes(double b) {
  char buf[32];
  const char* suffix[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024.0 && i < 4) {
    b /= 1024.0;
    ++i;
  }
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f %s" : "%.1f %s", b, suffix[i]);
  return buf;
}

int64_t parse_bytes(const std::string& text, const std::string& what) {
  auto bad = [&]() -> int64_t {
    fail("size", cat(what, " '", text, "': expected a size such as 2GiB, 512MiB or 1048576 (bytes)"));
  };
  size_t at = 0;
  while (at < text.size() && (std::isdigit(static_cast<unsigned char>(text[at])) || text[at] == '.')) ++at;
  if (at == 0) return bad();
  double value = 0;
  try {
    size_t used = 0;
    value = std::stod(text.substr(0, at), &used);
    if (used != at) return bad();
  } catch (const std::exception&) {
    return bad();
  }
  std::string unit = text.substr(at);
  if (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::string prefixes = "KMGT";
  double scale = 1;
  if (!unit.empty() && unit != "B") {
    const size_t power = prefixes.find(unit[0]);
    const std::string rest = unit.substr(1);
    if (power == std::string::npos || !(rest.empty() || rest == "B" || rest == "IB")) return bad();
    scale = std::pow(rest == "B" ? 1000.0 : 1024.0, static_cast<double>(power + 1));
  }
  const double bytes = value * scale;
  if (!(bytes < 9.2e18)) return bad();
  return static_cast<int64_t>(bytes);
}

namespace {
// Progress reporters alive now: only the outermost one draws, so a long job made of many short ones (an
// experiment scoring hundreds of subsets) shows one bar, not hundreds.
std::atomic<int> g_open_progress{0};
}  // namespace

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      start_(now_seconds()),
      terminal_(stderr_is_terminal()),
      silent_(g_open_progress.fetch_add(1) > 0) {}

Progress::~Progress() {
  g_open_progress.fetch_sub(1);
  if (!silent_ && !finished_ && terminal_ && done_ > 0) std::fprintf(stderr, "\n");
}

void Progress::update(int64_t done, const std::string& status) {
  done_ = done;
  status_ = status;
  double t = now_seconds();
  // A terminal redraws 10 times a second; a log gets a plain line every 10 seconds.
  double interval = terminal_ ? 0.1 : 10.0;
  if (t - last_draw_ >= interval) {
    last_draw_ = t;
    draw(false);
  }
}

void Progress::finish(const std::string& status) {
  if (finished_) return;
  if (!status.empty()) status_ = status;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final_line) {
  if (silent_) return;
  double elapsed = now_seconds() - start_;
  double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  double eta = (rate > 0 && total_ > 0) ? (total_ - done_) / rate : NAN;
  char line[512];
  if (final_line) {
    std::snprintf(line, sizeof line, "%s: %s %s in %s (%s %s/s)%s%s", label_.c_str(),
                  human_count(static_cast<double>(done_)).c_str(), unit_.c_str(),
                  human_duration(elapsed).c_str(), human_count(rate).c_str(), unit_.c_str(),
                  status_.empty() ? "" : "  ", status_.c_str());
  } else {
    double pct = total_ > 0 ? 100.0 * done_ / total_ : 0.0;
    std::snprintf(line, sizeof line, "%s: %5.1f%% %s/%s %s  %s %s/s  ETA %s%s%s", label_.c_str(), pct,
                  human_count(static_cast<double>(done_)).c_str(),
                  human_count(static_cast<double>(total_)).c_str(), unit_.c_str(), human_count(rate).c_str(),
                  unit_.c_str(), human_duration(eta).c_str(), status_.empty() ? "" : "  ", status_.c_str());
  }
  std::lock_guard<std::mutex> lock(g_mu);
  if (terminal_)
    std::fprintf(stderr, "\r\033[2K%s%s", line, final_line ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line);
  std::fflush(stderr);
}

}  // namespace emo
