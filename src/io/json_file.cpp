#include "io/json_file.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"

namespace emo {

namespace {

constexpr const char* kOp = "json";

// "line 3, column 7" of a byte offset (1-based, as editors count).
std::string line_column(std::string_view text, size_t byte) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < byte && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return cat("line ", line, ", column ", column);
}

// nlohmann's message without its own "[json.exception.parse_error.101] parse error at line 1, column 2: "
// prefix.
std::string parse_problem(const std::string& what) {
  size_t at = what.find("column ");
  if (at != std::string::npos) {
    size_t colon = what.find(": ", at);
    if (colon != std::string::npos) return what.substr(colon + 2);
  }
  size_t bracket = what.find("] ");
  return bracket == std::string::npos ? what : what.substr(bracket + 2);
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& source, const std::string& op,
                          int64_t line) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // nlohmann reports the byte just past the offending token; point at the token itself.
    const size_t byte = e.byte > 0 ? e.byte - 1 : 0;
    const std::string where = line > 0 ? cat("line ", line, ", column ", byte + 1) : line_column(text, byte);
    fail_at(op, source, where, cat("not valid JSON (", parse_problem(e.what()), ")"));
  } catch (const nlohmann::json::out_of_range& e) {  // a number past double's range: "1E400"
    const std::string problem = cat("not valid JSON (", parse_problem(e.what()), ")");
    if (line > 0) fail_at(op, source, cat("line ", line), problem);
    fail_file(op, source, problem);
  }
}

nlohmann::json read_json_file(const std::string& path, const std::string& op) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(op, path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail_file(op, path, "read failed");
  return parse_json(text.str(), path, op);
}

void write_json_file(const std::string& path, const nlohmann::json& j, int indent) {
  atomic_write_file(path, j.dump(indent) + "\n");
}

void write_json_output(const std::string& path, const nlohmann::json& j, int indent) {
  // A model's text may hold invalid UTF-8 (a token cutting a character): replaced, not an exception.
  const std::string text = j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (path.empty() || path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  } else {
    atomic_write_file(path, text);
  }
}

std::string json_kind(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::array:
      return "an array";
    case nlohmann::json::value_t::string:
      return "a string";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
      return "an integer";
    case nlohmann::json::value_t::number_float:
      return "a number";
    case nlohmann::json::value_t::binary:
      return "binary data";
    case nlohmann::json::value_t::discarded:
      return "a discarded value";
  }
  return "a value";
}

namespace json_detail {

void fail_key(const std::string& source, const std::string& key, const std::string& problem) {
  fail_file(kOp, source, cat("key '", key, "': ", problem));
}

void fail_type(const std::string& source, const std::string& key, const std::string& expected,
               const nlohmann::json& found) {
  std::string shown = found.dump();
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
  fail_key(source, key, cat("expected ", expected, ", found ", json_kind(found), " (", shown, ")"));
}

}  // namespace json_detail

}  // namespace emo
