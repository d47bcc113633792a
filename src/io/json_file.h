// JSON files with errors that name the file and the place: "[json] config.json: line 3, column 7: ...", and
// typed getters that name the key: "[json] config.json: key 'hidden_size': expected an integer, found a
// string".
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace emo {

// The one JSON parser of the project. `text` is a whole file, or one line of a JSONL file (`line` >= 1). Bad
// syntax, and a number past double's range (nlohmann's out_of_range), throw "[op] source: line 3, column 7:
// not valid JSON (problem)"; never an nlohmann exception.
nlohmann::json parse_json(std::string_view text, const std::string& source, const std::string& op = "json",
                          int64_t line = 0);
// Reads and parses a JSON file; throws "[op] <path>: cannot open" or a parse error with line and column.
nlohmann::json read_json_file(const std::string& path, const std::string& op = "json");
// Writes j.dump(indent) plus a newline atomically.
void write_json_file(const std::string& path, const nlohmann::json& j, int indent = 2);
// The same for a command's --json FILE: "-" or "" (the option given without a value) is stdout.
void write_json_output(const std::string& path, const nlohmann::json& j, int indent = 2);

// "an integer", "a string", "null", ... for messages.
std::string json_kind(const nlohmann::json& j);

namespace json_detail {
template <typename T>
struct Expect;
template <>
struct Expect<bool> {
  static bool ok(const nlohmann::json& j) { return j.is_boolean(); }
  static const char* what() { return "a boolean"; }
};
template <>
struct Expect<int64_t> {
  static bool ok(const nlohmann::json& j) { return j.is_number_integer(); }
  static const char* what() { return "an integer"; }
};
template <>
struct Expect<int> {
  static bool ok(const nlohmann::json& j) {
    return j.is_number_integer() && j.get<int64_t>() >= INT32_MIN && j.get<int64_t>() <= INT32_MAX;
  }
  static const char* what() { return "a 32-bit integer"; }
};
template <>
struct Expect<uint64_t> {
  static bool ok(const nlohmann::json& j) { return j.is_number_unsigned(); }
  static const char* what() { return "an unsigned integer"; }
};
template <>
struct Expect<double> {
  static bool ok(const nlohmann::json& j) { return j.is_number(); }
  static const char* what() { return "a number"; }
};
template <>
struct Expect<float> : Expect<double> {};
template <>
struct Expect<std::string> {
  static bool ok(const nlohmann::json& j) { return j.is_string(); }
  static const char* what() { return "a string"; }
};
template <typename E>
struct Expect<std::vector<E>> {
  static bool ok(const nlohmann::json& j) {
    if (!j.is_array()) return false;
    for (const auto& item : j)
      if (!Expect<E>::ok(item)) return false;
    return true;
  }
  static std::string what() { return std::string("an array of ") + Expect<E>::what(); }
};
[[noreturn]] void fail_key(const std::string& source, const std::string& key, const std::string& problem);
[[noreturn]] void fail_type(const std::string& source, const std::string& key, const std::string& expected,
                            const nlohmann::json& found);
}  // namespace json_detail

// obj[key] as T; throws naming `source` and `key` when obj is not an object, the key is missing or the value
// has another type. T: bool, int, int64_t, float, double, std::string, std::vector of those.
template <typename T>
T json_get(const nlohmann::json& obj, const std::string& key, const std::string& source) {
  if (!obj.is_object()) json_detail::fail_key(source, key, "the enclosing value is " + json_kind(obj));
  auto it = obj.find(key);
  if (it == obj.end()) json_detail::fail_key(source, key, "missing");
  if (!json_detail::Expect<T>::ok(*it))
    json_detail::fail_type(source, key, json_detail::Expect<T>::what(), *it);
  return it->template get<T>();
}

// Like json_get, but `fallback` when the key is absent (a present key of the wrong type still throws).
template <typename T>
T json_get_or(const nlohmann::json& obj, const std::string& key, const T& fallback,
              const std::string& source) {
  if (!obj.is_object() || !obj.contains(key)) return fallback;
  return json_get<T>(obj, key, source);
}

// Absent or null -> nullopt; otherwise json_get.
template <typename T>
std::optional<T> json_get_optional(const nlohmann::json& obj, const std::string& key,
                                   const std::string& source) {
  if (!obj.is_object() || !obj.contains(key) || obj.at(key).is_null()) return std::nullopt;
  return json_get<T>(obj, key, source);
}

}  // namespace emo
