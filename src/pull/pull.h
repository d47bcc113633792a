// `emo pull`: a model from the Hugging Face Hub, whole or only the experts a task needs (docs/pull.md).
//
// With a selection (keep_k + examples, or a subset file) it fetches the small files (config.json, the
// tokenizer's files, the shard index) in full, each shard's safetensors header by two range requests (the
// 8-byte length, then the JSON), then every tensor that is not a routed expert; then, for the examples, it
// runs the inference engine's layerwise selection (infer/generate.h) layer by layer and fetches the byte
// ranges of the experts chosen at a layer before the next layer runs. What it fetched is staged in
// "<out>.emo-pull/" (each shard a sparse file of its full size holding only the fetched ranges) and the
// output is written from it by `emo prune`'s code, so it holds the bytes `emo select` + `emo prune` on the
// full model would give; pruning_metadata.json adds a "source" entry (repository, revision, commit, the
// files' sizes and hashes). Optionally converted to bf16, int8 or q4 on the way (`emo quantize`'s code).
// Without a selection (`all`) it mirrors every file of the repository.
//
// Every file fetched whole is checked against the Hub's hash (sha256 of LFS files, the git blob id of the
// others); a shard is checked when all of its bytes were fetched (a partial shard has no hash to check:
// each range is checked for its exact length instead). Resumable: the staging directory keeps a journal of
// every completed range with its sha256; a run after a kill checks the recorded ranges against the bytes on
// disk and fetches only what is missing or damaged. Ranges go out several at a time. The output directory
// appears only when complete (temporary name, then rename) and is guarded by io/output_dir: an existing one
// that is not a previous output of emo pull (with `force`) is refused, and so is one that holds an input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "hub/hub_client.h"
#include "infer/quantize.h"
#include "tensor/dtype.h"

namespace emo {

struct PullOptions {
  std::string repo;  // "allenai/Emo_1b14b_1T"
  std::string revision = "main";
  std::string out;
  bool force = false;                      // replace a previous output of emo pull
  int64_t keep_k = 0;                      // with examples: layerwise selection while downloading
  std::string examples;                    // text or JSONL (select/examples.h)
  std::string subset;                      // or a subset file made earlier (emo select)
  std::string tokenizer;                   // tokenizer.json for the examples (default: the repository's)
  bool all = false;                        // mirror the whole repository
  std::optional<QuantizeTarget> dtype;     // convert to bf16, int8 or q4 on the way (emo quantize's code)
  int parallel = 4;                        // range requests at once
  uint64_t max_range_bytes = 64ull << 20;  // largest single range request
};

struct PullSummary {
  std::string commit;
  uint64_t bytes_fetched = 0;   // ranges and files written to the staging directory by this run
  uint64_t bytes_reused = 0;    // ranges kept from an earlier, interrupted run
  uint64_t bytes_received = 0;  // HTTP bodies, retried ones included
  int64_t requests = 0;
  uint64_t repo_bytes = 0;  // size of the weight files in the repository
  double seconds = 0;
};

PullSummary pull_model(HubClient& hub, const PullOptions& options);

// Throws "[pull] <source>: file name '<name>': ..." for a repository file name that could leave the output
// directory: empty, absolute, with a backslash, or with an empty, "." or ".." component.
void check_repo_file_name(const std::string& name, const std::string& source);

}  // namespace emo
