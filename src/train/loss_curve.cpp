#include "train/loss_curve.h"

#include <algorithm>
#include <cmath>

#include "core/svg_plot.h"

namespace emo {

namespace {

// Distinct colours for up to 14 validation domains (the built-in corpus has 11), none the training blue.
const char* const kPalette[] = {"#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                                "#bcbd22", "#7f7f7f", "#000000", "#e7ba52", "#98df8a", "#ff9896", "#c5b0d5"};
constexpr int kPaletteSize = static_cast<int>(sizeof kPalette / sizeof kPalette[0]);

using Points = std::vector<std::pair<int64_t, double>>;

// Exponential moving average, the usual way to read a noisy training loss.
Points smooth(const Points& points) {
  Points out;
  double ema = 0, weight = 0;
  for (auto [step, v] : points) {
    ema = 0.9 * ema + 0.1 * v;
    weight = 0.9 * weight + 0.1;
    out.emplace_back(step, ema / weight);
  }
  return out;
}

PlotSeries series(const std::string& name, const Points& points, const std::string& color, double width,
                  bool markers) {
  PlotSeries s{name, {}, color};
  for (auto [step, v] : points) s.points.emplace_back(static_cast<double>(step), v);
  s.stroke_width = width;
  s.markers = markers;
  return s;
}

// The y axis: every finite loss except the first 5% of the training steps, whose loss (ln V at the start)
// would flatten the rest of the curve; padded by 5%. Empty when nothing finite was recorded.
std::optional<std::pair<double, double>> y_range(const LossCurve& curve) {
  std::vector<double> ys;
  for (size_t i = curve.train.size() / 20; i < curve.train.size(); ++i) ys.push_back(curve.train[i].second);
  for (const auto& [domain, points] : curve.validation)
    for (auto [step, v] : points) ys.push_back(v);
  ys.erase(std::remove_if(ys.begin(), ys.end(), [](double v) { return !std::isfinite(v); }), ys.end());
  if (ys.empty()) return std::nullopt;
  double lo = *std::min_element(ys.begin(), ys.end()), hi = *std::max_element(ys.begin(), ys.end());
  if (hi - lo < 1e-9) hi = lo + 1;
  const double pad = 0.05 * (hi - lo);
  return std::make_pair(lo - pad, hi + pad);
}

}  // namespace

std::string loss_curve_svg(const LossCurve& curve, int width, int height) {
  LinePlot plot;
  plot.x_label = "step";
  plot.y_label = "loss";
  plot.width = width;
  plot.height = height;
  plot.y_range = y_range(curve);
  if (!plot.y_range) {
    plot.title = "no loss recorded";
    return line_plot_svg(plot);
  }
  if (!curve.train.empty()) {
    plot.series.push_back(series("train", curve.train, "#9ecae1", 1, false));
    plot.series.push_back(series("train (smoothed)", smooth(curve.train), "#1f77b4", 2, false));
  }
  int color = 0;
  for (const auto& [domain, points] : curve.validation)
    plot.series.push_back(series("val " + domain, points, kPalette[color++ % kPaletteSize], 1.5, true));
  return line_plot_svg(plot);
}

}  // namespace emo
