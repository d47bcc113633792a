// End-to-end training throughput on the engine's reference configuration (d 256, 4 layers, 4 heads,
// 64 experts = 63 routed + 1 shared of width 128, top 4, vocab 8192, rows of 512 tokens, batch 8, EMO
// routing), here as a global batch of 8 rows in 2 micro-batches of 4 (gradient accumulation; 1 micro-batch
// per rank under 2 MPI ranks).
//
// Figures, all from this one run:
//   - the bare step: Trainer::train_step on rows prepared beforehand (forward, backward, all-reduce, AdamW);
//   - the full loop: Trainer::run (data packing, metrics.jsonl, progress, a checkpoint, loss-curve figure),
//     with its own split of time into step / data / checkpoint / other;
//   - the loop overhead: (data + other) per step over the step time, plus one checkpoint amortised over the
//     default interval (run.checkpoint_every = 500 steps). Target: under 5%.
// with 1 and 2 threads, and 2 MPI ranks x 1 thread (when mpirun is installed).
//   bench_train [--steps N] [--data TRAIN.bin --tokenizer tokenizer.json]
// (default 6 steps on generated documents; --data: a real tokenised corpus of a vocabulary of at most 8192,
// e.g. `emo tokenizer train --vocab-size 8192` + `emo corpus tokenize`). Ends with one JSON line.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/log.h"
#include "core/thread_pool.h"
#include "train/distributed.h"
#include "train/row_source.h"
#include "train/trainer.h"

