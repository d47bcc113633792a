// The files of web/ as bytes of the library: the assembler's .incbin copies each file into .rodata between
// two symbols. EMO_WEB_DIR comes from CMakeLists.txt, which also makes this file depend on the three files.
#include "analysis/report_assets.h"

#ifndef EMO_WEB_DIR
#error "EMO_WEB_DIR (the web/ directory of the source tree) must be defined by the build"
#endif

#define EMO_INCBIN(symbol, file)                 \
  __asm__(                                       \
      ".section .rodata\n"                       \
      ".global " #symbol                         \
      "_begin\n"                                 \
      ".type " #symbol                           \
      "_begin, @object\n"                        \
      ".balign 16\n" #symbol                     \
      "_begin:\n"                                \
      ".incbin \"" EMO_WEB_DIR "/" file          \
      "\"\n"                                     \
      ".global " #symbol                         \
      "_end\n"                                   \
      ".type " #symbol "_end, @object\n" #symbol \
      "_end:\n"                                  \
      ".byte 0\n"                                \
      ".previous\n");                            \
  extern "C" const char symbol##_begin[];        \
  extern "C" const char symbol##_end[];

EMO_INCBIN(emo_report_html, "report.html")
EMO_INCBIN(emo_report_css, "report.css")
EMO_INCBIN(emo_report_js, "report.js")

namespace emo::analysis {

std::string_view report_template_html() {
  return {emo_report_html_begin, static_cast<size_t>(emo_report_html_end - emo_report_html_begin)};
}
std::string_view report_template_css() {
  return {emo_report_css_begin, static_cast<size_t>(emo_report_css_end - emo_report_css_begin)};
}
std::string_view report_template_js() {
  return {emo_report_js_begin, static_cast<size_t>(emo_report_js_end - emo_report_js_begin)};
}

}  // namespace emo::analysis
