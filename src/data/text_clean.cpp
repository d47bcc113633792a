#include "data/text_clean.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <map>
#include <unordered_set>

#include "core/error.h"

namespace emo::data {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_upper(char c) {
  return c >= 'A' && c <= 'Z';
}
char lower(char c) {
  return is_upper(c) ? static_cast<char>(c - 'A' + 'a') : c;
}

// Case-insensitive (ASCII) search of needle in haystack from `from`; npos when absent.
size_t find_ci(std::string_view haystack, std::string_view needle, size_t from = 0) {
  if (needle.empty() || haystack.size() < needle.size()) return std::string_view::npos;
  for (size_t i = from; i + needle.size() <= haystack.size(); ++i) {
    size_t k = 0;
    while (k < needle.size() && lower(haystack[i + k]) == lower(needle[k])) ++k;
    if (k == needle.size()) return i;
  }
  return std::string_view::npos;
}

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Start offsets of the lines of `text` (the first is 0).
std::vector<size_t> line_starts(std::string_view text) {
  std::vector<size_t> starts{0};
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] == '\n' && i + 1 < text.size()) starts.push_back(i + 1);
  return starts;
}

std::string_view line_at(std::string_view text, size_t start) {
  size_t end = text.find('\n', start);
  return text.substr(start, (end == std::string_view::npos ? text.size() : end) - start);
}

bool is_blank(std::string_view line) {
  return trim(line).empty();
}

// Pieces of text between consecutive cut offsets (cuts sorted, unique, inside [0, size]).
std::vector<std::string> cut_at(std::string_view text, std::vector<size_t> cuts) {
  cuts.push_back(0);
  cuts.push_back(text.size());
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<std::string> pieces;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    std::string_view piece = trim(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
    if (!piece.empty()) pieces.emplace_back(piece);
  }
  return pieces;
}

bool is_roman(std::string_view word) {
  if (word.empty()) return false;
  return std::all_of(word.begin(), word.end(),
                     [](char c) { return std::string_view("IVXLCivxlc").find(c) != std::string_view::npos; });
}

// "CHAPTER IV.", "Chapter 12", "BOOK I", "Actus Primus." ...
bool is_chapter_heading(std::string_view line) {
  static const std::array<std::string_view, 9> kWords = {"CHAPTER", "Chapter", "BOOK",  "Book", "PART",
                                                         "ACT",     "Actus",   "STAVE", "Stave"};
  line = trim(line);
  for (std::string_view word : kWords) {
    if (line.size() <= word.size() + 1 || line.substr(0, word.size()) != word || !is_space(line[word.size()]))
      continue;
    std::string_view rest = trim(line.substr(word.size()));
    size_t end = 0;
    while (end < rest.size() && std::isalnum(static_cast<unsigned char>(rest[end]))) ++end;
    std::string_view number = rest.substr(0, end);
    if (number.empty()) return false;
    if (is_digit(number[0]) || is_roman(number)) return true;
    static const std::unordered_set<std::string_view> kOrdinals = {
        "One",    "Two",   "Three",  "Four",     "Five",    "First",   "Second",  "Third",
        "Fourth", "Fifth", "Primus", "Secundus", "Tertius", "Quartus", "Quintus", "ONE",
        "TWO",    "THREE", "FOUR",   "FIVE",     "FIRST",   "SECOND",  "THIRD"};
    return kOrdinals.count(number) > 0;
  }
  return false;
}

// Merges pieces shorter than min_bytes into the following piece (the last into the previous one).
std::vector<std::string> merge_small(std::vector<std::string> pieces, size_t min_bytes) {
  std::vector<std::string> merged;
  std::string pending;
  for (auto& piece : pieces) {
    if (!pending.empty()) pending += "\n\n";
    pending += piece;
    if (pending.size() >= min_bytes) merged.push_back(std::move(pending)), pending.clear();
  }
  if (!pending.empty()) {
    if (merged.empty())
      merged.push_back(std::move(pending));
    else
      merged.back() += "\n\n" + pending;
  }
  return merged;
}

int utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

std::string reflow(std::string_view paragraph) {
  std::string out;
  size_t start = 0;
  while (start <= paragraph.size()) {
    size_t end = paragraph.find('\n', start);
    if (end == std::string_view::npos) end = paragraph.size();
    std::string_view line = trim(paragraph.substr(start, end - start));
    if (!line.empty()) {
      if (!out.empty()) out += ' ';
      out += line;
    }
    start = end + 1;
  }
  return out;
}

}  // namespace

