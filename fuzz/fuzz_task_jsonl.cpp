// A multiple-choice task in JSON Lines (emo eval --task).
#include "eval/multiple_choice.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("task.jsonl", data, size);
  return emo::fuzz::run_parser([&] {
    const auto task = emo::load_mc_task(path);
    for (const auto& question : task.questions) emo::mc_prompt(task, question);
  });
}
