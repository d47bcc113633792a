#include "analysis/figures.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace emo::analysis {
namespace {

using nlohmann::json;

// The same palettes as web/report.js, so figures and report agree.
const char* const kDomainColours[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
                                      "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#8c564b",
                                      "#17becf", "#bcbd22", "#7f7f7f", "#d62728"};
constexpr int kDomainColourCount = sizeof(kDomainColours) / sizeof(kDomainColours[0]);

std::string domain_colour(int32_t d) {
  if (d < kDomainColourCount) return kDomainColours[d];
  return cat("hsl(", std::fmod(d * 137.508, 360.0), ",55%,45%)");
}

std::string cluster_colour(int32_t c) {
  char text[48];
  std::snprintf(text, sizeof text, "hsl(%.1f,68%%,%d%%)", std::fmod(c * 137.508, 360.0), c % 2 ? 42 : 55);
  return text;
}

std::string escape_xml(const std::string& text) {
  std::string out;
  for (char ch : text) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string number(double x, int digits = 1) {
  char text[32];
  std::snprintf(text, sizeof text, "%.*f", digits, x);
  return text;
}

// White (0) to dark blue (1).
std::string heat_colour(double v) {
  const double t = std::clamp(v, 0.0, 1.0);
  char text[32];
  std::snprintf(text, sizeof text, "rgb(%d,%d,%d)", static_cast<int>(std::lround(255 - t * 233)),
                static_cast<int>(std::lround(255 - t * 182)), static_cast<int>(std::lround(255 - t * 115)));
  return text;
}

std::string svg_open(double width, double height) {
  return cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", number(width, 0), "\" height=\"",
             number(height, 0), "\" viewBox=\"0 0 ", number(width, 0), " ", number(height, 0),
             "\" font-family=\"Helvetica, Arial, sans-serif\">\n<rect width=\"100%\" height=\"100%\" "
             "fill=\"white\"/>\n");
}

std::string text_at(double x, double y, const std::string& text, int size, const char* anchor = "start",
                    const std::string& extra = "") {
  return cat("<text x=\"", number(x), "\" y=\"", number(y), "\" font-size=\"", size, "\" text-anchor=\"",
             anchor, "\"", extra, ">", escape_xml(text), "</text>\n");
}

Tensor matrix_of(const json& rows, const std::vector<int64_t>& keep) {
  const int64_t cols = static_cast<int64_t>(rows[0].size());
  Tensor m({static_cast<int64_t>(keep.size()), cols});
  for (size_t r = 0; r < keep.size(); ++r)
    for (int64_t c = 0; c < cols; ++c) m[r * cols + c] = rows[keep[r]][c].get<float>();
  return m;
}

Tensor square_of(const json& rows, const std::vector<int64_t>& keep) {
  Tensor m({static_cast<int64_t>(keep.size()), static_cast<int64_t>(keep.size())});
  for (size_t r = 0; r < keep.size(); ++r)
    for (size_t c = 0; c < keep.size(); ++c) m[r * keep.size() + c] = rows[keep[r]][keep[c]].get<float>();
  return m;
}

// File-name-safe model name.
std::string slug(const std::string& name) {
  std::string out;
  for (char ch : name)
    out += std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' ? ch : '_';
  return out.empty() ? "model" : out;
}

Scatter token_scatter(const json& analysis, const json& model, bool by_domain, int64_t max_points) {
  const json& map = model["token_map"];
  const int64_t n = static_cast<int64_t>(map["x"].size());
  const int64_t step = std::max<int64_t>(1, (n + max_points - 1) / std::max<int64_t>(1, max_points));
  Scatter s;
  s.title = cat(model["name"].get<std::string>(), ": tokens, first two principal components, coloured by ",
                by_domain ? "domain" : "cluster");
  for (int64_t i = 0; i < n; i += step) {
    s.x.push_back(map["x"][i].get<float>());
    s.y.push_back(map["y"][i].get<float>());
    s.group.push_back(by_domain ? analysis["sample"]["domain"][i].get<int32_t>()
                                : map["cluster"][i].get<int32_t>());
  }
  if (by_domain) s.group_names = analysis["domains"].get<std::vector<std::string>>();
  s.many_groups = !by_domain;
  return s;
}

}  // namespace

