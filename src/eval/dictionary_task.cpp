#include "eval/dictionary_task.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "data/corpus.h"
#include "data/text_clean.h"

namespace emo {
namespace {

constexpr size_t kMaxHeadwordBytes = 40;
constexpr size_t kMinDefinitionBytes = 16;

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\n");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\n") - begin + 1);
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Runs of whitespace (newlines included) become one space.
std::string one_line(const std::string& s) {
  std::string out;
  for (char c : s) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
  }
  return trim(out);
}

// Drops every [...] group (etymologies, "[Obs.]", "[1913 Webster]"; they nest in gcide).
std::string drop_brackets(const std::string& s) {
  std::string out;
  int depth = 0;
  for (char c : s) {
    if (c == '[') ++depth;
    if (depth == 0) out += c;
    if (c == ']' && depth > 0) --depth;
  }
  return out;
}

// The definition as a question shows it: one line, without bracketed notes, quotation sources ("--Chaucer")
// and punctuation at either end, cut at a sentence end (or else a word end) within kMaxDefinitionBytes.
std::string clean_definition(const std::string& raw) {
  std::string text = one_line(drop_brackets(raw));
  if (size_t source = text.find(" --"); source != std::string::npos) text.resize(source);
  // A definition cut before "--" often ends in the separator of what followed it.
  while (!text.empty() &&
         (text.back() == ';' || text.back() == ',' || text.back() == ':' || text.back() == ' '))
    text.pop_back();
  text = trim(text);
  while (!text.empty() && (text[0] == ',' || text[0] == ';' || text[0] == ':' || text[0] == '.'))
    text = trim(text.substr(1));
  if (text.size() <= kMaxDefinitionBytes) return text;
  size_t cut = text.rfind(". ", kMaxDefinitionBytes - 1);
  if (cut != std::string::npos && cut >= kMinDefinitionBytes) return text.substr(0, cut + 1);
  cut = text.rfind(' ', kMaxDefinitionBytes);
  return text.substr(0, cut == std::string::npos ? kMaxDefinitionBytes : cut) + " ...";
}

bool is_word_byte(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
}

// Whether `word` occurs in `text` as a whole word, in any case.
bool names_word(const std::string& text, const std::string& word) {
  const std::string t = lower(text), w = lower(word);
  for (size_t at = t.find(w); at != std::string::npos; at = t.find(w, at + 1)) {
    const bool left = at == 0 || !is_word_byte(t[at - 1]) || !is_word_byte(w.front());
    const size_t end = at + w.size();
    const bool right = end == t.size() || !is_word_byte(t[end]) || !is_word_byte(w.back());
    if (left && right) return true;
  }
  return false;
}

// The first "(Label)" gcide maps to a domain: [begin of '(', one past ')'), or npos.
std::pair<size_t, size_t> find_gcide_label(const std::string& text) {
  for (size_t open = text.find('('); open != std::string::npos; open = text.find('(', open + 1)) {
    const size_t close = text.find(')', open);
    if (close == std::string::npos) break;
    if (!data::gcide_label_domain(text.substr(open + 1, close - open - 1)).empty()) return {open, close + 1};
  }
  return {std::string::npos, std::string::npos};
}

std::optional<DictionaryEntry> parse_gcide(const std::string& id, const std::string& raw) {
  // id: "gcide/<index headword>/<entry>/<sense>"; a sense document reads "<index headword>: <body>".
  const size_t slash = id.find('/', 6);
  const std::string index_headword = id.substr(6, slash == std::string::npos ? std::string::npos : slash - 6);
  const std::string text = one_line(raw);
  const bool sense = starts_with(text, index_headword + ": ");
  const std::string body = sense ? text.substr(index_headword.size() + 2) : text;
  const auto [label_begin, label_end] = find_gcide_label(body);
  if (label_begin == std::string::npos) return std::nullopt;
  const std::string before = trim(body.substr(0, label_begin)), after = trim(body.substr(label_end));
  DictionaryEntry entry;
  if (!sense) {  // "Word, n. [etymology] (Label) definition" or "Word (pronunciation), a. (Label) ..."
    entry.headword = trim(body.substr(0, std::min({body.find(','), body.find(" ("), body.find(" [")})));
    entry.definition = after;
  } else if (before.empty()) {
    // "Index word: (Label) definition": the index word is the dictd index's first headword of a combined
    // entry, often not the word defined ("antacid: (Computers) a data storage device ..." defines buffer).
    return std::nullopt;
  } else if (starts_with(after, ",")) {  // "Index word: Collocation (Label), definition"
    entry.headword = before;
    entry.definition = after;
  } else {
    return std::nullopt;
  }
  return entry;
}

