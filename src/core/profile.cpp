#include "core/profile.h"

#include <atomic>
#include <chrono>
#include <mutex>

namespace emo::profile {
namespace {

std::atomic<bool> g_enabled{false};
std::mutex g_mu;
std::vector<std::pair<std::string, double>> g_totals;  // few labels: a linear search is cheap
thread_local Scope* tl_current = nullptr;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void add(const char* label, double seconds) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto& [name, total] : g_totals)
    if (name == label) {
      total += seconds;
      return;
    }
  g_totals.emplace_back(label, seconds);
}

}  // namespace

void set_enabled(bool on) {
  g_enabled.store(on, std::memory_order_relaxed);
}
bool enabled() {
  return g_enabled.load(std::memory_order_relaxed);
}

void reset() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_totals.clear();
}

std::vector<std::pair<std::string, double>> totals() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_totals;
}

Scope::Scope(const char* label) : label_(enabled() ? label : nullptr) {
  if (!label_) return;
  parent_ = tl_current;
  tl_current = this;
  start_ = now();
}

Scope::~Scope() {
  if (!label_) return;
  const double elapsed = now() - start_;
  add(label_, elapsed - children_);
  if (parent_) parent_->children_ += elapsed;
  tl_current = parent_;
}

}  // namespace emo::profile