std::string to_valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    auto lead = static_cast<unsigned char>(bytes[i]);
    int len = utf8_sequence_length(lead);
    bool valid = len > 0 && i + len <= bytes.size();
    for (int k = 1; valid && k < len; ++k) valid = (static_cast<unsigned char>(bytes[i + k]) & 0xC0) == 0x80;
    if (valid && len >= 3) {
      auto second = static_cast<unsigned char>(bytes[i + 1]);
      // Overlong 3- and 4-byte forms, UTF-16 surrogates, and code points past U+10FFFF.
      if (lead == 0xE0 && second < 0xA0) valid = false;
      if (lead == 0xED && second >= 0xA0) valid = false;
      if (lead == 0xF0 && second < 0x90) valid = false;
      if (lead == 0xF4 && second >= 0x90) valid = false;
    }
    if (valid) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

std::string normalize_whitespace(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  int pending_newlines = 0;  // newlines seen since the last visible character, not yet written
  size_t line_content_end = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\r') {
      if (i + 1 < text.size() && text[i + 1] == '\n') continue;
      c = '\n';
    }
    if (c == '\n') {
      out.resize(line_content_end);  // drops the trailing spaces of the line
      ++pending_newlines;
      continue;
    }
    auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\t') || byte == 0x7F) continue;
    if (pending_newlines > 0) {
      if (!out.empty()) out.append(std::min(pending_newlines, 2), '\n');
      pending_newlines = 0;
      line_content_end = out.size();
    }
    out += c;
    if (!is_space(c)) line_content_end = out.size();
  }
  out.resize(line_content_end);
  return out;
}

double english_function_word_share(std::string_view text) {
  static const std::unordered_set<std::string> kFunctionWords = {
      "the",   "of",      "and",  "to",   "a",   "in",    "or",  "is",   "that", "any",  "for", "be",
      "this",  "by",      "with", "not",  "you", "are",   "as",  "it",   "on",   "such", "may", "shall",
      "other", "which",   "your", "from", "at",  "under", "all", "an",   "no",   "if",   "use", "these",
      "its",   "without", "he",   "she",  "was", "his",   "her", "they", "we",   "have", "has", "had"};
  size_t words = 0, function_words = 0;
  std::string word;
  auto flush = [&] {
    if (word.empty()) return;
    ++words;
    function_words += kFunctionWords.count(word);
    word.clear();
  };
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (std::isalpha(byte) || byte >= 0x80)
      word += lower(c);
    else
      flush();
  }
  flush();
  return words == 0 ? 0.0 : static_cast<double>(function_words) / static_cast<double>(words);
}

