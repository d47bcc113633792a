#include "train/loss_curve.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/svg_plot.h"

namespace emo {

namespace {

// Distinct colours for up to 14 validation domains (the built-in corpus has 11), none the training blue.
const char* const kPalette[] = {"#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                                "#bcbd22", "#7f7f7f", "#000000", "#aec7e8", "#98df8a", "#ff9896", "#c5b0d5"};
constexpr int kPaletteSize = static_cast<int>(sizeof kPalette / sizeof kPalette[0]);

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

// Exponential moving average, the usual way to read a noisy training loss.
std::vector<std::pair<int64_t, double>> smooth(const std::vector<std::pair<int64_t, double>>& points) {
  std::vector<std::pair<int64_t, double>> out;
  double ema = 0, weight = 0;
  for (auto [step, v] : points) {
    ema = 0.9 * ema + 0.1 * v;
    weight = 0.9 * weight + 0.1;
    out.emplace_back(step, ema / weight);
  }
  return out;
}

}  // namespace

std::string loss_curve_svg(const LossCurve& curve, int width, int height) {
  const double left = 60, right = 160, top = 20, bottom = 45;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  int64_t x_min = INT64_MAX, x_max = INT64_MIN;
  std::vector<double> ys;
  auto take = [&](const std::vector<std::pair<int64_t, double>>& points, bool skip_start) {
    for (size_t i = 0; i < points.size(); ++i) {
      x_min = std::min(x_min, points[i].first);
      x_max = std::max(x_max, points[i].first);
      // The first steps' loss (ln V) would flatten the rest of the curve: leave the first 5% out of the y
      // range.
      if (!skip_start || i >= points.size() / 20) ys.push_back(points[i].second);
    }
  };
  take(curve.train, true);
  for (const auto& [domain, points] : curve.validation) take(points, false);
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
         "fill=\"white\"/>\n";
  ys.erase(std::remove_if(ys.begin(), ys.end(), [](double v) { return !std::isfinite(v); }), ys.end());
  if (ys.empty() || x_min > x_max) {
    svg << "<text x=\"20\" y=\"30\">no loss recorded</text>\n</svg>\n";
    return svg.str();
  }
  double y_min = *std::min_element(ys.begin(), ys.end()), y_max = *std::max_element(ys.begin(), ys.end());
  if (y_max - y_min < 1e-9) y_max = y_min + 1;
  const double pad = 0.05 * (y_max - y_min);
  y_min -= pad;
  y_max += pad;
  if (x_max == x_min) x_max = x_min + 1;
  auto px = [&](double step) { return left + (step - x_min) / static_cast<double>(x_max - x_min) * plot_w; };
  auto py = [&](double v) {
    return top + (1 - (std::clamp(v, y_min, y_max) - y_min) / (y_max - y_min)) * plot_h;
  };

  // Axes, grid and tick labels.
  svg << "<g stroke=\"#ddd\">\n";
  for (int i = 0; i <= 5; ++i) {
    double y = top + plot_h * i / 5, x = left + plot_w * i / 5;
    svg << "<line x1=\"" << left << "\" y1=\"" << num(y) << "\" x2=\"" << left + plot_w << "\" y2=\""
        << num(y) << "\"/><line x1=\"" << num(x) << "\" y1=\"" << top << "\" x2=\"" << num(x) << "\" y2=\""
        << top + plot_h << "\"/>\n";
  }
  svg << "</g>\n<g fill=\"#333\">\n";
  for (int i = 0; i <= 5; ++i) {
    double y = top + plot_h * i / 5, x = left + plot_w * i / 5;
    svg << "<text x=\"" << left - 6 << "\" y=\"" << num(y + 4) << "\" text-anchor=\"end\">"
        << label(y_max - (y_max - y_min) * i / 5) << "</text>";
    svg << "<text x=\"" << num(x) << "\" y=\"" << top + plot_h + 16 << "\" text-anchor=\"middle\">"
        << label(x_min + (x_max - x_min) * i / 5.0) << "</text>\n";
  }
  svg << "<text x=\"" << num(left + plot_w / 2) << "\" y=\"" << height - 8
      << "\" text-anchor=\"middle\">step</text>\n";
  svg << "<text transform=\"translate(16," << num(top + plot_h / 2)
      << ") rotate(-90)\" text-anchor=\"middle\">loss</text>\n";
  svg << "</g>\n<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << plot_w << "\" height=\"" << plot_h
      << "\" fill=\"none\" stroke=\"#888\"/>\n";

  auto polyline = [&](const std::vector<std::pair<int64_t, double>>& points, const std::string& style) {
    svg << "<polyline fill=\"none\" " << style << " points=\"";
    for (auto [step, v] : points)
      if (std::isfinite(v)) svg << num(px(static_cast<double>(step))) << "," << num(py(v)) << " ";
    svg << "\"/>\n";
  };
  int legend_row = 0;
  auto legend = [&](const std::string& color, const std::string& text) {
    double y = top + 10 + 18 * legend_row++;
    svg << "<line x1=\"" << left + plot_w + 12 << "\" y1=\"" << y << "\" x2=\"" << left + plot_w + 32
        << "\" y2=\"" << y << "\" stroke=\"" << color << "\" stroke-width=\"2\"/><text x=\""
        << left + plot_w + 38 << "\" y=\"" << y + 4 << "\">" << text << "</text>\n";
  };
  if (!curve.train.empty()) {
    polyline(curve.train, "stroke=\"#9ecae1\" stroke-width=\"1\"");
    polyline(smooth(curve.train), "stroke=\"#1f77b4\" stroke-width=\"2\"");
    legend("#1f77b4", "train (smoothed)");
  }
  int color = 0;
  for (const auto& [domain, points] : curve.validation) {
    std::string c = kPalette[color++ % kPaletteSize];
    polyline(points, "stroke=\"" + c + "\" stroke-width=\"1.5\"");
    for (auto [step, v] : points)
      svg << "<circle cx=\"" << num(px(static_cast<double>(step))) << "\" cy=\"" << num(py(v))
          << "\" r=\"2.5\" fill=\"" << c << "\"/>\n";
    legend(c, "val " + xml_escape(domain));
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace emo
