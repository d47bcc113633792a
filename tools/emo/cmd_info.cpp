// `emo info`: what this build is and what the machine offers.
#include <cstdio>

#include "command.h"
#include "core/thread_pool.h"

namespace {

EMO_COMMAND("info", "Print the build and machine facts emo uses", [](CLI::App&) {
  return [] {
    std::printf("emo 0.1.0\nthreads: %d\n", emo::num_threads());
#ifdef EMO_HAVE_MPI
    std::printf("mpi: yes\n");
#else
    std::printf("mpi: no\n");
#endif
    return 0;
  };
});

}  // namespace