bool looks_english(std::string_view text) {
  size_t words = 0;
  bool in_word = false;
  for (char c : text) {
    bool letter = std::isalpha(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80;
    if (letter && !in_word) ++words;
    in_word = letter;
  }
  double share = english_function_word_share(text);
  if (words < 30) return share > 0.0;
  return share >= 0.12;
}

std::string strip_gutenberg_boilerplate(std::string_view text) {
  size_t begin = 0, end = text.size();
  for (std::string_view marker : {"START OF THE PROJECT GUTENBERG", "START OF THIS PROJECT GUTENBERG"}) {
    size_t at = find_ci(text, marker);
    if (at == std::string_view::npos) continue;
    size_t stars = text.find("***", at);
    size_t newline = text.find('\n', at);
    size_t after = std::min(stars == std::string_view::npos ? text.size() : stars + 3,
                            newline == std::string_view::npos ? text.size() : newline);
    begin = std::max(begin, after);
  }
  for (std::string_view marker :
       {"*** END OF THE PROJECT GUTENBERG", "*** END OF THIS PROJECT GUTENBERG",
        "***END OF THE PROJECT GUTENBERG", "End of Project Gutenberg", "End of the Project Gutenberg"}) {
    size_t at = find_ci(text, marker, begin);
    // The unstarred closing line belongs to the last part of the book; an early mention is part of the text.
    bool starred = marker.front() == '*';
    if (at == std::string_view::npos || (!starred && at < begin + (text.size() - begin) / 2)) continue;
    size_t cut = at;
    while (cut > begin && (text[cut - 1] == '*' || is_space(text[cut - 1]))) --cut;
    end = std::min(end, cut);
  }
  std::string_view body = trim(text.substr(begin, end - begin));
  if (body.substr(0, 11) == "Produced by" || body.substr(0, 11) == "produced by") {
    size_t paragraph_end = body.find("\n\n");
    if (paragraph_end != std::string_view::npos) body = trim(body.substr(paragraph_end));
  }
  return std::string(body);
}

std::vector<std::string> split_at_paragraphs(std::string_view text, size_t max_bytes) {
  std::vector<std::string> pieces;
  text = trim(text);
  while (text.size() > max_bytes) {
    std::string_view window = text.substr(0, max_bytes);
    size_t cut = window.rfind("\n\n");
    if (cut == std::string_view::npos || cut < max_bytes / 4) cut = window.rfind('\n');
    if (cut == std::string_view::npos || cut < max_bytes / 4) cut = window.rfind(' ');
    if (cut == std::string_view::npos || cut < max_bytes / 4) {
      cut = max_bytes;
      while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
      if (cut == 0) cut = max_bytes;
    }
    std::string_view piece = trim(text.substr(0, cut));
    if (!piece.empty()) pieces.emplace_back(piece);
    text = trim(text.substr(cut));
  }
  if (!text.empty()) pieces.emplace_back(text);
  return pieces;
}

std::vector<std::string> split_book_chapters(std::string_view text, size_t min_bytes, size_t max_bytes) {
  std::vector<size_t> cuts;
  for (size_t start : line_starts(text))
    if (is_chapter_heading(line_at(text, start))) cuts.push_back(start);
  std::vector<std::string> chapters;
  for (auto& chapter : merge_small(cut_at(text, cuts), min_bytes))
    for (auto& piece : split_at_paragraphs(chapter, max_bytes)) chapters.push_back(std::move(piece));
  return chapters;
}

std::string restore_paragraphs(std::string_view line) {
  std::string out;
  out.reserve(line.size());
  size_t i = 0;
  while (i < line.size()) {
    if (line[i] != ' ') {
      out += line[i++];
      continue;
    }
    size_t run = 0;
    while (i + run < line.size() && line[i + run] == ' ') ++run;
    out += run >= 3 ? std::string("\n\n") : std::string(run, ' ');
    i += run;
  }
  return out;
}

namespace {

// "12:1 In the beginning" -> chapter 12, verse 1; false for other lines.
bool parse_verse_line(std::string_view line, int& chapter, int& verse) {
  size_t i = 0;
  chapter = verse = 0;
  while (i < line.size() && is_digit(line[i])) chapter = chapter * 10 + (line[i++] - '0');
  if (i == 0 || i >= line.size() || line[i] != ':') return false;
  size_t verse_begin = ++i;
  while (i < line.size() && is_digit(line[i])) verse = verse * 10 + (line[i++] - '0');
  return i > verse_begin && i < line.size() && line[i] == ' ';
}

}  // namespace

std::vector<std::string> split_bible_chapters(std::string_view text) {
  std::vector<size_t> starts = line_starts(text);
  std::vector<size_t> cuts;
  int chapter = 0, verse = 0;
  for (size_t i = 0; i < starts.size(); ++i) {
    if (!parse_verse_line(line_at(text, starts[i]), chapter, verse) || verse != 1) continue;
    size_t cut = starts[i];
    if (chapter == 1) {
      // A book's first chapter takes the title paragraphs before it (those not starting with a verse number).
      size_t j = i;
      while (j > 0) {
        size_t k = j - 1;
        while (k > 0 && is_blank(line_at(text, starts[k]))) --k;
        size_t paragraph = k;
        while (paragraph > 0 && !is_blank(line_at(text, starts[paragraph - 1]))) --paragraph;
        int c = 0, v = 0;
        if (is_blank(line_at(text, starts[paragraph])) ||
            parse_verse_line(line_at(text, starts[paragraph]), c, v))
          break;
        cut = starts[paragraph];
        j = paragraph;
      }
    }
    cuts.push_back(cut);
  }
  return cut_at(text, cuts);
}

std::string strip_metamath_proofs(std::string_view mm) {
  std::string out;
  out.reserve(mm.size());
  bool in_comment = false, in_proof = false;
  size_t i = 0;
  while (i < mm.size()) {
    if (std::isspace(static_cast<unsigned char>(mm[i]))) {
      if (!in_proof) out += mm[i];
      ++i;
      continue;
    }
    size_t end = i;
    while (end < mm.size() && !std::isspace(static_cast<unsigned char>(mm[end]))) ++end;
    std::string_view token = mm.substr(i, end - i);
    if (in_proof && token == "$)") {
      in_proof = in_comment = false;  // a "$=" quoted in a comment without its "$." ends with the comment
    } else if (in_proof) {
      if (token == "$.") in_proof = false;
    } else if (in_comment && token == "$)") {
      in_comment = false;
    } else if (token == "$(") {
      in_comment = true;
    } else if (token == "$=") {
      // Proofs go wherever they are, also in commented-out theorems.
      in_proof = true;
      while (!out.empty() && is_space(out.back())) out.pop_back();
      if (!out.empty() && out.back() == '\n') out.pop_back();
      while (!out.empty() && is_space(out.back())) out.pop_back();
      out += ' ';
      i = end;
      continue;
    }
    if (!in_proof) out.append(token);
    i = end;
  }
  return out;
}

std::vector<std::string> split_metamath_sections(std::string_view mm) {
  std::vector<size_t> starts = line_starts(mm);
  std::vector<size_t> cuts;
  for (size_t i = 0; i + 1 < starts.size(); ++i) {
    if (trim(line_at(mm, starts[i])) != "$(") continue;
    std::string_view next = trim(line_at(mm, starts[i + 1]));
    if (next.substr(0, 5) == "=-=-=" || next.substr(0, 5) == "#*#*#") cuts.push_back(starts[i]);
  }
  return cut_at(mm, cuts);
}

std::string brown_to_text(std::string_view tagged) {
  std::string out;
  bool paragraph_has_words = false, glue_next = false;
  size_t start = 0;
  while (start < tagged.size()) {
    size_t end = tagged.find('\n', start);
    if (end == std::string_view::npos) end = tagged.size();
    std::string_view line = trim(tagged.substr(start, end - start));
    start = end + 1;
    if (line.empty()) {
      // Brown separates paragraphs by blank lines, sentences by line breaks inside them.
      if (paragraph_has_words && (out.size() < 2 || out.substr(out.size() - 2) != "\n\n")) out += "\n\n";
      paragraph_has_words = false;
      glue_next = true;
      continue;
    }
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
      size_t token_end = i;
      while (token_end < line.size() && !std::isspace(static_cast<unsigned char>(line[token_end])))
        ++token_end;
      if (token_end == i) break;
      std::string_view token = line.substr(i, token_end - i);
      i = token_end;
      size_t slash = token.rfind('/');
      std::string_view word = slash == std::string_view::npos || slash == 0 ? token : token.substr(0, slash);
      bool opening = word == "``" || word == "(";
      bool closing = word == "''" || word == "," || word == "." || word == ";" || word == ":" ||
                     word == "!" || word == "?" || word == ")";
      if (word == "``" || word == "''") word = "\"";
      if (!glue_next && !closing && !out.empty()) out += ' ';
      out.append(word);
      paragraph_has_words = true;
      glue_next = opening;
    }
  }
  return std::string(trim(out));
}

