// A weights file changed under a running emo. emo maps safetensors files (and tokenised datasets) read-only
// and reads the weights through the mapping; if another program truncates such a file in place (emo's own
// writers never do: they write a temporary file and rename it, which leaves the mapped inode whole), a read
// of a page past the new end raises SIGBUS, which would kill the process with no word of why. Every mapping
// is registered here, and a SIGBUS handler (installed with the first mapping) that finds the faulting address
// in a registered mapping prints an emo error naming the file and the byte, and exits with status 1; a fault
// anywhere else is passed on to the handler that was there before (or the default action).
//
// Why a handler and not a check at use: a check of the file size before each read would still race with the
// truncation, and reading a small model into memory would not help a large one. Exiting is the only sound
// answer: the weights the run was using are gone, and no partial result should be trusted.
#pragma once

#include <cstddef>
#include <string>

namespace emo {

// Registers [begin, begin + size) as the mapping of `path`, read by operation `op` ("safetensors",
// "dataset": the bracketed start of the error). Up to 4096 mappings at a time are registered;
// beyond that a mapping keeps the plain SIGBUS behaviour.
void register_mapped_file(const void* begin, size_t size, const std::string& path, const char* op);
// Forgets the mapping starting at `begin` (before it is unmapped).
void unregister_mapped_file(const void* begin);

}  // namespace emo
