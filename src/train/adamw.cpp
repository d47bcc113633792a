#include "train/adamw.h"

#include <immintrin.h>

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace emo {

AdamW::Moments& AdamW::moments_for(const Param& p) {
  Moments& s = moments_[p.name];
  if (s.m.shape() != p.value->shape()) {
    EMO_CHECK(s.m.empty(), "adamw", "optimizer state of '", p.name, "' has shape ", shape_str(s.m.shape()),
              " but the parameter has ", shape_str(p.value->shape()));
    s.m = Tensor(p.value->shape());
    s.v = Tensor(p.value->shape());
  }
  return s;
}

void AdamW::step(const std::vector<Param>& params, double lr, float grad_multiplier) {
  ++steps_;
  const double t = static_cast<double>(steps_);
  const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(config_.beta1, t)));
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(config_.beta2, t)));
  const float eps = static_cast<float>(config_.eps);
  for (const Param& p : params) {
    Moments& s = moments_for(p);
    const float decay = p.no_weight_decay ? 1.0f : static_cast<float>(1.0 - lr * config_.weight_decay);
    float* w = p.value->data();
    const float* g = p.grad->data();
    float* m = s.m.data();
    float* v = s.v.data();
    parallel_for(p.value->size(), 16384, [&](int64_t begin, int64_t end) {
      // By hand in AVX2: the compiler leaves the loop scalar (std::sqrt's errno path is control flow).
      const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), va1 = _mm256_set1_ps(1.0f - b1),
                   va2 = _mm256_set1_ps(1.0f - b2), vmul = _mm256_set1_ps(grad_multiplier),
                   vdecay = _mm256_set1_ps(decay), vstep = _mm256_set1_ps(step_size),
                   vbc2 = _mm256_set1_ps(inv_sqrt_bc2), veps = _mm256_set1_ps(eps);
      int64_t i = begin;
      for (; i + 8 <= end; i += 8) {
        const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), vmul);
        const __m256 mi = _mm256_fmadd_ps(vb1, _mm256_loadu_ps(m + i), _mm256_mul_ps(va1, gi));
        const __m256 vi =
            _mm256_fmadd_ps(vb2, _mm256_loadu_ps(v + i), _mm256_mul_ps(va2, _mm256_mul_ps(gi, gi)));
        const __m256 denominator = _mm256_fmadd_ps(_mm256_sqrt_ps(vi), vbc2, veps);
        const __m256 update = _mm256_div_ps(_mm256_mul_ps(vstep, mi), denominator);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(w + i, _mm256_fmsub_ps(_mm256_loadu_ps(w + i), vdecay, update));
      }
      for (; i < end; ++i) {  // the same operations one by one: a result never depends on the chunking
        const float gi = g[i] * grad_multiplier;
        m[i] = std::fma(b1, m[i], (1.0f - b1) * gi);
        v[i] = std::fma(b2, v[i], (1.0f - b2) * (gi * gi));
        const float update = step_size * m[i] / std::fma(std::sqrt(v[i]), inv_sqrt_bc2, eps);
        w[i] = std::fma(w[i], decay, -update);
      }
    });
  }
}

std::map<std::string, Tensor*> AdamW::state_tensors(const std::vector<Param>& params) {
  std::map<std::string, Tensor*> out;
  for (const Param& p : params) {
    Moments& s = moments_for(p);
    out[p.name + ".exp_avg"] = &s.m;
    out[p.name + ".exp_avg_sq"] = &s.v;
  }
  return out;
}

}  // namespace emo
