// Checkpoint I/O in the Hugging Face layout (../shared/docs/emo.md §2).
#include "core/error.h"
#include "model/model.h"
#include "model/model_weights.h"

namespace emo {

std::unique_ptr<Model> Model::load(const std::string& dir) {
  fail_file("checkpoint", dir, "not implemented yet");
}

void Model::save(const std::string& dir, const std::string&) const {
  fail_file("checkpoint", dir, "not implemented yet");
}

}  // namespace emo