// foldoc and jargon: the headword is the first line, the definition follows the first blank line.
std::optional<DictionaryEntry> parse_first_line_headword(const std::string& text) {
  const size_t blank = text.find("\n\n");
  if (blank == std::string::npos) return std::nullopt;
  DictionaryEntry entry;
  entry.headword = trim(text.substr(0, text.find('\n')));
  std::string body = trim(text.substr(blank + 2));
  // foldoc opens with its category ("<programming>"), jargon sometimes with an origin ("[Purdue]").
  while (!body.empty() && (body[0] == '<' || body[0] == '[')) {
    const size_t close = body.find(body[0] == '<' ? '>' : ']');
    if (close == std::string::npos) break;
    body = trim(body.substr(close + 1));
  }
  entry.definition = body;
  return entry;
}

bool usable(const DictionaryEntry& entry) {
  if (entry.headword.empty() || entry.headword.size() > kMaxHeadwordBytes) return false;
  if (entry.definition.size() < kMinDefinitionBytes) return false;
  for (const char* reference : {"See ", "see ", "Same as ", "same as ", "Cf. "})
    if (starts_with(entry.definition, reference)) return false;
  return !names_word(entry.definition, entry.headword);
}

}  // namespace

std::optional<DictionaryEntry> parse_dictionary_entry(const std::string& id, const std::string& text) {
  std::optional<DictionaryEntry> entry;
  if (starts_with(id, "gcide/"))
    entry = parse_gcide(id, text);
  else if (starts_with(id, "foldoc/") || starts_with(id, "jargon/"))
    entry = parse_first_line_headword(text);
  if (!entry) return std::nullopt;
  entry->headword = one_line(entry->headword);
  entry->definition = clean_definition(entry->definition);
  if (!usable(*entry)) return std::nullopt;
  return entry;
}

std::map<std::string, std::vector<DictionaryEntry>> read_dictionary_entries(const std::string& split_path) {
  std::map<std::string, std::vector<DictionaryEntry>> by_domain;
  std::map<std::string, std::set<std::string>> seen;  // lower-cased headwords per domain
  for (const data::Document& doc : data::read_corpus_jsonl(split_path)) {
    std::optional<DictionaryEntry> entry = parse_dictionary_entry(doc.id, doc.text);
    if (entry && seen[doc.domain].insert(lower(entry->headword)).second)
      by_domain[doc.domain].push_back(std::move(*entry));
  }
  return by_domain;
}

McTask make_definition_task(const std::string& domain, const std::vector<DictionaryEntry>& entries,
                            int64_t count, int64_t num_choices, uint64_t seed) {
  EMO_CHECK(num_choices >= 2, "tasks", "the dictionary task needs at least 2 choices");
  const int64_t n_entries = static_cast<int64_t>(entries.size());
  if (n_entries < num_choices)
    fail("tasks", cat("domain '", domain, "' has ", n_entries, " usable dictionary entries, ", num_choices,
                      " are needed"));
  McTask task;
  task.name = "definition/" + domain;
  Rng rng(seed);
  const int64_t n = count > 0 ? std::min(count, n_entries) : n_entries;
  for (int64_t i = 0; i < n; ++i) {
    McQuestion q;
    q.context = "Definition: " + entries[i].definition + "\nTerm:";
    std::vector<int64_t> distractors = distinct_others(rng, n_entries, i, num_choices - 1);
    q.gold = rng.uniform_int(0, num_choices - 1);
    for (int64_t c = 0, k = 0; c < num_choices; ++c)
      q.choices.push_back(" " + entries[c == q.gold ? i : distractors[k++]].headword);
    task.questions.push_back(std::move(q));
  }
  return task;
}

}  // namespace emo
