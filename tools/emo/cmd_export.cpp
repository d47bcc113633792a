// `emo export gguf MODEL -o FILE.gguf [--dtype f32|bf16|q8_0|q4_0|q4_k]`: a checkpoint as a GGUF file that
// llama.cpp (and the tools built on it: Ollama, LM Studio) runs with EMO's semantics, docs/export.md.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "command.h"
#include "core/log.h"
#include "export/gguf_export.h"
#include "infer/model_files.h"

namespace {

std::function<int()> setup_export(CLI::App& app) {
  app.require_subcommand(1);
  CLI::App* gguf = app.add_subcommand("gguf", "A GGUF file for llama.cpp (architecture qwen2moe)");
  struct Options {
    std::string model, out;
    emo::GgufExportOptions gguf;
  };
  auto o = std::make_shared<Options>();
  gguf->add_option("model", o->model, "Model directory (fp32, bf16, f16 or int8 weights)")->required();
  gguf->add_option("-o,--out", o->out, "Output .gguf file")->required();
  gguf->add_option(
          "--dtype", o->gguf.dtype,
          "f32, bf16, q8_0, q4_0 or q4_k (norms and routers stay f32; q4_0 keeps embeddings at q8_0; q4_k is "
          "llama.cpp's Q4_K_M mix)")
      ->capture_default_str();
  gguf->add_option("--tokenizer", o->gguf.tokenizer, "tokenizer.json (default: MODEL/tokenizer.json)");
  gguf->add_option("--name", o->gguf.name, "general.name (default: the model directory's name)");
  gguf->add_flag("--force", o->gguf.force, "Replace a file an earlier emo export gguf wrote at -o");
  return [o] {
    o->model = emo::resolve_model_dir(o->model, "export");
    emo::Timer timer;
    emo::GgufExportSummary s = emo::export_gguf(o->model, o->out, o->gguf);
    nlohmann::json j = {{"model", o->model},
                        {"out", o->out},
                        {"dtype", o->gguf.dtype},
                        {"tensors", s.tensors},
                        {"bytes", s.bytes},
                        {"layers", s.layers},
                        {"routed_experts", s.routed_experts},
                        {"experts_used", s.used_experts},
                        {"seconds", timer.seconds()}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  };
}

EMO_COMMAND("export", "Export a model for other engines (gguf: llama.cpp, Ollama, LM Studio)", setup_export);

}  // namespace