std::string gunzip(std::string_view compressed, const std::string& name_for_errors) {
  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) fail_file("gunzip", name_for_errors, "zlib init failed");
  std::string out;
  std::vector<char> buffer(1 << 20);
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  while (true) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer.data());
    stream.avail_out = static_cast<uInt>(buffer.size());
    int status = inflate(&stream, Z_NO_FLUSH);
    out.append(buffer.data(), buffer.size() - stream.avail_out);
    if (status == Z_STREAM_END) {
      if (stream.avail_in == 0) break;
      inflateReset(&stream);  // a further gzip member follows
      continue;
    }
    if (status != Z_OK) {
      std::string message = stream.msg ? stream.msg : "corrupt data";
      size_t position = compressed.size() - stream.avail_in;
      inflateEnd(&stream);
      fail_at("gunzip", name_for_errors, cat("byte ", position), message);
    }
    if (stream.avail_in == 0 && stream.avail_out != 0) {
      inflateEnd(&stream);
      fail_at("gunzip", name_for_errors, cat("byte ", compressed.size()), "truncated gzip stream");
    }
  }
  inflateEnd(&stream);
  return out;
}

namespace {

// dictd's base64 numbers: digits "A-Za-z0-9+/", most significant first.
bool decode_dictd_number(std::string_view digits, uint64_t& value) {
  value = 0;
  if (digits.empty()) return false;
  for (char c : digits) {
    int digit;
    if (c >= 'A' && c <= 'Z')
      digit = c - 'A';
    else if (c >= 'a' && c <= 'z')
      digit = c - 'a' + 26;
    else if (is_digit(c))
      digit = c - '0' + 52;
    else if (c == '+')
      digit = 62;
    else if (c == '/')
      digit = 63;
    else
      return false;
    value = value * 64 + static_cast<uint64_t>(digit);
  }
  return true;
}

}  // namespace

