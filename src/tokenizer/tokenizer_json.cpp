// tokenizer.json (Hugging Face `tokenizers` format) reading and writing. emo reads the byte-level BPE family:
// model BPE, pre-tokenizer Split(Regex) + ByteLevel (or ByteLevel alone with its GPT-2 regex), decoder
// ByteLevel, no normalizer. Anything else is refused with a message naming the file and the JSON path.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"

namespace emo {
namespace {

using nlohmann::json;

// Pattern of the GPT-2 ByteLevel pre-tokenizer (ByteLevel with use_regex = true).
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Reader of one tokenizer.json: remembers the file name for every error it raises.
struct Reader {
  std::string source;

  [[noreturn]] void refuse(const std::string& where, const std::string& problem) const {
    fail_at("tokenizer", source, where, problem);
  }

  const json& field(const json& object, const char* key, const std::string& where) const {
    auto it = object.find(key);
    if (it == object.end()) refuse(where, cat("missing field \"", key, "\""));
    return *it;
  }

  // An optional boolean (absent or null: false); another type is refused naming the key.
  bool flag(const json& object, const char* key, const std::string& where) const {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return false;
    if (!it->is_boolean()) refuse(where + "." + key, cat("expected true or false, found ", json_kind(*it)));
    return it->get<bool>();
  }

  // An optional string (absent or null: "").
  std::string text(const json& object, const char* key, const std::string& where) const {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return "";
    if (!it->is_string()) refuse(where + "." + key, cat("expected a string, found ", json_kind(*it)));
    return it->get<std::string>();
  }

  bool is_null_or(const json& object, const char* key, const json& allowed) const {
    auto it = object.find(key);
    return it == object.end() || it->is_null() || *it == allowed;
  }

  std::string type_of(const json& object, const std::string& where) const {
    if (!object.is_object()) refuse(where, "expected a JSON object");
    const json& type = field(object, "type", where);
    if (!type.is_string()) refuse(where + ".type", "expected a string");
    return type.get<std::string>();
  }

  void check_byte_level(const json& object, const std::string& where) const {
    if (!is_null_or(object, "add_prefix_space", false))
      refuse(where + ".add_prefix_space", "add_prefix_space = true is not supported");
  }

  std::string pre_tokenizer_pattern(const json& pre) const {
    const std::string where = "pre_tokenizer";
    if (pre.is_null()) refuse(where, "missing pre-tokenizer (emo needs Split + ByteLevel)");
    std::string type = type_of(pre, where);
    if (type == "ByteLevel") {
      check_byte_level(pre, where);
      if (!is_null_or(pre, "use_regex", true))
        refuse(where, "ByteLevel without a regex split is not supported");
      return kGpt2Pattern;
    }
    if (type != "Sequence") refuse(where + ".type", cat("unsupported pre-tokenizer '", type, "'"));
    const json& list = field(pre, "pretokenizers", where);
    if (!list.is_array() || list.size() != 2)
      refuse(where + ".pretokenizers", "expected exactly [Split, ByteLevel]");
    std::string split_where = where + ".pretokenizers[0]", byte_where = where + ".pretokenizers[1]";
    if (type_of(list[0], split_where) != "Split") refuse(split_where, "expected a Split pre-tokenizer");
    if (type_of(list[1], byte_where) != "ByteLevel") refuse(byte_where, "expected a ByteLevel pre-tokenizer");
    check_byte_level(list[1], byte_where);
    if (!is_null_or(list[1], "use_regex", false))
      refuse(byte_where + ".use_regex", "a second (GPT-2) regex after Split is not supported");
    const json& split = list[0];
    const json& pattern = field(split, "pattern", split_where);
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string())
      refuse(split_where + ".pattern", "expected {\"Regex\": \"...\"}");
    // Both forms keep each regex match as one piece; emo also keeps any unmatched bytes (see encode_text).
    std::string behavior = text(split, "behavior", split_where);
    bool invert = flag(split, "invert", split_where);
    if (!((behavior == "Isolated" && !invert) || (behavior == "Removed" && invert)))
      refuse(split_where + ".behavior",
             cat("unsupported split behavior '", behavior, "' with invert = ", invert));
    return pattern["Regex"].get<std::string>();
  }

