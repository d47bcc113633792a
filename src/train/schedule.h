// Learning-rate schedules (docs/emo.md §4): linear warmup then cosine to a floor (the released
// recipe); warmup-stable-decay; a final linear anneal started from a checkpoint; constant.
#pragma once

#include <cstdint>
#include <string>

#include "train/config.h"

namespace emo {

// Learning rate of optimizer step `step` (0-based) of a run of `total_steps` steps with peak `peak_lr`.
// Warmup ramps linearly to the peak, reaching it at step warmup_steps - 1.
double learning_rate(const ScheduleConfig& schedule, double peak_lr, int64_t step, int64_t total_steps);

// "" or, when the warmup is longer than the run (the learning rate never reaches its peak), a warning
// naming both step counts, the highest rate reached and the override that fits the run.
std::string warmup_warning(const ScheduleConfig& schedule, double peak_lr, int64_t total_steps);

}  // namespace emo
