// The outputs of `emo analyze` in one directory: analysis.json, report.html (one self-contained interactive
// page: the template of web/ with its CSS, script and the analysis data inlined; it opens offline) and
// figures/*.svg (analysis/figures.h).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace emo::analysis {

// The report page for an analysis.json.
std::string report_html(const nlohmann::json& analysis);

// Writes dir/analysis.json, dir/report.html and dir/figures/*.svg (each file atomically), creating dir.
void write_analysis(const std::string& dir, const nlohmann::json& analysis);

}  // namespace emo::analysis