  void check_model_options(const json& model) const {
    if (!is_null_or(model, "continuing_subword_prefix", "") || !is_null_or(model, "end_of_word_suffix", ""))
      refuse("model", "subword prefixes and suffixes are not supported");
    if (!is_null_or(model, "byte_fallback", false))
      refuse("model.byte_fallback", "byte_fallback is not supported");
    if (!is_null_or(model, "dropout", 0.0) && !is_null_or(model, "dropout", 0))
      refuse("model.dropout", "BPE dropout is not supported");
  }

  std::vector<AddedToken> added_tokens(const json& root) const {
    std::vector<AddedToken> out;
    auto it = root.find("added_tokens");
    if (it == root.end() || it->is_null()) return out;
    if (!it->is_array()) refuse("added_tokens", "expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      const json& t = (*it)[i];
      std::string where = cat("added_tokens[", i, "]");
      if (!t.is_object()) refuse(where, "expected an object");
      const json& id = field(t, "id", where);
      const json& content = field(t, "content", where);
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        refuse(where + ".id", "expected a non-negative integer id");
      if (!content.is_string() || content.get<std::string>().empty())
        refuse(where + ".content", "expected a non-empty string");
      AddedToken token;
      token.id = id.get<int32_t>();
      token.content = content.get<std::string>();
      token.special = flag(t, "special", where);
      token.single_word = flag(t, "single_word", where);
      token.lstrip = flag(t, "lstrip", where);
      token.rstrip = flag(t, "rstrip", where);
      token.normalized = flag(t, "normalized", where);
      // These change where a token matches (absorbing neighbouring spaces, whole words only); emo does not
      // implement them, and refuses rather than encode differently from Hugging Face.
      if (token.single_word || token.lstrip || token.rstrip)
        refuse(where, "single_word, lstrip and rstrip added tokens are not supported");
      out.push_back(std::move(token));
    }
    return out;
  }

  // "a b" (classic) or ["a", "b"] (tokenizers >= 0.20).
  std::pair<std::string, std::string> merge_parts(const json& merge, const std::string& where) const {
    if (merge.is_string()) {
      const std::string& text = merge.get_ref<const std::string&>();
      size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
        refuse(where, cat("merge \"", text, "\" is not two tokens separated by one space"));
      return {text.substr(0, space), text.substr(space + 1)};
    }
    if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string())
      return {merge[0].get<std::string>(), merge[1].get<std::string>()};
    refuse(where, "expected \"a b\" or [\"a\", \"b\"]");
  }