std::vector<DictEntry> read_dictd(std::string_view index, std::string_view dict,
                                  const std::string& name_for_errors) {
  std::vector<DictEntry> entries;
  std::unordered_set<uint64_t> seen_offsets;
  size_t start = 0, line_number = 0;
  while (start < index.size()) {
    size_t end = index.find('\n', start);
    if (end == std::string_view::npos) end = index.size();
    std::string_view line = index.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (line.empty()) continue;
    size_t tab1 = line.find('\t'), tab2 = tab1 == std::string_view::npos ? tab1 : line.find('\t', tab1 + 1);
    uint64_t offset = 0, length = 0;
    if (tab2 == std::string_view::npos ||
        !decode_dictd_number(line.substr(tab1 + 1, tab2 - tab1 - 1), offset) ||
        !decode_dictd_number(trim(line.substr(tab2 + 1)), length))
      fail_at("dictd", name_for_errors, cat("line ", line_number),
              "expected 'headword TAB offset TAB length'");
    if (offset + length > dict.size())
      fail_at("dictd", name_for_errors, cat("line ", line_number),
              cat("entry [", offset, ", ", offset + length, ") ends past the dictionary's ", dict.size(),
                  " bytes"));
    std::string_view headword = line.substr(0, tab1);
    if (headword.substr(0, 11) == "00-database" || headword.substr(0, 10) == "00database") continue;
    if (!seen_offsets.insert(offset).second) continue;
    entries.push_back({std::string(headword), std::string(dict.substr(offset, length))});
  }
  return entries;
}

std::string strip_dict_markup(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text)
    if (c != '{' && c != '}') out += c;
  return out;
}

namespace {

// The first "(Label)" near the start of a GCIDE paragraph: a capitalised name of at most 30 bytes, either
// abbreviated ("Zool.") or a known field word ("Physics").
std::string find_gcide_label(std::string_view paragraph) {
  size_t limit = std::min<size_t>(paragraph.size(), 240);
  for (size_t open = paragraph.find('('); open != std::string_view::npos && open < limit;
       open = paragraph.find('(', open + 1)) {
    size_t close = paragraph.find(')', open);
    if (close == std::string_view::npos || close - open > 31) continue;
    std::string_view label = paragraph.substr(open + 1, close - open - 1);
    if (label.empty() || !is_upper(label[0])) continue;
    if (label.find('.') != std::string_view::npos || !gcide_label_domain(label).empty()) {
      size_t amp = label.find(" &");
      return std::string(trim(amp == std::string_view::npos ? label : label.substr(0, amp)));
    }
  }
  return "";
}

// GCIDE paragraphs end with source tags such as "[1913 Webster]" or "[WordNet 1.5]" on their own line.
std::string drop_source_tags(std::string_view paragraph) {
  std::string out;
  size_t start = 0;
  while (start < paragraph.size()) {
    size_t end = paragraph.find('\n', start);
    if (end == std::string_view::npos) end = paragraph.size();
    std::string_view line = paragraph.substr(start, end - start);
    std::string_view trimmed = trim(line);
    bool source_tag = trimmed.size() > 2 && trimmed.front() == '[' && trimmed.back() == ']';
    if (!source_tag) {
      out.append(line);
      out += '\n';
    }
    start = end + 1;
  }
  return out;
}

// "Abdomen \Ab*do"men\, n. [L. ...]" -> "Abdomen, n. [L. ...]": the pronunciation between backslashes goes.
std::string drop_pronunciation(std::string_view head) {
  size_t open = head.find('\\');
  size_t close = open == std::string_view::npos ? open : head.find('\\', open + 1);
  if (close == std::string_view::npos) return std::string(head);
  std::string out(trim(head.substr(0, open)));
  out.append(head.substr(close + 1));
  return out;
}

bool starts_numbered_sense(std::string_view paragraph) {
  std::string_view t = trim(paragraph);
  size_t i = 0;
  while (i < t.size() && is_digit(t[i])) ++i;
  return i > 0 && i < t.size() && t[i] == '.';
}

}  // namespace

