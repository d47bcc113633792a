// Per-label wall-clock totals for benchmark breakdowns ("where does a training step go?"). Off by default:
// a scope then costs one relaxed atomic load. When on, each scope adds its EXCLUSIVE time (its own time minus
// that of scopes opened inside it on the same thread) to its label, so nested scopes never count twice and
// the labels of one thread sum to the time spent inside its outermost scopes.
// Put scopes on the calling thread around a kernel call (not inside pool tasks): the kernel's wall time is
// what the caller waits for.
//   EMO_PROFILE_SCOPE("attention");   // until the end of the enclosing block
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace emo::profile {

void set_enabled(bool on);
bool enabled();
// Clears every total.
void reset();
// (label, seconds) in the order the labels were first seen.
std::vector<std::pair<std::string, double>> totals();

class Scope {
 public:
  explicit Scope(const char* label);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* label_;  // null when profiling was off at construction
  double start_ = 0, children_ = 0;
  Scope* parent_ = nullptr;
};

}  // namespace emo::profile

#define EMO_PROFILE_CONCAT_(a, b) a##b
#define EMO_PROFILE_CONCAT(a, b) EMO_PROFILE_CONCAT_(a, b)
#define EMO_PROFILE_SCOPE(label) ::emo::profile::Scope EMO_PROFILE_CONCAT(emo_profile_scope_, __LINE__)(label)
