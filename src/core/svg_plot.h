// A small, dependency-free line chart as a self-contained SVG string: the one figure writer for experiment
// reports (quality against experts kept, training curves).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace emo {

struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in the order given
  std::string color;                              // "" = from the palette
  bool dashed = false;
  bool line = true;     // false: markers only (a single reference point, e.g. the dense model)
  bool markers = true;  // false: the line alone (long curves such as a training loss)
  double stroke_width = 2;
};

struct LinePlot {
  std::string title, x_label, y_label;
  std::vector<PlotSeries> series;
  bool log2_x = false;  // x on a log2 axis (fractions 1/16 .. 1)
  // Fixed y axis (lo, hi) instead of the data's range padded by 5%; points beyond it are drawn at its edge.
  std::optional<std::pair<double, double>> y_range;
  int width = 760, height = 460;
};

std::string line_plot_svg(const LinePlot& plot);

// Text made safe inside SVG/XML text and attribute values (< > & ").
std::string xml_escape(const std::string& text);

}  // namespace emo