std::vector<GcideSense> gcide_senses(const DictEntry& entry) {
  // Blocks: paragraphs (separated by blank lines), also cut before a numbered sense ("   2. (Zool.) ..."),
  // which often follows its head line without a blank line. A block starting at column 0 is a (homograph)
  // head.
  std::vector<std::string_view> paragraphs;
  std::string_view text = entry.text;
  size_t block_start = std::string_view::npos;
  auto close_block = [&](size_t end) {
    if (block_start != std::string_view::npos && !trim(text.substr(block_start, end - block_start)).empty())
      paragraphs.push_back(text.substr(block_start, end - block_start));
    block_start = std::string_view::npos;
  };
  for (size_t start : line_starts(text)) {
    std::string_view line = line_at(text, start);
    if (is_blank(line)) {
      close_block(start);
    } else {
      if (block_start != std::string_view::npos && is_space(line.front()) && starts_numbered_sense(line))
        close_block(start);
      if (block_start == std::string_view::npos) block_start = start;
    }
  }
  close_block(text.size());
  std::vector<GcideSense> senses;
  std::string head_label;
  for (size_t i = 0; i < paragraphs.size(); ++i) {
    std::string_view paragraph = paragraphs[i];
    bool is_head = !is_space(paragraph.front());
    std::string label = find_gcide_label(paragraph);
    if (is_head) {
      head_label = label;
      bool senses_follow = i + 1 < paragraphs.size() && starts_numbered_sense(paragraphs[i + 1]);
      if (senses_follow) continue;  // the head holds only the etymology then
      std::string body = reflow(strip_dict_markup(drop_source_tags(drop_pronunciation(paragraph))));
      if (body.size() > entry.headword.size() + 16) senses.push_back({label, body});
      continue;
    }
    std::string body = reflow(strip_dict_markup(drop_source_tags(paragraph)));
    if (starts_numbered_sense(body)) body = std::string(trim(body.substr(body.find('.') + 1)));
    if (body.size() < 16 || body.substr(0, 4) == "Syn:" || body.substr(0, 5) == "Note:") continue;
    senses.push_back({label.empty() ? head_label : label, entry.headword + ": " + body});
  }
  return senses;
}

std::string gcide_label_domain(std::string_view label) {
  static const std::map<std::string_view, std::string_view> kDomains = {
      {"Zool.", "science"},          {"Zoöl.", "science"},         {"Bot.", "science"},
      {"Chem.", "science"},          {"Physics", "science"},       {"Astron.", "science"},
      {"Geol.", "science"},          {"Min.", "science"},          {"Biol.", "science"},
      {"Paleon.", "science"},        {"Crystallog.", "science"},   {"Opt.", "science"},
      {"Optics", "science"},         {"Elec.", "science"},         {"Electricity", "science"},
      {"Meteor.", "science"},        {"Math.", "science"},         {"Geom.", "science"},
      {"Mech.", "science"},          {"Metal.", "science"},        {"Nat. Hist.", "science"},
      {"Physiol. Chem.", "science"}, {"Arith.", "science"},        {"Alg.", "science"},
      {"Trig.", "science"},          {"Hydraul.", "science"},      {"Acoustics", "science"},
      {"Entom.", "science"},         {"Ornith.", "science"},       {"Ichth.", "science"},
      {"Conch.", "science"},         {"Phys. Geog.", "science"},   {"Biochem.", "science"},
      {"Genetics", "science"},       {"Med.", "medicine"},         {"Anat.", "medicine"},
      {"Physiol.", "medicine"},      {"Surg.", "medicine"},        {"Pathol.", "medicine"},
      {"Pharm.", "medicine"},        {"Med. Jur.", "medicine"},    {"Obstet.", "medicine"},
      {"Dent.", "medicine"},         {"Therapeutics", "medicine"}, {"Immunol.", "medicine"},
      {"Pharmacology", "medicine"},  {"Old Med.", "medicine"},     {"Computers", "computing"},
      {"Computer", "computing"},     {"Comp.", "computing"}};
  auto found = kDomains.find(label);
  return found == kDomains.end() ? std::string() : std::string(found->second);
}

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (char c : bytes) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

}  // namespace emo::data
