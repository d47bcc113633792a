// The purity and similarity figures of the analysis: normalised mutual information between two labelings,
// cluster purity, cosine similarity of usage vectors, and expert coverage.
#pragma once

#include <cstdint>
#include <vector>

namespace emo::analysis {

// NMI(a, b) = I(a; b) / ((H(a) + H(b)) / 2) of two labelings of the same items (labels >= 0), the arithmetic
// normalisation (scikit-learn's default). 1 when both labelings are constant (one class each); 0 when one of
// them is constant and the other is not.
double normalized_mutual_information(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

// Share of items whose cluster's most frequent class is their own class.
double cluster_purity(const std::vector<int32_t>& clusters, const std::vector<int32_t>& classes);

// cos(a, b) = a.b / (|a| |b|); 0 when either vector is zero.
double cosine_similarity(const std::vector<double>& a, const std::vector<double>& b);

// The fewest experts whose mass adds up to at least `fraction` of the total (largest first); 0 for an
// all-zero mass.
int64_t expert_coverage(const std::vector<double>& mass, double fraction = 0.9);

}  // namespace emo::analysis
