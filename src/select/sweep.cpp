#include "select/sweep.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/svg_plot.h"
#include "data/dataset.h"
#include "io/atomic_file.h"
#include "select/examples.h"
#include "select/selection.h"
#include "train/checkpoint.h"

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
void sweep_model(const std::string& model_dir, const std::string& name, const SweepOptions& options,
                 const data::Dataset& eval_set, std::vector<SweepRow>& rows) {
  auto model = options.load_model ? options.load_model(model_dir) : Model::load(model_dir);
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
        rows.push_back({name, method, domain, k, E, static_cast<double>(k) / static_cast<double>(E), l.loss,
                        l.perplexity, l.tokens});
      };
      for (int64_t k : options.keep_k) {
        if (k >= E) continue;  // the full model is scored once below
        SelectionOptions selection{k, parse_selection_method(method), options.seed};
        ExpertSubset subset = select_experts(*model, examples, selection);
        add(k, score(subset.routing_options())[0]);
        log_info(cat("sweep: ", name, " ", domain, " ", method, " keep-k ", k, ": loss ",
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
  EMO_CHECK(options.names.empty() || options.names.size() == options.models.size(), "sweep", "--names lists ",
            options.names.size(), " names for ", options.models.size(), " models");
  std::vector<SweepRow> rows;
  for (size_t i = 0; i < options.models.size(); ++i) {
    const std::string name = options.names.empty() || options.names[i].empty()
                                 ? short_model_name(options.models[i])
                                 : options.names[i];
    sweep_model(options.models[i], name, options, eval_set, rows);
  }
  return rows;
}

std::string sweep_markdown(const std::vector<SweepRow>& rows) {
  // Columns: the keep-k values, with the fraction of the experts when every model has the same E.
  std::map<int64_t, std::set<int64_t>> experts_of_k;
  for (const SweepRow& r : rows) experts_of_k[r.keep_k].insert(r.num_experts);
  std::string header = "| model | method | domain |", rule = "|---|---|---|";
  for (const auto& [k, experts] : experts_of_k) {
    header += experts.size() == 1 ? cat(" k=", k, " (", fmt("%.1f", 100.0 * k / *experts.begin()), "%) |")
                                  : cat(" k=", k, " |");
    rule += "---:|";
  }
  // (model, method, domain) in the order the sweep ran -> keep-k -> loss; the means per (model, method).
  std::vector<std::array<std::string, 3>> order;
  std::map<std::array<std::string, 3>, std::map<int64_t, double>> loss;
  for (const SweepRow& r : rows)
    for (const std::array<std::string, 3>& key :
         {std::array<std::string, 3>{r.model, r.method, r.domain}, {r.model, r.method, "mean"}}) {
      if (!loss.count(key)) order.push_back(key);
      if (key[2] != "mean") loss[key][r.keep_k] = r.loss;
      loss[key];  // listed once
    }
  for (const auto& key : order) {
    if (key[2] != "mean") continue;
    std::map<int64_t, std::pair<double, int>> sums;
    for (const auto& [other, cells] : loss)
      if (other[0] == key[0] && other[1] == key[1] && other[2] != "mean")
        for (const auto& [k, l] : cells) sums[k].first += l, sums[k].second += 1;
    for (const auto& [k, sum] : sums) loss[key][k] = sum.first / sum.second;
  }
  // The means of each model and method after its domains.
  std::stable_partition(order.begin(), order.end(), [](const auto& key) { return key[2] != "mean"; });
  std::string out = header + "\n" + rule + "\n";
  for (const auto& key : order) {
    const bool mean = key[2] == "mean";
    out += cat("| ", key[0], " | ", key[1], " | ", mean ? "**mean**" : key[2], " |");
    for (const auto& [k, experts] : experts_of_k) {
      auto it = loss[key].find(k);
      out += it == loss[key].end() ? std::string(" |") : cat(" ", fmt("%.4f", it->second), " |");
    }
    out += "\n";
  }
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
  LinePlot plot;
  plot.title = "Held-out loss against experts kept";
  plot.x_label = "fraction of experts kept (keep-k / E)";
  plot.y_label = "held-out loss (mean over domains)";
  for (const auto& [name, points] : series) {
    PlotSeries line;
    line.name = name;
    for (const auto& [x, sum] : points) line.points.push_back({x, sum.first / sum.second});
    plot.series.push_back(line);
  }
  return line_plot_svg(plot);
}

void write_sweep(const std::string& dir, const std::vector<SweepRow>& rows) {
  fs::create_directories(dir);
  atomic_write_file((fs::path(dir) / "results.md").string(), sweep_markdown(rows));
  atomic_write_file((fs::path(dir) / "results.csv").string(), sweep_csv(rows));
  atomic_write_file((fs::path(dir) / "quality.svg").string(), sweep_svg(rows));
}

}  // namespace emo
