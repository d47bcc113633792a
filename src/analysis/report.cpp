#include "analysis/report.h"

#include <filesystem>
#include <string_view>

#include "analysis/figures.h"
#include "analysis/report_assets.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_file.h"

namespace emo::analysis {
namespace {

namespace fs = std::filesystem;

// Replaces the one occurrence of `marker` in `page` by `content`.
void fill(std::string& page, std::string_view marker, std::string_view content) {
  const size_t at = page.find(marker);
  EMO_CHECK(at != std::string::npos, "report", "the template lacks ", marker);
  page.replace(at, marker.size(), content);
}

// Inside <script>, "</" would end the element early: "<\/" is the same JSON string.
std::string script_safe(std::string text) {
  for (size_t at = text.find("</"); at != std::string::npos; at = text.find("</", at + 3))
    text.replace(at, 2, "<\\/");
  return text;
}

}  // namespace

std::string report_html(const nlohmann::json& analysis) {
  std::string page(report_template_html());
  const std::string data =
      script_safe(analysis.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  fill(page, "/*EMO_CSS*/", report_template_css());
  fill(page, "/*EMO_JS*/", script_safe(std::string(report_template_js())));
  fill(page, "/*EMO_DATA*/", data);  // last: the largest part, not searched for the other markers
  return page;
}

void write_analysis(const std::string& dir, const nlohmann::json& analysis) {
  const fs::path figures = fs::path(dir) / "figures";
  std::error_code error;
  fs::create_directories(figures, error);
  if (error) fail_file("analyze", figures.string(), cat("cannot create the directory: ", error.message()));
  atomic_write_file((fs::path(dir) / "analysis.json").string(),
                    analysis.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  atomic_write_file((fs::path(dir) / "report.html").string(), report_html(analysis));
  for (const auto& [name, svg] : analysis_figures(analysis))
    atomic_write_file((figures / name).string(), svg);
}

}  // namespace emo::analysis
