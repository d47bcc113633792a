// The report template of web/ (report.html, report.css, report.js), assembled into the library at build time
// (report_assets.cpp), so the `emo` binary writes the report without the source tree.
#pragma once

#include <string_view>

namespace emo::analysis {

std::string_view report_template_html();
std::string_view report_template_css();
std::string_view report_template_js();

}  // namespace emo::analysis
