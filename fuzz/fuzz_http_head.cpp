// The Hub's response heads as libcurl hands them over (hub/http_head.h): status lines, headers, and what is
// read from them (Content-Range, Retry-After, the Hub's file headers, its error text).
#include <string_view>

#include "fuzz_input.h"
#include "hub/http_head.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view block(reinterpret_cast<const char*>(data), size);
  return emo::fuzz::run_parser([&] {
    const emo::HttpHead head = emo::parse_http_head(block);
    emo::parse_content_range(head.header("content-range"));
    emo::retry_after_seconds(head);
    emo::hub_file_info(head);
    emo::hub_error_text(head);
  });
}
