#include "kernels/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

// cos and sin of position p's angles, as the table holds them.
void angles(const RopeTable& table, int64_t p, float* cos, float* sin) {
  for (size_t i = 0; i < table.inv_freq.size(); ++i) {
    const double angle = static_cast<double>(p) * table.inv_freq[i];
    cos[i] = static_cast<float>(std::cos(angle));
    sin[i] = static_cast<float>(std::sin(angle));
  }
}

// Rotates each pair (x[i], x[i + hd/2]) by +angle (sign 1) or -angle (sign -1).
void rotate(float* x, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table, float sign) {
  check_positions(positions, N, table);
  const int64_t hd = table.head_dim, half = hd / 2;
  parallel_for(N, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> past_cos, past_sin;  // [hd/2], a position past the table
    for (int64_t n = begin; n < end; ++n) {
      const int64_t p = positions[n];
      if (p >= table.rows) {
        past_cos.resize(half), past_sin.resize(half);
        angles(table, p, past_cos.data(), past_sin.data());
      }
      const float* cos = p < table.rows ? table.cos.data() + p * half : past_cos.data();  // [hd/2]
      const float* sin = p < table.rows ? table.sin.data() + p * half : past_sin.data();  // [hd/2]
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
  table.rows = std::min(max_positions, kRopeTableRows);
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i)
    table.inv_freq.push_back(std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim)));
  table.cos.resize(table.rows * half);
  table.sin.resize(table.rows * half);
  for (int64_t p = 0; p < table.rows; ++p) angles(table, p, &table.cos[p * half], &table.sin[p * half]);
  return table;
}

void rope_forward(float* x, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table) {
  rotate(x, positions, N, H, table, 1.0f);
}

void rope_backward(float* dx, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table) {
  rotate(dx, positions, N, H, table, -1.0f);
}

}  // namespace emo
