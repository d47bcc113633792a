#include "core/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace emo {
namespace {

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

std::string tick(double v) {
  if (std::fabs(v) < 1e-9) v = 0;  // a tick reached by adding steps lands a rounding error away from zero
  char b[32];
  std::snprintf(b, sizeof b, std::fabs(v) >= 100 ? "%.0f" : "%.3g", v);
  return b;
}

struct Range {
  double lo = 1e300, hi = -1e300;
  void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
  void pad() {
    if (lo > hi) lo = 0, hi = 1;
    if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
    const double margin = 0.05 * (hi - lo);
    lo -= margin, hi += margin;
  }
};

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else if (c == '"')
      out += "&quot;";
    else
      out += c;
  }
  return out;
}

std::string line_plot_svg(const LinePlot& plot) {
  static const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                   "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  auto fx = [&](double x) { return plot.log2_x ? std::log2(std::max(x, 1e-12)) : x; };
  Range xr, yr;
  for (const PlotSeries& s : plot.series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(y)) xr.add(fx(x)), yr.add(y);
  xr.pad(), yr.pad();
  if (plot.y_range) yr.lo = plot.y_range->first, yr.hi = plot.y_range->second;
  const double W = plot.width, H = plot.height, left = 70, right = 230, top = 40, bottom = 55;
  auto px = [&](double x) { return left + (fx(x) - xr.lo) / (xr.hi - xr.lo) * (W - left - right); };
  auto py = [&](double y) {
    return top + (yr.hi - std::clamp(y, yr.lo, yr.hi)) / (yr.hi - yr.lo) * (H - top - bottom);
  };

  std::string svg = cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", W, "\" height=\"", H,
                        "\" viewBox=\"0 0 ", W, " ", H, "\" font-family=\"sans-serif\" font-size=\"12\">\n",
                        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  svg += cat("<text x=\"", num(W / 2 - right / 2), "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">",
             xml_escape(plot.title), "</text>\n");
  // Axes, grid and ticks: 5 ticks per axis, on the data scale (log2 ticks at powers of two).
  svg += cat("<rect x=\"", left, "\" y=\"", top, "\" width=\"", W - left - right, "\" height=\"",
             H - top - bottom, "\" fill=\"none\" stroke=\"#333\"/>\n");
  for (int i = 0; i <= 4; ++i) {
    const double y = yr.lo + (yr.hi - yr.lo) * i / 4.0;
    svg += cat("<line x1=\"", left, "\" x2=\"", W - right, "\" y1=\"", num(py(y)), "\" y2=\"", num(py(y)),
               "\" stroke=\"#ddd\"/>\n<text x=\"", left - 6, "\" y=\"", num(py(y) + 4),
               "\" text-anchor=\"end\">", tick(y), "</text>\n");
  }
  std::vector<double> xticks;
  if (plot.log2_x) {
    for (double e = std::ceil(xr.lo); e <= std::floor(xr.hi); e += 1) xticks.push_back(std::exp2(e));
  } else {
    // About five ticks at multiples of 1, 2 or 5 times a power of ten.
    const double raw = (xr.hi - xr.lo) / 5, power = std::pow(10.0, std::floor(std::log10(raw)));
    const double step = raw / power < 2 ? 2 * power : (raw / power < 5 ? 5 * power : 10 * power);
    for (double x = std::ceil(xr.lo / step) * step; x <= xr.hi; x += step) xticks.push_back(x);
  }
  for (double x : xticks)
    svg += cat("<line x1=\"", num(px(x)), "\" x2=\"", num(px(x)), "\" y1=\"", top, "\" y2=\"", H - bottom,
               "\" stroke=\"#eee\"/>\n<text x=\"", num(px(x)), "\" y=\"", H - bottom + 16,
               "\" text-anchor=\"middle\">", tick(x), "</text>\n");
  svg += cat("<text x=\"", num((left + W - right) / 2), "\" y=\"", H - 14, "\" text-anchor=\"middle\">",
             xml_escape(plot.x_label), "</text>\n<text x=\"16\" y=\"", num((top + H - bottom) / 2),
             "\" transform=\"rotate(-90 16 ", num((top + H - bottom) / 2), ")\" text-anchor=\"middle\">",
             xml_escape(plot.y_label), "</text>\n");
  // Series and legend.
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const PlotSeries& s = plot.series[i];
    const std::string color = s.color.empty() ? kPalette[i % 8] : s.color;
    const std::string dash = s.dashed ? " stroke-dasharray=\"6 4\"" : "";
    std::string path;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      path += cat(path.empty() ? "" : " ", num(px(x)), ",", num(py(y)));
      if (s.markers)
        svg += cat("<circle cx=\"", num(px(x)), "\" cy=\"", num(py(y)), "\" r=\"", s.line ? 3 : 6,
                   "\" fill=\"", color, "\"/>\n");
    }
    if (s.line && !path.empty())
      svg += cat("<polyline fill=\"none\" stroke=\"", color, "\" stroke-width=\"", s.stroke_width, "\"", dash,
                 " points=\"", path, "\"/>\n");
    const double ly = top + 10 + 18 * static_cast<double>(i);
    svg +=
        cat("<line x1=\"", W - right + 12, "\" x2=\"", W - right + 36, "\" y1=\"", num(ly), "\" y2=\"",
            num(ly), "\" stroke=\"", color, "\" stroke-width=\"", s.line ? 2 : 8, "\"", dash,
            "/>\n<text x=\"", W - right + 42, "\" y=\"", num(ly + 4), "\">", xml_escape(s.name), "</text>\n");
  }
  return svg + "</svg>\n";
}

}  // namespace emo
