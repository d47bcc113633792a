// The built-in dictionary task (docs/tasks.md): for each domain made of dictionary entries (the corpus's
// science, medicine and computing domains come from dict-gcide, dict-foldoc and dict-jargon), a definition
// with its headword among num_choices - 1 headwords of other entries of the same domain:
//   context  "Definition: <definition>\nTerm:"      choices  " <headword>", ...
// Built deterministically from a corpus split's JSONL (`emo corpus build` output: id, domain, text), because
// the tokenised split keeps neither document ids nor the text's structure.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "eval/multiple_choice.h"

namespace emo {

struct DictionaryEntry {
  std::string headword;
  std::string definition;  // one line, at most kMaxDefinitionBytes (cut at a sentence or word end)
};

inline constexpr size_t kMaxDefinitionBytes = 240;

// The headword and definition of one corpus document, by its source (the id's first component):
//   gcide   "Word, n. [etymology] (Label) definition" (an entry's head) or
//           "Index word: Collocation (Label), definition" (a sense; the collocation is the headword);
//           a sense "Index word: (Label) definition" is skipped: the corpus's index word is the dictd index's
//           first headword of a combined entry, often not the word the sense defines;
//   foldoc  "headword\n[aliases]\n\n   <category> definition";
//   jargon  "headword\n part of speech\n\n    definition".
// nullopt for other sources and for entries that make a poor question: no recognisable definition, a bare
// cross-reference ("See ...", "Same as ..."), a definition shorter than 16 bytes, a headword longer than 40
// bytes, or a definition that names its own headword (as a whole word, any case).
std::optional<DictionaryEntry> parse_dictionary_entry(const std::string& id, const std::string& text);

// The usable entries of a corpus split file per domain, in file order, each headword (any case) once.
std::map<std::string, std::vector<DictionaryEntry>> read_dictionary_entries(const std::string& split_path);

// Up to `count` questions (count <= 0: one per entry) from the first entries of one domain; the gold
// position and the distractors (distinct other headwords of the domain) come from a seeded RNG. emo::Error
// when the domain has fewer than num_choices entries.
McTask make_definition_task(const std::string& domain, const std::vector<DictionaryEntry>& entries,
                            int64_t count, int64_t num_choices, uint64_t seed);

}  // namespace emo
