// Expert dispatch: the tokens assigned to each expert are gathered so each SwiGLU expert runs as one matrix
// multiply, experts spread over the pool's threads (one expert per task), outputs scattered back weighted.
#pragma once

#include <cstdint>
#include <vector>

namespace emo {

// One SwiGLU expert: down(silu(gate(x)) * up(x)); pointers to weights in the PyTorch layout.
struct ExpertWeights {
  const float* gate;  // [F, C]
  const float* up;    // [F, C]
  const float* down;  // [C, F]
};
struct ExpertGrads {
  float* gate;  // [F, C]
  float* up;    // [F, C]
  float* down;  // [C, F]
};

// What the forward saves for the backward. Assignments (token, slot) are sorted by expert.
struct MoeCache {
  int64_t N = 0, K = 0, E = 0, C = 0, F = 0;
  std::vector<int64_t> expert_offsets;  // [E+1] start of each expert's rows in the sorted order
  std::vector<int32_t> rows;            // [A] sorted position -> token*K + slot (A = assignments with e >= 0)
  std::vector<int32_t> position;        // [N*K] token*K + slot -> sorted position, -1 for an unused slot
  std::vector<float> x_sorted;          // [A, C] gathered inputs
  std::vector<float> gate_act;          // [A, F] gate(x) before silu
  std::vector<float> up_act;            // [A, F] up(x)
  std::vector<float> hidden;            // [A, F] silu(gate) * up
  std::vector<float> expert_out;        // [A, C] down(hidden), unweighted
};

// out[N,C] = sum_k weights[n,k] * expert_{ids[n,k]}(x[n]); ids[n,k] = -1 marks an unused slot.
// Overwrites out. experts has E entries.
void moe_forward(float* out, MoeCache& cache, const float* x, const int32_t* ids, const float* weights,
                 int64_t N, int64_t K, int64_t C, int64_t F, const std::vector<ExpertWeights>& experts);

// Working buffers of the backward ([A, C] and [A, F] each), kept by a caller that runs it repeatedly so the
// step touches no fresh pages (about 50 MB per call at 4096 tokens x 4 slots, d 256, F 128).
struct MoeScratch {
  std::vector<float> d_eo;       // [A, C] weights[n,k] * dout[n]
  std::vector<float> d_hidden;   // [A, F]
  std::vector<float> d_gate;     // [A, F]
  std::vector<float> d_up;       // [A, F]
  std::vector<float> dx_sorted;  // [A, C]
};

// dx[N,C] += ..., dweights[N,K] += dot(dout[n], expert_out[n,k]), grads[e] += ... (grads entries may hold
// null pointers for frozen experts; dweights may be null).
void moe_backward(float* dx, float* dweights, const std::vector<ExpertGrads>& grads, const float* dout,
                  const int32_t* ids, const float* weights, const MoeCache& cache,
                  const std::vector<ExpertWeights>& experts);
// The same with the caller's working buffers.
void moe_backward(float* dx, float* dweights, const std::vector<ExpertGrads>& grads, const float* dout,
                  const int32_t* ids, const float* weights, const MoeCache& cache,
                  const std::vector<ExpertWeights>& experts, MoeScratch& scratch);

}  // namespace emo