namespace {

using namespace emo;
namespace fs = std::filesystem;

constexpr int64_t kDefaultCheckpointEvery = 500;  // RunConfig's default
std::string g_data = "synthetic", g_tokenizer;    // --data, --tokenizer

TrainConfig reference_config(int64_t steps) {
  TrainConfig c;
  c.model.d = 256;
  c.model.layers = 4;
  c.model.heads = 4;
  c.model.kv_heads = 4;
  c.model.experts = 64;
  c.model.shared_experts = 1;
  c.model.top_k = 4;
  c.model.expert_width = 128;
  c.model.vocab = 8192;
  c.routing.mode = "emo";
  c.batch.row_length = 512;
  c.batch.micro_batch_rows = 4;
  c.batch.global_batch_rows = 8;
  c.schedule.warmup_steps = 10;
  c.run.steps = steps;
  c.run.checkpoint_every = steps;  // one checkpoint, at the end
  c.run.validate_every = 0;
  c.data.train = g_data;
  c.data.tokenizer = g_tokenizer;
  return c;
}

// tokens/s of `steps` bare steps on rows generated beforehand (after one warm-up step).
double bare_step_rate(int64_t steps) {
  TrainConfig c = reference_config(steps + 1);
  TrainOptions o;
  o.show_progress = false;
  Trainer trainer(c, o);
  RowSourceOptions so;
  so.row_length = c.batch.row_length;
  so.global_batch_rows = c.batch.micro_batch_rows;
  so.vocab = c.model.vocab;
  so.eos_id = static_cast<int32_t>(c.model.vocab - 1);
  so.seed = 1;
  SyntheticSource source(so);
  const int64_t micro = c.batch.global_batch_rows / c.batch.micro_batch_rows;
  std::vector<Batch> rows(static_cast<size_t>(micro));
  for (Batch& b : rows) source.next(b);
  trainer.train_step(rows, micro);
  Timer timer;
  for (int64_t s = 0; s < steps; ++s) trainer.train_step(rows, micro);
  return static_cast<double>(steps * c.tokens_per_step()) / timer.seconds();
}

struct LoopFigures {
  double tokens_per_second = 0;       // whole loop
  double step_tokens_per_second = 0;  // the steps inside the loop
  double overhead_per_step = 0;       // (data + other) / step time
  double checkpoint_seconds = 0;
  double overhead_at_default_interval = 0;  // per-step overhead + one checkpoint per 500 steps
  TrainTiming timing;
};

// The whole loop (Trainer::run). One warm-up step is excluded by starting the timing after it: the loop is
// resumed from a one-step checkpoint, as a long run would be in steady state.
LoopFigures full_loop(int64_t steps, const std::string& out) {
  TrainOptions o;
  o.out_dir = out;
  o.show_progress = false;
  TrainConfig c = reference_config(steps + 1);
  o.stop_after = 1;
  Trainer(c, o).run();  // warm-up step and first checkpoint
  o.stop_after = 0;
  o.resume = true;
  Trainer trainer(c, o);
  trainer.run();
  LoopFigures f;
  f.timing = trainer.timing();
  const TrainTiming& t = f.timing;
  const double tokens = static_cast<double>(steps * c.tokens_per_step());
  const double other = t.total_seconds - t.step_seconds - t.data_seconds - t.checkpoint_seconds;
  f.tokens_per_second = tokens / t.total_seconds;
  f.step_tokens_per_second = tokens / t.step_seconds;
  f.overhead_per_step = (t.data_seconds + other) / t.step_seconds;
  f.checkpoint_seconds = t.checkpoint_seconds;
  const double step_seconds = t.step_seconds / static_cast<double>(steps);
  f.overhead_at_default_interval =
      f.overhead_per_step + t.checkpoint_seconds / (kDefaultCheckpointEvery * step_seconds);
  return f;
}

void print_loop(const char* label, double bare, const LoopFigures& f) {
  const TrainTiming& t = f.timing;
  std::printf(
      "%s: bare step %7.0f tok/s | loop %7.0f tok/s (its steps %7.0f tok/s, %.2fx bare) | data %.3fs, "
      "other %.3fs, checkpoint %.2fs of %.2fs | overhead %.2f%% per step, %.2f%% with a checkpoint every "
      "%lld "
      "steps\n",
      label, bare, f.tokens_per_second, f.step_tokens_per_second, f.step_tokens_per_second / bare,
      t.data_seconds, t.total_seconds - t.step_seconds - t.data_seconds - t.checkpoint_seconds,
      t.checkpoint_seconds, t.total_seconds, 100 * f.overhead_per_step, 100 * f.overhead_at_default_interval,
      static_cast<long long>(kDefaultCheckpointEvery));
}

nlohmann::json loop_json(const LoopFigures& f) {
  return {{"loop_tok_s", f.tokens_per_second},
          {"loop_step_tok_s", f.step_tokens_per_second},
          {"overhead_per_step", f.overhead_per_step},
          {"checkpoint_seconds", f.checkpoint_seconds},
          {"overhead_at_default_interval", f.overhead_at_default_interval}};
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 6;
  std::string worker_out;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoll(argv[++i]);
    if (!std::strcmp(argv[i], "--mpi-worker") && i + 1 < argc) worker_out = argv[++i];
    if (!std::strcmp(argv[i], "--data") && i + 1 < argc) g_data = argv[++i];
    if (!std::strcmp(argv[i], "--tokenizer") && i + 1 < argc) g_tokenizer = argv[++i];
  }
  set_log_level(LogLevel::kWarn);
  if (!worker_out.empty()) {  // one rank of the 2-rank measurement; rank 0 writes its figures as JSON
    set_num_threads(1);
    LoopFigures f = full_loop(steps, worker_out + "/run");
    if (Distributed::instance().is_root()) std::ofstream(worker_out + "/figures.json") << loop_json(f).dump();
    return 0;
  }
  const fs::path scratch = fs::temp_directory_path() / ("emo_bench_train_" + std::to_string(::getpid()));
  std::printf(
      "reference: d 256, 4 layers, 4 heads, 64 experts (1 shared) x 128, top 4, vocab 8192, T 512, 8 rows "
      "per "
      "step in 2 micro-batches, EMO routing; %lld timed steps; data %s\n",
      static_cast<long long>(steps), g_data.c_str());
  double bare[2];
  LoopFigures loop[2];
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    bare[threads - 1] = bare_step_rate(steps);
    loop[threads - 1] = full_loop(steps, (scratch / ("t" + std::to_string(threads))).string());
    print_loop(threads == 1 ? "1 thread " : "2 threads", bare[threads - 1], loop[threads - 1]);
  }
  nlohmann::json mpi = nullptr;
  if (std::system("command -v mpirun > /dev/null 2>&1") == 0) {
    const std::string self = fs::read_symlink("/proc/self/exe").string();
    const std::string out = (scratch / "mpi").string();
    fs::create_directories(out);
    // --allow-run-as-root: containers often run as root; --oversubscribe: 2 ranks even on fewer slots.
    const std::string command = "mpirun --oversubscribe --allow-run-as-root -np 2 " + self + " --steps " +
                                std::to_string(steps) + " --mpi-worker " + out + " > " + out +
                                "/mpirun.log 2>&1";
    if (std::system(command.c_str()) == 0 && fs::exists(out + "/figures.json")) {  // else keep the log
      std::ifstream in(out + "/figures.json");
      mpi = nlohmann::json::parse(in);
      std::printf(
          "2 MPI ranks x 1 thread: loop %7.0f tok/s (%.2fx the 1-thread loop, %.2fx the 2-thread loop) | "
          "overhead %.2f%% per step, %.2f%% with a checkpoint every %lld steps\n",
          mpi["loop_tok_s"].get<double>(), mpi["loop_tok_s"].get<double>() / loop[0].tokens_per_second,
          mpi["loop_tok_s"].get<double>() / loop[1].tokens_per_second,
          100 * mpi["overhead_per_step"].get<double>(),
          100 * mpi["overhead_at_default_interval"].get<double>(),
          static_cast<long long>(kDefaultCheckpointEvery));
    } else {
      std::printf("2 MPI ranks: mpirun failed (see %s/mpirun.log)\n", out.c_str());
    }
  }
  nlohmann::json line = {{"bench", "train"},
                         {"steps", steps},
                         {"data", g_data},
                         {"tokens_per_step", reference_config(steps).tokens_per_step()},
                         {"bare_tok_s_1t", bare[0]},
                         {"bare_tok_s_2t", bare[1]},
                         {"loop_1t", loop_json(loop[0])},
                         {"loop_2t", loop_json(loop[1])},
                         {"mpi_2x1", mpi}};
  if (!mpi.is_null() || std::system("command -v mpirun > /dev/null 2>&1") != 0) fs::remove_all(scratch);
  std::printf("%s\n", line.dump().c_str());
  return 0;
}
