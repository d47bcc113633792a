// The loss-curve figure written beside the final checkpoint: training loss per step (raw and smoothed) and
// the validation loss of each domain, as a small self-contained SVG.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace emo {

struct LossCurve {
  std::vector<std::pair<int64_t, double>> train;                              // (step, loss)
  std::map<std::string, std::vector<std::pair<int64_t, double>>> validation;  // domain -> (step, loss)
};

std::string loss_curve_svg(const LossCurve& curve, int width = 720, int height = 420);

}  // namespace emo