std::string heatmap_svg(const Heatmap& h) {
  EMO_CHECK(h.values.ndim() == 2 && h.values.dim(0) == static_cast<int64_t>(h.row_labels.size()), "figure",
            "heatmap of ", shape_str(h.values.shape()), " with ", h.row_labels.size(), " row labels");
  const int64_t rows = h.values.dim(0), cols = h.values.dim(1);
  // Cells as wide as fit in about 640 units, rows at least 16 high so that the row labels stay readable.
  const double cell = std::clamp(640.0 / static_cast<double>(cols), 6.0, 34.0), row = std::max(cell, 16.0);
  const double left = 120, top = 36, height = top + rows * row + 40;
  const double width = std::max(left + cols * cell + 90, left + 7.0 * static_cast<double>(h.title.size()));
  double max = h.max;
  if (max <= 0)
    for (float v : h.values.vec()) max = std::max<double>(max, v);
  std::string svg = svg_open(width, height) + text_at(left, 20, h.title, 13);
  for (int64_t r = 0; r < rows; ++r) {
    svg += text_at(left - 6, top + r * row + row / 2 + 4, h.row_labels[r], 11, "end");
    for (int64_t c = 0; c < cols; ++c) {
      const double v = h.values[r * cols + c], x = left + c * cell, y = top + r * row;
      svg += cat("<rect x=\"", number(x), "\" y=\"", number(y), "\" width=\"", number(cell), "\" height=\"",
                 number(row), "\" fill=\"", heat_colour(max > 0 ? v / max : 0), "\"/>\n");
      if (h.numbers && cell >= 24)
        svg += text_at(x + cell / 2, y + row / 2 + 4, number(v, 2), 9, "middle",
                       max > 0 && v / max > 0.55 ? " fill=\"white\"" : "");
    }
  }
  svg += text_at(left + cols * cell / 2, top + rows * row + 18, h.column_axis, 11, "middle");
  // Colour bar.
  const double bar_x = left + cols * cell + 20;
  for (int i = 0; i < 20; ++i)
    svg += cat("<rect x=\"", number(bar_x), "\" y=\"", number(top + (19 - i) * rows * row / 20),
               "\" width=\"12\" height=\"", number(rows * row / 20 + 0.5), "\" fill=\"",
               heat_colour(i / 19.0), "\"/>\n");
  svg += text_at(bar_x + 16, top + 8, number(max, 3), 10) + text_at(bar_x + 16, top + rows * row, "0", 10);
  return svg + "</svg>\n";
}

std::string scatter_svg(const Scatter& s) {
  EMO_CHECK(s.x.size() == s.y.size() && s.x.size() == s.group.size(), "figure", "scatter of ", s.x.size(),
            " x, ", s.y.size(), " y and ", s.group.size(), " groups");
  const double plot = 560, left = 20, top = 32, legend = s.group_names.empty() ? 0 : 160;
  const double width = left + plot + 20 + legend, height = top + plot + 20;
  float x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (!s.x.empty()) {
    x0 = *std::min_element(s.x.begin(), s.x.end()), x1 = *std::max_element(s.x.begin(), s.x.end());
    y0 = *std::min_element(s.y.begin(), s.y.end()), y1 = *std::max_element(s.y.begin(), s.y.end());
  }
  const double sx = plot / std::max(1e-9f, x1 - x0), sy = plot / std::max(1e-9f, y1 - y0);
  std::string svg = svg_open(width, height) + text_at(left, 20, s.title, 13);
  svg += cat("<rect x=\"", number(left), "\" y=\"", number(top), "\" width=\"", number(plot), "\" height=\"",
             number(plot), "\" fill=\"none\" stroke=\"#ccc\"/>\n<g fill-opacity=\"0.6\">\n");
  for (size_t i = 0; i < s.x.size(); ++i)
    svg += cat("<circle cx=\"", number(left + (s.x[i] - x0) * sx), "\" cy=\"",
               number(top + plot - (s.y[i] - y0) * sy), "\" r=\"1.6\" fill=\"",
               s.many_groups ? cluster_colour(s.group[i]) : domain_colour(s.group[i]), "\"/>\n");
  svg += "</g>\n";
  for (size_t g = 0; g < s.group_names.size(); ++g) {
    const double y = top + 10 + g * 16;
    svg +=
        cat("<rect x=\"", number(left + plot + 20), "\" y=\"", number(y - 9),
            "\" width=\"10\" height=\"10\" fill=\"",
            s.many_groups ? cluster_colour(static_cast<int32_t>(g)) : domain_colour(static_cast<int32_t>(g)),
            "\"/>\n");
    svg += text_at(left + plot + 36, y, s.group_names[g], 11);
  }
  return svg + "</svg>\n";
}

