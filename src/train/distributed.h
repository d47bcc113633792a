// Data parallelism over MPI (OpenMPI: `mpirun -np N emo train ...`). Each rank runs the same model on its
// share of the global batch; gradients (one flat buffer) and the load-balancing expert counts are summed over
// ranks. Built with MPI when EMO_HAVE_MPI is defined; otherwise, or when the process was not started by an
// MPI launcher, it is a single process of rank 0 and the reductions do nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace emo {

class Distributed {
 public:
  // The process-wide instance; initialises MPI on first use when launched by mpirun (finalised at exit).
  static Distributed& instance();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  bool active() const { return size_ > 1; }

  // In-place sums over all ranks.
  void all_reduce_sum(float* data, int64_t n) const;
  void all_reduce_sum(double* data, int64_t n) const;
  // Sums the gradients of all parameters over ranks through one flat buffer.
  void all_reduce_gradients(const std::vector<Param>& params) const;
  // Sums per-layer expert counts [L][E] over ranks.
  void all_reduce_counts(std::vector<std::vector<double>>& counts) const;
  // Copies root's value to every rank (used for "is the loss finite", "stop now").
  void broadcast(int64_t* value) const;
  void broadcast(std::string* value) const;  // e.g. root's refusal of the run directory
  void barrier() const;

  // For messages: "rank 1/2" or "" when single-process.
  std::string describe() const;

 private:
  Distributed();
  int rank_ = 0, size_ = 1;
  mutable std::vector<float> flat_;  // reused gradient buffer
};

}  // namespace emo
