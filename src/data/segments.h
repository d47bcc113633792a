// The two EOS rules of a packed row (docs/emo.md §3). Documents are packed end to end, each followed by EOS,
// and the EOS plays two roles that agree everywhere except at the EOS position itself:
// - the EMO pool's segments: an EOS at t > 0 starts the next segment, so it is routed with the document that
//   follows it (a row's first position stays in the first segment even when it holds EOS);
// - intra-document attention: an EOS ends its own document, so it attends to the document it closes and the
//   next document cannot see it.
#pragma once

#include <cstdint>

namespace emo::data {

// For a row of T tokens: routing_ids[t] = segment index (from 0) for the EMO pool, attention_ids[t] =
// document index (from 0) for intra-document attention.
inline void row_segment_ids(const int32_t* tokens, int64_t T, int32_t eos_id, int32_t* routing_ids,
                            int32_t* attention_ids) {
  int32_t segment = 0, document = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (t > 0 && tokens[t] == eos_id) ++segment;
    routing_ids[t] = segment;
    attention_ids[t] = document;
    if (tokens[t] == eos_id) ++document;  // only after the EOS: it belongs to the document it closes
  }
}

}  // namespace emo::data