std::string bar_chart_svg(const BarChart& chart) {
  EMO_CHECK(chart.values.size() == chart.series.size(), "figure", chart.values.size(), " value rows for ",
            chart.series.size(), " series");
  const double left = 56, top = 44, plot_w = std::max<double>(240, 70.0 * chart.groups.size()), plot_h = 240;
  const double width = left + plot_w + 20, height = top + plot_h + 46;
  double y_max = chart.y_max;
  for (const auto& row : chart.values)
    for (double v : row) y_max = std::max(y_max, chart.y_max > 0 ? chart.y_max : v);
  if (y_max <= 0) y_max = 1;
  std::string svg = svg_open(width, height) + text_at(left, 18, chart.title, 13);
  const auto y_of = [&](double v) { return top + plot_h - v / y_max * plot_h; };
  for (int i = 0; i <= 4; ++i) {
    const double v = y_max * i / 4;
    svg += cat("<line x1=\"", number(left), "\" x2=\"", number(left + plot_w), "\" y1=\"", number(y_of(v)),
               "\" y2=\"", number(y_of(v)), "\" stroke=\"#e3e3e3\"/>\n");
    svg += text_at(left - 4, y_of(v) + 4, number(v, 2), 10, "end");
  }
  const double group_w = plot_w / std::max<size_t>(1, chart.groups.size());
  const double bar_w = group_w * 0.8 / std::max<size_t>(1, chart.series.size());
  const char* colours[] = {"#2f6fde", "#e15759", "#59a14f", "#f28e2b"};
  for (size_t g = 0; g < chart.groups.size(); ++g) {
    for (size_t s = 0; s < chart.series.size(); ++s) {
      const double v = g < chart.values[s].size() ? chart.values[s][g] : 0;
      const double x = left + g * group_w + group_w * 0.1 + s * bar_w;
      svg += cat("<rect x=\"", number(x), "\" y=\"", number(y_of(v)), "\" width=\"", number(bar_w - 1),
                 "\" height=\"", number(top + plot_h - y_of(v)), "\" fill=\"", colours[s % 4], "\"/>\n");
    }
    svg += text_at(left + (g + 0.5) * group_w, top + plot_h + 14, chart.groups[g], 10, "middle");
  }
  svg += text_at(left + plot_w / 2, top + plot_h + 32, chart.x_label, 11, "middle");
  svg += text_at(14, top + plot_h / 2, chart.y_label, 11, "middle",
                 cat(" transform=\"rotate(-90 14 ", number(top + plot_h / 2), ")\""));
  for (size_t s = 0; s < chart.series.size(); ++s)  // legend under the title
    svg += text_at(left + 110.0 * s, 32, chart.series[s], 11, "start", cat(" fill=\"", colours[s % 4], "\""));
  return svg + "</svg>\n";
}

std::vector<std::pair<std::string, std::string>> analysis_figures(const json& analysis,
                                                                  int64_t max_map_points) {
  std::vector<std::pair<std::string, std::string>> figures;
  const auto domains = analysis["domains"].get<std::vector<std::string>>();
  std::vector<int64_t> present;  // domains with tokens in the sample
  std::vector<std::string> names;
  for (size_t d = 0; d < domains.size(); ++d)
    if (analysis["domain_tokens"][d].get<int64_t>() > 0) {
      present.push_back(static_cast<int64_t>(d));
      names.push_back(domains[d]);
    }
  for (const json& model : analysis["models"]) {
    const std::string name = model["name"].get<std::string>(), file = slug(name);
    figures.emplace_back(file + "_map_clusters.svg",
                         scatter_svg(token_scatter(analysis, model, false, max_map_points)));
    figures.emplace_back(file + "_map_domains.svg",
                         scatter_svg(token_scatter(analysis, model, true, max_map_points)));
    for (size_t l = 0; l < model["usage"].size(); ++l) {
      const json& usage = model["usage"][l];
      Heatmap mass{cat(name, ", layer ", l, ": share of each domain's tokens choosing the expert"),
                   "routed expert", names, matrix_of(usage["chosen"], present)};
      figures.emplace_back(cat(file, "_usage_layer", l, ".svg"), heatmap_svg(mass));
      Heatmap cosine{cat(name, ", layer ", l,
                         ": cosine similarity of domains' expert usage (tokens choosing each expert)"),
                     "domain",
                     names,
                     square_of(usage["cosine"], present),
                     1.0,
                     true};
      figures.emplace_back(cat(file, "_cosine_layer", l, ".svg"), heatmap_svg(cosine));
    }
  }
  BarChart cosine, coverage;
  cosine.title = "Mean domain-domain cosine of expert usage";
  cosine.y_label = "cosine";
  coverage.title = cat("Experts holding ", analysis["options"]["coverage_fraction"].get<double>() * 100,
                       "% of a domain's routing mass (mean over domains)");
  coverage.y_label = "experts";
  cosine.x_label = coverage.x_label = "layer";
  for (const json& model : analysis["models"]) {
    cosine.series.push_back(model["name"]);
    coverage.series.push_back(model["name"]);
    cosine.values.emplace_back();
    coverage.values.emplace_back();
    for (const json& usage : model["usage"]) {
      cosine.values.back().push_back(usage["mean_cosine"].get<double>());
      coverage.values.back().push_back(usage["mean_coverage"].get<double>());
    }
  }
  for (size_t l = 0; l < analysis["models"][0]["usage"].size(); ++l) {
    cosine.groups.push_back(std::to_string(l));
    coverage.groups.push_back(std::to_string(l));
  }
  cosine.y_max = 1.0;
  figures.emplace_back("layers_cosine.svg", bar_chart_svg(cosine));
  figures.emplace_back("layers_coverage.svg", bar_chart_svg(coverage));
  return figures;
}

}  // namespace emo::analysis
