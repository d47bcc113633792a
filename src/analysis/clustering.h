// The token clustering of the EMO paper's analysis (docs/emo.md §6): PCA of the router vectors to a
// share of their variance (Eigen's symmetric eigensolver on the covariance, in double precision), L2
// normalisation, then spherical k-means (cosine similarity, k-means++ seeding, seeded restarts).
// Matrices are row-major Tensors: n = points (tokens or documents), D = features, k = components or clusters.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace emo::analysis {

struct Pca {
  Tensor mean;                             // [D] column means of the fitted rows
  Tensor components;                       // [k, D] unit principal directions, by decreasing variance
  std::vector<double> explained_variance;  // [k] variance along each kept direction
  double total_variance = 0;               // sum of the variances of all D columns
  int64_t components_kept() const { return static_cast<int64_t>(explained_variance.size()); }
  // Share of the total variance the kept directions explain.
  double explained_ratio() const;
};

// Principal directions of the rows of x [n, D]: the fewest that explain at least `variance_fraction` of the
// total variance, but at least min_components and at most max_components (0 = D). Needs n >= 2.
Pca fit_pca(const Tensor& x, double variance_fraction, int64_t min_components = 1,
            int64_t max_components = 0);

// Coordinates of the rows of x [n, D] along the first `components` directions (0 = all kept): [n, k].
Tensor pca_project(const Pca& pca, const Tensor& x, int64_t components = 0);

// Scales every row of x [n, D] to unit Euclidean length (an all-zero row stays zero).
void normalize_rows(Tensor& x);

struct KMeansOptions {
  int64_t k = 32;
  uint64_t seed = 0;
  int64_t max_iterations = 100;
  int64_t restarts = 4;  // independent k-means++ starts; the one with the highest objective is kept
};

struct KMeansResult {
  Tensor centroids;             // [k, D] unit vectors
  std::vector<int32_t> labels;  // [n] cluster of each row
  double objective = 0;         // sum over rows of the cosine to their centroid
  int64_t iterations = 0;       // of the kept restart
};

// Spherical k-means of unit rows x [n, D] (normalize_rows first): assign each row to the centroid of highest
// cosine, move each centroid to the normalised mean of its rows, until no label changes. k-means++ seeding
// with distance 1 - cosine; an emptied cluster is re-seeded with the row farthest from its centroid.
// k is clamped to n. Deterministic for a seed (the thread count does not change the result).
KMeansResult spherical_kmeans(const Tensor& x, const KMeansOptions& options);

}  // namespace emo::analysis
