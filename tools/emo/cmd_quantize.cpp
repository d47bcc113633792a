// `emo quantize MODEL --dtype bf16|int8|q4 -o DIR`: rewrite a checkpoint's weights for inference and measure
// the quality lost (held-out perplexity against the input checkpoint), docs/inference.md.
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "infer/quantize.h"

namespace {

namespace fs = std::filesystem;

std::function<int()> setup_quantize(CLI::App& app) {
  struct Options {
    std::string model, dtype, out, data, text, tokenizer, q4_others = "int8", q4_scale = "fitted";
    bool skip_eval = false, force = false;
    emo::PerplexityOptions perplexity;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model, "Model directory (fp32, bf16 or f16 weights")->required();
  app.add_option("--dtype", o->dtype, "bf16, int8 (per-row scales) or q4 (Q4_0 blocks of 32)")->required();
  app.add_option("--q4-others", o->q4_others, "q4: dtype of the embeddings and lm_head (int8 or bf16)")
      ->capture_default_str();
  app.add_option("--q4-scale", o->q4_scale,
                 "q4: block scales fitted by least squares, or llama.cpp's extreme / -8 (fitted|extreme)")
      ->capture_default_str();
  app.add_option("-o,--out", o->out, "Output model directory")->required();
  app.add_flag("--force", o->force, "Replace a previous output of emo quantize at --out");
  app.add_option("--data", o->data,
                 "Held-out tokenised split for the perplexity check (e.g. data/corpus/validation.bin)");
  app.add_option("--text", o->text, "Or a held-out plain text file (tokenised with --tokenizer)");
  emo::cli::add_tokenizer_option(app, o->tokenizer, " for --text");
  app.add_option("--max-tokens", o->perplexity.max_tokens, "Score exactly N tokens per domain (0: all)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyTokens));
  app.add_option("--seq-len", o->perplexity.seq_len, "Row length (default: min(1024, context))")
      ->check(emo::cli::in_range(1, emo::ModelConfig::kMaxPositionEmbeddings));
  app.add_flag("--skip-eval", o->skip_eval, "Write the checkpoint without measuring perplexity");
  return [o] {
    emo::QuantizeTarget target;
    if (o->dtype == "bf16" || o->dtype == "bfloat16")
      target.dtype = emo::DType::kBF16;
    else if (o->dtype == "int8" || o->dtype == "i8")
      target.dtype = emo::DType::kI8;
    else if (o->dtype == "q4" || o->dtype == "q4_0")
      target.dtype = emo::DType::kQ4_0;
    else
      emo::fail("quantize", emo::cat("--dtype '", o->dtype, "' is not bf16, int8 or q4"));
    if (o->q4_others == "bf16")
      target.others = emo::DType::kBF16;
    else if (o->q4_others != "int8")
      emo::fail("quantize", emo::cat("--q4-others '", o->q4_others, "' is not int8 or bf16"));
    if (o->q4_scale == "extreme")
      target.scale = emo::Q4Scale::kExtreme;
    else if (o->q4_scale != "fitted")
      emo::fail("quantize", emo::cat("--q4-scale '", o->q4_scale, "' is not fitted or extreme"));
    if (!o->skip_eval && o->data.empty() == o->text.empty())
      emo::fail("quantize",
                "give held-out text for the quality check: --data SPLIT.bin or --text FILE (or --skip-eval)");

    o->model = emo::resolve_model_dir(o->model, "quantize");
    emo::Timer timer;
    emo::QuantizeSummary s = emo::quantize_checkpoint(
        o->model, o->out, target, {"quantize", {o->data, o->text, o->tokenizer}, o->force});
    emo::log_info(emo::cat("wrote ", o->out, ": ", s.converted, " of ", s.tensors, " tensors as ", o->dtype,
                           ", ", emo::human_bytes(static_cast<double>(s.bytes_in)), " -> ",
                           emo::human_bytes(static_cast<double>(s.bytes_out)), " in ",
                           emo::human_duration(timer.seconds())));
    nlohmann::json j = {{"model", o->model},
                        {"out", o->out},
                        {"dtype", o->dtype},
                        {"bytes_in", s.bytes_in},
                        {"bytes_out", s.bytes_out}};
    if (!o->skip_eval) {
      std::string dataset = o->data;
      if (!o->text.empty()) {
        const std::string tokenizer =
            o->tokenizer.empty() ? (fs::path(o->model) / "tokenizer.json").string() : o->tokenizer;
        dataset = (fs::temp_directory_path() / emo::cat("emo_quantize_", ::getpid(), ".bin")).string();
        emo::write_text_dataset(o->text, emo::Tokenizer::load(tokenizer), dataset);
      }
      std::vector<emo::DomainLoss> ppl =
          emo::perplexity_of_checkpoints({o->model, o->out}, dataset, o->perplexity);
      if (!o->text.empty()) fs::remove(dataset);
      const double change = 100.0 * (ppl[1].perplexity / ppl[0].perplexity - 1.0);
      std::printf("held-out perplexity over %lld tokens: input %.4f, %s %.4f, change %+.3f%%\n",
                  static_cast<long long>(ppl[0].tokens), ppl[0].perplexity, o->dtype.c_str(),
                  ppl[1].perplexity, change);
      j["tokens"] = ppl[0].tokens;
      j["perplexity_input"] = ppl[0].perplexity;
      j["perplexity_output"] = ppl[1].perplexity;
      j["perplexity_change_percent"] = change;
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  };
}

EMO_COMMAND(
    "quantize",
    "Write a checkpoint in bf16, int8 (per-row scales) or q4 (Q4_0 blocks) and measure its perplexity "
    "change",
    setup_quantize);

}  // namespace
