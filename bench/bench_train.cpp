// Training throughput on the reference configuration (d=128, 4 layers, 4 heads, 64 experts of width 128, K=4:
// about 1M active non-embedding parameters; vocab 4096, rows of 256 tokens, global batch 16 rows in
// micro-batches of 4): tokens/s of the bare step (forward, backward, optimizer on ready rows) against the
// full loop (data, metrics, validation, a checkpoint at the end), with 1 and 2 threads, and of 2 MPI ranks x
// 1 thread. Usage: bench_train [--steps N]        (ends with one JSON line)
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/log.h"
#include "core/thread_pool.h"
#include "train/distributed.h"
#include "train/row_source.h"
#include "train/trainer.h"

namespace {

using namespace emo;
namespace fs = std::filesystem;

TrainConfig reference_config(int64_t steps) {
  TrainConfig c;
  c.model.d = 128;
  c.model.layers = 4;
  c.model.heads = 4;
  c.model.kv_heads = 4;
  c.model.experts = 64;
  c.model.top_k = 4;
  c.model.expert_width = 128;
  c.model.vocab = 4096;
  c.batch.row_length = 256;
  c.batch.micro_batch_rows = 4;
  c.batch.global_batch_rows = 16;
  c.schedule.warmup_steps = 10;
  c.run.steps = steps;
  c.run.checkpoint_every = 0;  // one checkpoint, at the end
  c.run.validate_every = 0;    // one validation, at the end
  c.run.validation_rows = 16;
  c.data.validation["synthetic"] = "synthetic:7";
  return c;
}

std::string temp_out(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("emo_bench_train_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  return dir.string();
}

// tokens/s of `steps` bare steps on pre-generated rows (after one warm-up step).
double bare_step_rate(int64_t steps) {
  TrainConfig c = reference_config(steps + 1);
  c.data.validation.clear();
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

// tokens/s of the whole loop (Trainer::run with data, metrics, validation and a checkpoint).
double full_loop_rate(int64_t steps, const std::string& out, TrainTiming* timing = nullptr) {
  TrainOptions o;
  o.out_dir = out;
  o.show_progress = false;
  TrainConfig c = reference_config(steps);
  Trainer trainer(c, o);
  trainer.run();
  if (timing) *timing = trainer.timing();
  return static_cast<double>(steps * c.tokens_per_step()) / trainer.timing().total_seconds;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 12;
  bool worker = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) steps = std::atoll(argv[++i]);
    if (!std::strcmp(argv[i], "--mpi-worker")) worker = true;
  }
  if (worker) {  // one rank of the 2-rank measurement: report the rate on rank 0
    set_num_threads(1);
    double rate = full_loop_rate(steps, temp_out("mpi"));
    if (Distributed::instance().is_root()) {
      std::printf("%.1f\n", rate);
      fs::remove_all(fs::temp_directory_path() / ("emo_bench_train_" + std::to_string(::getpid())));
    }
    return 0;
  }
  set_log_level(LogLevel::kWarn);
  std::printf("reference: d=128, 4 layers, 64 experts x 128, K=4, T=256, 16 rows/step; %lld steps\n",
              static_cast<long long>(steps));
  double bare[2], full[2];
  TrainTiming timing[2];
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    bare[threads - 1] = bare_step_rate(steps);
    full[threads - 1] = full_loop_rate(steps, temp_out("t" + std::to_string(threads)), &timing[threads - 1]);
    const TrainTiming& t = timing[threads - 1];
    std::printf(
        "%d thread(s): bare step %8.0f tok/s   full loop %8.0f tok/s   loop overhead %5.1f%%"
        "   (data %.3fs, checkpoint %.3fs, validation %.3fs of %.2fs)\n",
        threads, bare[threads - 1], full[threads - 1], 100.0 * (bare[threads - 1] / full[threads - 1] - 1),
        t.data_seconds, t.checkpoint_seconds, t.validation_seconds, t.total_seconds);
  }
  double mpi = 0;
  if (std::system("command -v mpirun > /dev/null 2>&1") == 0) {
    std::string self = fs::read_symlink("/proc/self/exe").string();
    std::string log = temp_out("mpi.log");
    std::string command = "mpirun --oversubscribe --allow-run-as-root -np 2 " + self +
                          " --mpi-worker --steps " + std::to_string(steps) + " > " + log + " 2>&1";
    if (std::system(command.c_str()) == 0) {
      std::ifstream in(log);
      in >> mpi;
      std::printf("2 MPI ranks x 1 thread: full loop %8.0f tok/s (%.2fx the 1-thread loop)\n", mpi,
                  mpi / full[0]);
    } else {
      std::printf("2 MPI ranks: mpirun failed (see %s)\n", log.c_str());
    }
  }
  std::printf(
      "{\"bench\":\"train\",\"steps\":%lld,\"tokens_per_step\":%d,\"bare_tok_s_1t\":%.1f,\"full_tok_s_1t\":%."
      "1f,"
      "\"bare_tok_s_2t\":%.1f,\"full_tok_s_2t\":%.1f,\"loop_overhead_1t\":%.4f,\"loop_overhead_2t\":%.4f,"
      "\"mpi2x1_tok_s\":%.1f}\n",
      static_cast<long long>(steps), 16 * 256, bare[0], full[0], bare[1], full[1], bare[0] / full[0] - 1,
      bare[1] / full[1] - 1, mpi);
  fs::remove_all(fs::temp_directory_path() / ("emo_bench_train_" + std::to_string(::getpid())));
  return 0;
}
