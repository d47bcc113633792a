#include "select/sweep.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "io/atomic_file.h"
#include "select/examples.h"
#include "select/selection.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

std::string fmt(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

std::vector<std::string> domains_of(const data::Dataset& dataset, const std::vector<std::string>& wanted) {
  if (!wanted.empty()) return wanted;
  return dataset.domain_names();
}

// Rows of one model: the full model once per domain, then every (method, keep-k) subset.
void sweep_model(const std::string& model_dir, const SweepOptions& options, const data::Dataset& eval_set,
                 std::vector<SweepRow>& rows) {
  auto model = Model::load(model_dir);
  const int64_t E = model->config().num_experts;
  RoutingOptions standard;
  standard.training = false;
  const std::string calib = options.calib_data.empty() ? options.eval_data : options.calib_data;
  for (const std::string& domain : domains_of(eval_set, options.domains)) {
    PerplexityOptions perplexity = options.perplexity;
    perplexity.domains = {domain};
    auto score = [&](const RoutingOptions& routing) {
      return evaluate_domains(*model, eval_set, routing, perplexity);
    };
    const auto full = score(standard);
    if (full.empty()) {
      log_warn(cat("sweep: domain ", domain, " has no held-out document; skipped"));
      continue;
    }
    Examples examples = examples_from_dataset(calib, domain, options.examples);
    for (const std::string& method : options.methods) {
      auto add = [&](int64_t k, const DomainLoss& l) {
        rows.push_back({model_dir, method, domain, k, E, static_cast<double>(k) / static_cast<double>(E),
                        l.loss, l.perplexity, l.tokens});
      };
      for (int64_t k : options.keep_k) {
        if (k >= E) continue;  // the full model is scored once below
        SelectionOptions selection{k, parse_selection_method(method), options.seed};
        ExpertSubset subset = select_experts(*model, examples, selection);
        add(k, score(subset.routing_options())[0]);
        log_info(cat("sweep: ", model_dir, " ", domain, " ", method, " keep-k ", k, ": loss ",
                     fmt("%.4f", rows.back().loss)));
      }
      add(E, full[0]);
    }
  }
}

}  // namespace

std::vector<SweepRow> run_sweep(const SweepOptions& options) {
  EMO_CHECK(!options.models.empty(), "sweep", "no model given");
  EMO_CHECK(!options.keep_k.empty(), "sweep", "no keep-k value given");
  for (const std::string& m : options.methods) parse_selection_method(m);  // fail early on a typo
  data::Dataset eval_set = data::Dataset::open(options.eval_data);
  std::vector<SweepRow> rows;
  for (const std::string& model : options.models) sweep_model(model, options, eval_set, rows);
  return rows;
}

std::string sweep_markdown(const std::vector<SweepRow>& rows) {
  std::string out =
      "| model | method | domain | keep-k | fraction | loss | perplexity | tokens |\n"
      "|---|---|---|---:|---:|---:|---:|---:|\n";
  for (const SweepRow& r : rows)
    out +=
        cat("| ", r.model, " | ", r.method, " | ", r.domain, " | ", r.keep_k, " | ", fmt("%.3f", r.fraction),
            " | ", fmt("%.4f", r.loss), " | ", fmt("%.3f", r.perplexity), " | ", r.tokens, " |\n");
  return out;
}

std::string sweep_csv(const std::vector<SweepRow>& rows) {
  std::string out = "model,method,domain,keep_k,num_experts,fraction,loss,perplexity,tokens\n";
  for (const SweepRow& r : rows)
    out += cat(r.model, ",", r.method, ",", r.domain, ",", r.keep_k, ",", r.num_experts, ",",
               fmt("%.6f", r.fraction), ",", fmt("%.6f", r.loss), ",", fmt("%.6f", r.perplexity), ",",
               r.tokens, "\n");
  return out;
}

std::string sweep_svg(const std::vector<SweepRow>& rows) {
  // series "model / method" -> fraction -> (loss sum, count): mean loss over the domains
  std::map<std::string, std::map<double, std::pair<double, int>>> series;
  for (const SweepRow& r : rows) {
    auto& point = series[r.model + " / " + r.method][r.fraction];
    point.first += r.loss;
    point.second += 1;
  }
  double lo = 1e300, hi = -1e300;
  for (const auto& [name, points] : series)
    for (const auto& [x, sum] : points) {
      lo = std::min(lo, sum.first / sum.second);
      hi = std::max(hi, sum.first / sum.second);
    }
  if (series.empty()) lo = 0, hi = 1;
  if (hi - lo < 1e-9) lo -= 0.5, hi += 0.5;
  const double W = 720, H = 440, left = 70, right = 220, top = 30, bottom = 50;
  auto px = [&](double x) { return left + x * (W - left - right); };
  auto py = [&](double y) { return top + (hi - y) / (hi - lo) * (H - top - bottom); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"};
  std::string svg =
      cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", W, "\" height=\"", H,
          "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
          "fill=\"white\"/>\n");
  svg += cat("<line x1=\"", left, "\" y1=\"", H - bottom, "\" x2=\"", W - right, "\" y2=\"", H - bottom,
             "\" stroke=\"black\"/>\n<line x1=\"", left, "\" y1=\"", top, "\" x2=\"", left, "\" y2=\"",
             H - bottom, "\" stroke=\"black\"/>\n");
  for (int i = 0; i <= 4; ++i) {
    const double x = i / 4.0, y = lo + (hi - lo) * i / 4.0;
    svg += cat("<text x=\"", px(x), "\" y=\"", H - bottom + 18, "\" text-anchor=\"middle\">", fmt("%.2f", x),
               "</text>\n<text x=\"", left - 8, "\" y=\"", py(y) + 4, "\" text-anchor=\"end\">",
               fmt("%.3f", y), "</text>\n");
  }
  svg += cat("<text x=\"", (left + W - right) / 2, "\" y=\"", H - 10,
             "\" text-anchor=\"middle\">fraction of experts kept (keep-k / E)</text>\n<text x=\"16\" y=\"",
             (top + H - bottom) / 2, "\" transform=\"rotate(-90 16 ", (top + H - bottom) / 2,
             ")\" text-anchor=\"middle\">held-out loss (mean over domains)</text>\n");
  int index = 0;
  for (const auto& [name, points] : series) {
    const char* color = colors[index % 7];
    std::string path;
    for (const auto& [x, sum] : points) {
      path += cat(path.empty() ? "" : " ", fmt("%.1f", px(x)), ",", fmt("%.1f", py(sum.first / sum.second)));
      svg += cat("<circle cx=\"", fmt("%.1f", px(x)), "\" cy=\"", fmt("%.1f", py(sum.first / sum.second)),
                 "\" r=\"3\" fill=\"", color, "\"/>\n");
    }
    svg += cat("<polyline fill=\"none\" stroke=\"", color, "\" stroke-width=\"2\" points=\"", path, "\"/>\n");
    svg += cat("<text x=\"", W - right + 10, "\" y=\"", top + 16 * index + 10, "\" fill=\"", color, "\">",
               name, "</text>\n");
    ++index;
  }
  return svg + "</svg>\n";
}

void write_sweep(const std::string& dir, const std::vector<SweepRow>& rows) {
  fs::create_directories(dir);
  atomic_write_file((fs::path(dir) / "results.md").string(), sweep_markdown(rows));
  atomic_write_file((fs::path(dir) / "results.csv").string(), sweep_csv(rows));
  atomic_write_file((fs::path(dir) / "quality.svg").string(), sweep_svg(rows));
}

}  // namespace emo
