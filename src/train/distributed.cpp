#include "train/distributed.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

#ifdef EMO_HAVE_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only
#include <mpi.h>
#endif

namespace emo {

namespace {

// Started by an MPI launcher? (OpenMPI, MPICH/Hydra, Slurm PMI.) A plain `emo train` then never touches MPI,
// which keeps it fast to start and quiet in containers without a network.
bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}

#ifdef EMO_HAVE_MPI
void check_mpi(int code, const char* what) {
  if (code != MPI_SUCCESS) fail("mpi", cat(what, " failed with code ", code));
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}
#endif

}  // namespace

Distributed& Distributed::instance() {
  static Distributed d;
  return d;
}

Distributed::Distributed() {
#ifdef EMO_HAVE_MPI
  if (!launched_by_mpi()) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    std::atexit(finalize_mpi);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
#else
  const char* world = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (world != nullptr && std::strcmp(world, "1") != 0)
    fail("mpi", "started by mpirun, but this emo was built without MPI (install libopenmpi-dev and rebuild)");
#endif
}

void Distributed::all_reduce_sum(float* data, int64_t n) const {
  if (!active() || n == 0) return;
#ifdef EMO_HAVE_MPI
  // MPI counts are int: reduce in chunks for buffers beyond 2^31 elements.
  for (int64_t off = 0; off < n; off += (int64_t{1} << 30)) {
    int count = static_cast<int>(std::min<int64_t>(n - off, int64_t{1} << 30));
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + off, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }
#else
  (void)data;
#endif
}

void Distributed::all_reduce_sum(double* data, int64_t n) const {
  if (!active() || n == 0) return;
#ifdef EMO_HAVE_MPI
  for (int64_t off = 0; off < n; off += (int64_t{1} << 30)) {
    int count = static_cast<int>(std::min<int64_t>(n - off, int64_t{1} << 30));
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + off, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }
#else
  (void)data;
#endif
}

void Distributed::all_reduce_gradients(const std::vector<Param>& params) const {
  if (!active()) return;
  int64_t total = 0;
  for (const Param& p : params) total += p.grad->size();
  flat_.resize(static_cast<size_t>(total));
  int64_t off = 0;
  for (const Param& p : params) {
    std::memcpy(flat_.data() + off, p.grad->data(), sizeof(float) * p.grad->size());
    off += p.grad->size();
  }
  all_reduce_sum(flat_.data(), total);
  off = 0;
  for (const Param& p : params) {
    std::memcpy(p.grad->data(), flat_.data() + off, sizeof(float) * p.grad->size());
    off += p.grad->size();
  }
}

void Distributed::all_reduce_counts(std::vector<std::vector<double>>& counts) const {
  if (!active()) return;
  std::vector<double> flat;
  for (auto& layer : counts) flat.insert(flat.end(), layer.begin(), layer.end());
  all_reduce_sum(flat.data(), static_cast<int64_t>(flat.size()));
  size_t off = 0;
  for (auto& layer : counts)
    for (double& c : layer) c = flat[off++];
}

void Distributed::broadcast(int64_t* value) const {
  if (!active()) return;
#ifdef EMO_HAVE_MPI
  check_mpi(MPI_Bcast(value, 1, MPI_INT64_T, 0, MPI_COMM_WORLD), "MPI_Bcast");
#else
  (void)value;
#endif
}

void Distributed::broadcast(std::string* value) const {
  if (!active()) return;
  int64_t size = static_cast<int64_t>(value->size());
  broadcast(&size);
  value->resize(static_cast<size_t>(size));
#ifdef EMO_HAVE_MPI
  if (size > 0)
    check_mpi(MPI_Bcast(value->data(), static_cast<int>(size), MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
#endif
}

void Distributed::barrier() const {
#ifdef EMO_HAVE_MPI
  if (active()) check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

std::string Distributed::describe() const {
  return active() ? cat("rank ", rank_, "/", size_) : std::string();
}

}  // namespace emo
