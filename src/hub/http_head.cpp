#include "hub/http_head.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include "core/error.h"

namespace emo {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  if (s.empty()) return std::nullopt;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// "HTTP/1.1 206 Partial Content", "HTTP/2 200": the status code, or nullopt when not a status line.
std::optional<int> status_of(std::string_view line) {
  if (line.substr(0, 5) != "HTTP/") return std::nullopt;
  const size_t space = line.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  std::string_view rest = line.substr(space + 1);
  const auto code = parse_u64(rest.substr(0, std::min<size_t>(3, rest.size())));
  if (!code || rest.size() < 3 || *code < 100 || *code > 999) return std::nullopt;
  return static_cast<int>(*code);
}

}  // namespace

std::string HttpHead::header(const std::string& name) const {
  auto it = headers.find(lower(name));
  return it == headers.end() ? std::string() : it->second;
}

HttpHead parse_http_head(std::string_view block) {
  HttpHead head;
  bool seen_status = false;
  int line_number = 0;
  while (!block.empty()) {
    const size_t eol = block.find('\n');
    std::string_view line = trim(block.substr(0, eol));
    block = eol == std::string_view::npos ? std::string_view() : block.substr(eol + 1);
    ++line_number;
    if (line.empty()) continue;
    if (auto status = status_of(line)) {
      head = HttpHead();
      head.status = *status;
      seen_status = true;
      continue;
    }
    const size_t colon = line.find(':');
    if (!seen_status || colon == std::string_view::npos || colon == 0)
      fail_at("http", "response", cat("line ", line_number),
              seen_status ? "not a 'Name: value' header" : "no status line before the headers");
    head.headers[lower(trim(line.substr(0, colon)))] = std::string(trim(line.substr(colon + 1)));
  }
  if (!seen_status) fail_at("http", "response", "line 1", "no status line");
  return head;
}

std::optional<ContentRange> parse_content_range(std::string_view value) {
  value = trim(value);
  if (value.substr(0, 6) != "bytes ") return std::nullopt;
  value.remove_prefix(6);
  const size_t dash = value.find('-'), slash = value.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) return std::nullopt;
  const auto begin = parse_u64(value.substr(0, dash));
  const auto end = parse_u64(value.substr(dash + 1, slash - dash - 1));
  if (!begin || !end || *end < *begin) return std::nullopt;
  ContentRange range{*begin, *end, std::nullopt};
  const std::string_view total = value.substr(slash + 1);
  if (total != "*") {
    range.total = parse_u64(total);
    if (!range.total || *range.total <= *end) return std::nullopt;
  }
  return range;
}

std::optional<double> retry_after_seconds(const HttpHead& head) {
  const auto seconds = parse_u64(trim(head.header("retry-after")));
  if (!seconds) return std::nullopt;
  return static_cast<double>(*seconds);
}

std::string normalize_etag(std::string_view etag) {
  etag = trim(etag);
  if (etag.substr(0, 2) == "W/") etag.remove_prefix(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return std::string(etag);
}

HubFileInfo hub_file_info(const HttpHead& head) {
  HubFileInfo info;
  info.commit = head.header("x-repo-commit");
  const std::string linked = head.header("x-linked-etag");
  info.lfs = !linked.empty();
  info.etag = normalize_etag(info.lfs ? linked : head.header("etag"));
  const std::string size =
      head.header(info.lfs || !head.header("x-linked-size").empty() ? "x-linked-size" : "content-length");
  if (auto n = parse_u64(trim(size)); n && *n <= static_cast<uint64_t>(INT64_MAX))
    info.size = static_cast<int64_t>(*n);
  if (head.status >= 300 && head.status < 400) info.location = head.header("location");
  return info;
}

std::string hub_error_text(const HttpHead& head) {
  std::string text = cat("HTTP ", head.status);
  const std::string code = head.header("x-error-code"), message = head.header("x-error-message");
  if (!code.empty() || !message.empty())
    text += cat(" (", code, code.empty() || message.empty() ? "" : ": ", message, ")");
  return text;
}

}  // namespace emo