  Tokenizer::Impl* read(const json& root, Tokenizer::Impl* impl) const {
    if (!root.is_object()) refuse("top level", "expected a JSON object");
    const json& model = field(root, "model", "top level");
    if (!model.is_object()) refuse("model", "expected an object");
    if (model.contains("type") && model["type"] != "BPE")
      refuse("model.type",
             cat("unsupported model type ", model["type"].dump(), " (emo reads byte-level BPE)"));
    check_model_options(model);
    impl->ignore_merges = flag(model, "ignore_merges", "model");
    if (!is_null_or(root, "normalizer", nullptr)) refuse("normalizer", "normalizers are not supported");
    impl->pattern = pre_tokenizer_pattern(root.value("pre_tokenizer", json()));
    if (root.contains("decoder") && !root["decoder"].is_null() &&
        type_of(root["decoder"], "decoder") != "ByteLevel")
      refuse("decoder.type", "expected a ByteLevel decoder");
    impl->added = added_tokens(root);

    const json& vocab = field(model, "vocab", "model");
    if (!vocab.is_object()) refuse("model.vocab", "expected an object of token -> id");
    int64_t size = 0;
    for (auto& [key, id] : vocab.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        refuse(cat("model.vocab[\"", key, "\"]"), "expected a non-negative integer id");
      size = std::max<int64_t>(size, id.get<int64_t>() + 1);
    }
    for (const AddedToken& t : impl->added) size = std::max<int64_t>(size, int64_t{t.id} + 1);
    const auto entries = static_cast<int64_t>(vocab.size() + impl->added.size());
    if (size > entries + kMaxTokenIdGap)
      refuse("model.vocab", cat("largest id ", size - 1, " but only ", entries,
                                " tokens: ids may leave holes of at most ", kMaxTokenIdGap, " in all"));
    impl->token_bytes.assign(size, std::string());
    impl->present.assign(size, false);
    for (const AddedToken& t : impl->added) {
      impl->token_bytes[t.id] = t.content;
      impl->present[t.id] = true;
    }
    std::vector<bool> is_added = impl->present;
    std::unordered_map<std::string, int32_t> id_of_text;
    id_of_text.reserve(vocab.size());
    for (auto& [key, id_json] : vocab.items()) {
      auto id = id_json.get<int32_t>();
      id_of_text.emplace(key, id);
      if (is_added[id]) continue;  // tokenizers lists added tokens in the vocab too
      std::string where = cat("model.vocab[\"", key, "\"]");
      if (impl->present[id]) refuse(where, cat("id ", id, " is used twice"));
      std::optional<std::string> bytes = byte_level::decode(key);
      if (!bytes || bytes->empty()) refuse(where, "token is not ByteLevel text");
      impl->token_bytes[id] = std::move(*bytes);
      impl->present[id] = true;
    }
    const json& merges = field(model, "merges", "model");
    if (!merges.is_array()) refuse("model.merges", "expected an array");
    impl->merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      std::string where = cat("model.merges[", i, "]");
      auto [left, right] = merge_parts(merges[i], where);
      auto l = id_of_text.find(left), r = id_of_text.find(right), m = id_of_text.find(left + right);
      if (l == id_of_text.end() || r == id_of_text.end() || m == id_of_text.end())
        refuse(where, cat("merge \"", left, " ", right, "\" uses or makes a token missing from the vocab"));
      impl->merges.emplace_back(l->second, r->second);
    }
    return impl;
  }
};

json added_token_json(const AddedToken& t) {
  return {{"id", t.id},          {"content", t.content}, {"single_word", t.single_word},
          {"lstrip", t.lstrip},  {"rstrip", t.rstrip},   {"normalized", t.normalized},
          {"special", t.special}};
}

}  // namespace

Tokenizer Tokenizer::from_json_text(std::string_view json_text, const std::string& source) {
  const json root = parse_json(json_text, source, "tokenizer");
  auto impl = std::make_shared<Impl>();
  Reader{source}.read(root, impl.get());
  impl->build(source);
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::string& tokenizer_json_path) {
  std::ifstream in(tokenizer_json_path, std::ios::binary);
  if (!in) fail_file("tokenizer", tokenizer_json_path, "cannot open the file");
  std::ostringstream text;
  text << in.rdbuf();
  return from_json_text(text.str(), tokenizer_json_path);
}

std::string Tokenizer::to_json_text() const {
  const Impl& impl = *impl_;
  json vocab = json::object();
  for (size_t id = 0; id < impl.token_bytes.size(); ++id)
    if (impl.present[id]) vocab[byte_level::encode(impl.token_bytes[id])] = id;
  json added = json::array();
  for (const AddedToken& t : impl.added) {
    vocab[t.content] = t.id;  // as tokenizers writes them: added tokens appear in the vocab as well
    added.push_back(added_token_json(t));
  }
  json merges = json::array();
  for (auto [left, right] : impl.merges)
    merges.push_back(byte_level::encode(impl.token_bytes[left]) + " " +
                     byte_level::encode(impl.token_bytes[right]));
  json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", impl.pattern}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", impl.ignore_merges},
        {"vocab", vocab},
        {"merges", merges}}}};
  try {
    return root.dump(2);
  } catch (const json::type_error& e) {
    fail("tokenizer", cat("cannot write tokenizer.json: an added token is not valid UTF-8 (", e.what(), ")"));
  }
}

void Tokenizer::save(const std::string& path) const {
  atomic_write_file(path, to_json_text());
}

}  // namespace emo
