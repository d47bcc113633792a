#include "model/losses.h"

#include <cmath>

#include "core/error.h"

namespace emo {

RouterLoss router_loss(const LayerRouting& r, const std::vector<double>& counts, LabelTokens labels,
                       float* dscores, float* dlse, double lb_scale, double z_scale) {
  const int64_t N = r.N, Er = r.routed;
  EMO_CHECK(static_cast<int64_t>(counts.size()) == Er, "model", "expert counts hold ", counts.size(),
            " experts, the layer routes ", Er);
  EMO_CHECK(labels.global > 0 && labels.local > 0, "model", "router losses over ", labels.global,
            " global and ", labels.local, " local label tokens");
  RouterLoss loss;
  // LB = (Er/Kr) * sum_e C_e * Pbar_e / G, Pbar_e = mean over local tokens of scores_e.
  const double lb_coef =
      static_cast<double>(Er) / static_cast<double>(r.slots) / static_cast<double>(labels.global);
  const double G_local = static_cast<double>(labels.local);
  std::vector<double> pbar(Er, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < Er; ++e) pbar[e] += r.scores[n * Er + e];
  for (int64_t e = 0; e < Er; ++e) loss.lb += lb_coef * counts[e] * pbar[e] / static_cast<double>(N);
  // A token with no allowed routed expert (a subset keeping only the shared one) has lse = -inf: no z term.
  auto lse = [&](int64_t n) { return std::isinf(r.lse[n]) ? 0.0 : static_cast<double>(r.lse[n]); };
  for (int64_t n = 0; n < N; ++n) loss.z += lse(n) * lse(n);
  loss.z /= G_local;
  if (dscores)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < Er; ++e)
        dscores[n * Er + e] = static_cast<float>(lb_scale * lb_coef * counts[e] / static_cast<double>(N));
  if (dlse)
    for (int64_t n = 0; n < N; ++n) dlse[n] = static_cast<float>(z_scale * 2.0 * lse(n) / G_local);
  return loss;
}

}  // namespace emo
