#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace emo {

namespace {

// Fraction of the way from `begin` to `end` (inclusive of the last step), clamped to [0, 1].
double progress(int64_t step, int64_t begin, int64_t end) {
  if (end <= begin) return 1.0;
  return std::clamp(static_cast<double>(step - begin) / static_cast<double>(end - begin), 0.0, 1.0);
}

}  // namespace

double learning_rate(const ScheduleConfig& s, double peak_lr, int64_t step, int64_t total_steps) {
  double floor_lr = s.final_lr_ratio * peak_lr;
  if (s.kind == "anneal") {
    double start_lr = s.anneal_start_lr > 0 ? s.anneal_start_lr : peak_lr;
    double f = progress(step, s.anneal_start_step, total_steps - 1);
    return start_lr + (floor_lr - start_lr) * f;
  }
  if (step < s.warmup_steps)
    return peak_lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  if (s.kind == "constant") return peak_lr;
  if (s.kind == "cosine") {
    double f = progress(step, s.warmup_steps, total_steps - 1);
    return floor_lr + (peak_lr - floor_lr) * 0.5 * (1.0 + std::cos(M_PI * f));
  }
  if (s.kind == "wsd") {
    int64_t decay = s.decay_steps > 0 ? s.decay_steps : std::max<int64_t>(1, total_steps / 5);
    int64_t decay_start = std::max(s.warmup_steps, total_steps - decay);
    if (step < decay_start) return peak_lr;
    return peak_lr + (floor_lr - peak_lr) * progress(step, decay_start, total_steps - 1);
  }
  fail("schedule", cat("unknown schedule kind '", s.kind, "'"));
}

std::string warmup_warning(const ScheduleConfig& s, double peak_lr, int64_t total_steps) {
  if (s.kind == "anneal" || s.warmup_steps <= total_steps) return "";
  const double reached = learning_rate(s, peak_lr, total_steps - 1, total_steps);
  return cat("schedule.warmup_steps ", s.warmup_steps, " exceeds the run's ", total_steps,
             " steps: the learning rate only reaches ", reached, " of its peak optimizer.lr ", peak_lr,
             " and never decays (give e.g. schedule.warmup_steps=", std::max<int64_t>(1, total_steps / 10),
             ")");
}

}  // namespace emo
