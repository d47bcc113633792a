// `emo generate MODEL --prompt TEXT`: text generation with the inference engine (docs/inference.md).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/generate.h"
#include "infer/model_files.h"
#include "infer/resident.h"
#include "infer/text_stream.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "select/examples.h"

namespace {

namespace fs = std::filesystem;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) emo::fail_file("generate", path, "cannot open");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::function<int()> setup_generate(CLI::App& app) {
  struct Options {
    std::string model, prompt, prompt_file, tokenizer, subset, examples, save_subset, json;
    std::vector<std::string> stop;
    int64_t keep_k = 0;
    bool no_stream = false, ignore_eos = false, memory = false, force = false;
    emo::GenerateOptions generate;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model)->required();
  CLI::Option* prompt =
      app.add_option("--prompt", o->prompt, "Prompt text (none or empty: start from the end-of-text token)");
  app.add_option("--prompt-file", o->prompt_file, "Or read the prompt from this file")->excludes(prompt);
  app.add_option("-n,--max-new-tokens", o->generate.max_new_tokens, "Tokens to generate at most")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::ModelConfig::kMaxPositionEmbeddings));
  app.add_option("--temperature", o->generate.sampling.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 100));
  app.add_option("--top-k", o->generate.sampling.top_k, "Sample among the k most likely tokens (0: all)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 1 << 30));
  app.add_option("--top-p", o->generate.sampling.top_p, "Nucleus sampling threshold (1: off)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 1, true));
  app.add_option("--seed", o->generate.sampling.seed, "Sampling seed")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kMaxSeed));
  app.add_option("--repetition-penalty", o->generate.sampling.repetition_penalty,
                 "Divide the positive logits and multiply the negative ones of tokens already seen (prompt "
                 "included) by F (1: off)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 1e6, true));
  app.add_option("--stop", o->stop, "Stop before this text (repeatable); it is not printed");
  app.add_option("--subset", o->subset, "Load and route only this expert subset (emo select)");
  app.add_flag("--force", o->force,
               "Use a --subset chosen on another checkpoint; replace previous --save-subset and --json files "
               "of emo generate");
  app.add_option("--keep-k", o->keep_k, "Keep K experts per layer chosen layerwise from --examples")
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--examples", o->examples, "Calibration examples for --keep-k (text or JSONL)");
  app.add_option(
         "--auto-experts", o->generate.auto_experts,
         "Keep K experts per layer chosen layerwise from the prompt, each layer's loaded when reached")
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--save-subset", o->save_subset, "Write the subset chosen by --keep-k / --auto-experts");
  emo::cli::add_tokenizer_option(app, o->tokenizer);
  CLI::Option* json =
      app.add_option("--json", o->json,
                     "Also write the run as JSON (text, tokens/s, memory, experts) to this file; "
                     "'-' or no value: to stdout instead of the text")
          ->expected(0, 1);
  app.add_flag("--no-stream", o->no_stream, "Print the text at the end instead of token by token");
  app.add_flag("--ignore-eos", o->ignore_eos, "Do not stop at the end-of-text token");
  app.add_flag("--memory", o->memory, "Print resident memory by component (weights, KV cache)");
  return [o, json] {
    const int restrictions = !o->subset.empty() + (o->keep_k > 0) + (o->generate.auto_experts > 0);
    if (restrictions > 1) emo::fail("generate", "--subset, --keep-k and --auto-experts exclude each other");
    if ((o->keep_k > 0) != !o->examples.empty()) emo::fail("generate", "--keep-k and --examples go together");
    for (const std::string& s : o->stop)
      if (s.empty()) emo::fail("generate", "--stop: a stop string must not be empty");
    const std::string model_dir = emo::resolve_model_dir(o->model, "generate");
    const emo::OutputRules output{
        "generate", {model_dir, o->prompt_file, o->tokenizer, o->subset, o->examples}, o->force};
    emo::check_new_output_json(o->save_subset, output, emo::ExpertSubset::kFormat);
    emo::check_new_output_json(o->json, output, emo::GenerateResult::kFormat);
    auto weights = emo::InferWeights::open(model_dir);
    const emo::ModelConfig& config = weights->config();
    const emo::Tokenizer tokenizer =
        emo::load_tokenizer_for(model_dir, o->tokenizer, config.vocab_size, "generate");
    const int32_t eos = static_cast<int32_t>(config.eos_token_id.value_or(tokenizer.eos_id()));
    std::vector<int32_t> prompt =
        tokenizer.encode(o->prompt_file.empty() ? o->prompt : read_file(o->prompt_file));
    if (prompt.empty()) {
      emo::log_info(emo::cat("empty prompt: generating after the end-of-text token (id ", eos, ")"));
      prompt = {eos};
    }
    if (!o->ignore_eos) o->generate.eos_id = eos;

    std::optional<emo::ExpertSubset> chosen;
    if (!o->subset.empty()) {
      const emo::ExpertSubset subset = emo::ExpertSubset::load(o->subset, config);
      subset.check_source(model_dir, config, o->subset, o->force, "generate");
      emo::apply_subset(*weights, subset);
    }
    if (o->keep_k > 0) {
      emo::Examples examples = emo::examples_from_file(o->examples, tokenizer);
      chosen = emo::select_layerwise(*weights, examples.sequences, o->keep_k, examples.description);
    }
    // A longer prompt than the context is refused by generate() with a message.
    const int64_t capacity = std::min<int64_t>(
        config.max_position_embeddings, static_cast<int64_t>(prompt.size()) + o->generate.max_new_tokens);
    emo::Decoder decoder(*weights, capacity);

    // With --json to stdout, stdout carries the JSON alone; otherwise the text alone (the log on stderr).
    const bool json_on_stdout = json->count() > 0 && (o->json.empty() || o->json == "-");
    const bool stream = !o->no_stream && !json_on_stdout;
    emo::TextStream text(o->stop);
    auto show = [&](const std::string& piece) {
      if (!stream) return;
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    auto on_token = [&](int32_t token) {
      if (o->generate.eos_id && token == *o->generate.eos_id) return true;
      show(text.push(tokenizer.decode({token})));
      return !text.stopped();
    };
    emo::GenerateResult result = emo::generate(decoder, prompt, o->generate, on_token);
    if (!text.stopped()) show(text.finish());
    if (!json_on_stdout) {
      if (!stream) std::fwrite(text.text().data(), 1, text.text().size(), stdout);
      // A final newline for the terminal only: piped, the output is exactly the generated text.
      if (isatty(fileno(stdout))) std::printf("\n");
      std::fflush(stdout);
    }
    if (result.chosen) chosen = result.chosen;
    if (chosen && !o->save_subset.empty()) {
      chosen->fingerprint = emo::checkpoint_fingerprint(model_dir, config);
      chosen->save(o->save_subset);
    }

    std::vector<emo::MemoryRange> ranges = weights->memory_ranges(true);
    for (const emo::MemoryRange& r : decoder.cache().memory_ranges()) ranges.push_back(r);
    emo::ResidentReport memory = emo::resident_report(ranges);
    emo::log_info(emo::cat(
        "prompt ", result.prompt_tokens, " tokens at ", emo::human_count(result.prompt_tokens_per_second()),
        " tok/s; generated ", result.tokens.size(), " tokens, decode ",
        emo::human_count(result.decode_tokens_per_second()), " tok/s; stop: ", result.stop_reason,
        "; experts loaded ", weights->experts_loaded(), "; peak RSS ",
        emo::human_bytes(static_cast<double>(memory.peak_rss))));
    if (o->memory) std::fprintf(stderr, "%s", memory.table().c_str());
    if (json->count() == 0) return 0;
    nlohmann::json j = result.to_json();
    j["model"] = model_dir;
    j["weights_dtype"] = emo::dtype_name(weights->dtype());
    j["text"] = text.text();
    j["experts_loaded"] = weights->experts_loaded();
    j["kept_weight_bytes"] = weights->kept_weight_bytes();
    j["kv_cache_bytes"] = decoder.cache().bytes_used(decoder.length());
    j["memory"] = memory.to_json();
    if (chosen && !result.chosen) j["keep_k_subset"] = chosen->to_json();
    emo::write_json_output(o->json, j, -1);
    return 0;
  };
}

EMO_COMMAND("generate", "Generate text from a prompt (KV cache; only the experts a task needs)",
            setup_generate);

}  // namespace
