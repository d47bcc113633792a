#include "kernels/rope.h"

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace emo {
namespace {

void check_positions(const int32_t* positions, int64_t N, const RopeTable& table) {
  for (int64_t n = 0; n < N; ++n) {
    if (positions[n] < 0 || positions[n] >= table.max_positions)
      fail("rope", cat("position ", positions[n], " at index ", n, " is outside the table [0, ",
                       table.max_positions, ")"));
  }
}

// Rotates each pair (x[i], x[i + hd/2]) by +angle (sign 1) or -angle (sign -1).
void rotate(float* x, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table, float sign) {
  check_positions(positions, N, table);
  const int64_t hd = table.head_dim, half = hd / 2;
  parallel_for(N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* cos = table.cos.data() + static_cast<int64_t>(positions[n]) * half;  // [hd/2]
      const float* sin = table.sin.data() + static_cast<int64_t>(positions[n]) * half;  // [hd/2]
      for (int64_t h = 0; h < H; ++h) {
        float* head = x + (n * H + h) * hd;  // [hd]
        for (int64_t i = 0; i < half; ++i) {
          float x1 = head[i], x2 = head[i + half], s = sign * sin[i];
          head[i] = x1 * cos[i] - x2 * s;
          head[i + half] = x2 * cos[i] + x1 * s;
        }
      }
    }
  });
}

}  // namespace

RopeTable rope_table(int64_t head_dim, int64_t max_positions, double theta) {
  EMO_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope", "head dim ", head_dim, " must be even and positive");
  RopeTable table;
  table.head_dim = head_dim;
  table.max_positions = max_positions;
  const int64_t half = head_dim / 2;
  table.cos.resize(max_positions * half);
  table.sin.resize(max_positions * half);
  for (int64_t i = 0; i < half; ++i) {
    double inv_freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    for (int64_t p = 0; p < max_positions; ++p) {
      double angle = static_cast<double>(p) * inv_freq;
      table.cos[p * half + i] = static_cast<float>(std::cos(angle));
      table.sin[p * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

void rope_forward(float* x, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table) {
  rotate(x, positions, N, H, table, 1.0f);
}

void rope_backward(float* dx, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table) {
  rotate(dx, positions, N, H, table, -1.0f);
}

}  // namespace emo
