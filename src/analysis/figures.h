// Standalone SVG figures of an analysis, for papers: token maps coloured by cluster and by domain, domain x
// expert usage and domain-domain cosine heatmaps per layer, and per-layer bars comparing models. Plain SVG
// 1.1 with no script and no external reference.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace emo::analysis {

struct Heatmap {
  std::string title, column_axis;
  std::vector<std::string> row_labels;
  Tensor values;         // [rows, cols], drawn white (0) to dark blue (max)
  double max = 0;        // 0 = the largest value
  bool numbers = false;  // print each value in its cell
};
std::string heatmap_svg(const Heatmap& heatmap);

struct Scatter {
  std::string title;
  std::vector<float> x, y;
  std::vector<int32_t> group;            // colour index of each point
  std::vector<std::string> group_names;  // legend (empty: no legend)
  bool many_groups = false;              // colours by golden-angle hues (clusters) instead of the palette
};
std::string scatter_svg(const Scatter& scatter);

struct BarChart {
  std::string title, y_label, x_label;
  std::vector<std::string> groups;          // along x (layers)
  std::vector<std::string> series;          // bars within a group (models)
  std::vector<std::vector<double>> values;  // [series][group]
  double y_max = 0;                         // 0 = the largest value
};
std::string bar_chart_svg(const BarChart& chart);

// Every figure of an analysis.json: (file name, SVG text). Token maps hold at most max_map_points points
// (an evenly spaced subset of the sample) to keep the files small.
std::vector<std::pair<std::string, std::string>> analysis_figures(const nlohmann::json& analysis,
                                                                  int64_t max_map_points = 6000);

}  // namespace emo::analysis
