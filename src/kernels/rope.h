// Rotary position embedding, NeoX "rotate half" form over the full head dim:
// inv_freq[i] = theta^(-2i/hd), x' = x*cos + rotate_half(x)*sin, rotate_half([x1, x2]) = [-x2, x1].
#pragma once

#include <cstdint>
#include <vector>

namespace emo {

// Positions held in a table: a context of millions of positions would otherwise size gigabytes of table by
// a number read from config.json. Positions past the table are computed when used, in the same double
// arithmetic, so they rotate bit-identically to a full table.
constexpr int64_t kRopeTableRows = 8192;

struct RopeTable {
  int64_t head_dim = 0, max_positions = 0;
  int64_t rows = 0;              // min(max_positions, kRopeTableRows)
  std::vector<double> inv_freq;  // [head_dim/2]
  std::vector<float> cos, sin;   // [rows, head_dim/2], computed in double then rounded
};

RopeTable rope_table(int64_t head_dim, int64_t max_positions, double theta);

// x[N, H, hd] rotated in place; positions[N] index the table (throws when out of range).
void rope_forward(float* x, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table);

// dx[N, H, hd] in place: the transposed rotation (a rotation's inverse), so d(input) = R^T d(output).
void rope_backward(float* dx, const int32_t* positions, int64_t N, int64_t H, const RopeTable& table);

}  // namespace emo
