// Deterministic random numbers whose whole state is two 64-bit words, so training can save and restore it
// bit-exactly. xoshiro128+-style generators are not needed here: PCG32 is small, fast and well tested.
#pragma once

#include <cmath>
#include <cstdint>

namespace emo {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0, uint64_t stream = 0x853c49e6748fea9bULL) { reseed(seed, stream); }

  void reseed(uint64_t seed, uint64_t stream = 0x853c49e6748fea9bULL) {
    state_ = 0;
    inc_ = (stream << 1u) | 1u;
    next_u32();
    state_ += seed;
    next_u32();
  }

  uint32_t next_u32() {
    uint64_t old = state_;
    state_ = old * 6364136223846793005ULL + inc_;
    uint32_t xorshifted = static_cast<uint32_t>(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = static_cast<uint32_t>(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32 - rot) & 31));
  }

  uint64_t next_u64() { return (static_cast<uint64_t>(next_u32()) << 32) | next_u32(); }

  // Uniform in [0, 1).
  double uniform() { return (next_u64() >> 11) * 0x1.0p-53; }

  // Uniform integer in [lo, hi] (inclusive), unbiased.
  int64_t uniform_int(int64_t lo, int64_t hi) {
    uint64_t range = static_cast<uint64_t>(hi - lo) + 1;
    if (range == 0) return static_cast<int64_t>(next_u64());
    uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t x;
    do x = next_u64();
    while (x >= limit);
    return lo + static_cast<int64_t>(x % range);
  }

  // Standard normal (Box-Muller, one value per call for simplicity and reproducibility).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  uint64_t state() const { return state_; }
  uint64_t inc() const { return inc_; }
  void restore(uint64_t state, uint64_t inc) {
    state_ = state;
    inc_ = inc;
  }

 private:
  uint64_t state_ = 0, inc_ = 0;
};

}  // namespace emo
