#include "analysis/clustering.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/rng.h"

namespace emo::analysis {
namespace {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMapF = Eigen::Map<const RowMatrixF>;
using RowMapF = Eigen::Map<RowMatrixF>;
// Rows handled at once when a product would otherwise materialise an [n, D] temporary.
constexpr int64_t kChunkRows = 2048;

ConstRowMapF as_matrix(const Tensor& x) {
  return ConstRowMapF(x.data(), x.dim(0), x.dim(1));
}

void check_matrix(const Tensor& x, const char* op) {
  EMO_CHECK(x.ndim() == 2, op, "expected a matrix [n, D], got ", shape_str(x.shape()));
}

// Covariance [D, D] of the rows of x (divided by n - 1), accumulated in double over row chunks.
Eigen::MatrixXd covariance(const Tensor& x, const Eigen::VectorXd& mean) {
  const int64_t n = x.dim(0), D = x.dim(1);
  Eigen::MatrixXd cov = Eigen::MatrixXd::Zero(D, D);
  for (int64_t begin = 0; begin < n; begin += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, n - begin);
    Eigen::MatrixXd centred = as_matrix(x).middleRows(begin, rows).cast<double>();  // [rows, D]
    centred.rowwise() -= mean.transpose();
    cov.selfadjointView<Eigen::Lower>().rankUpdate(centred.transpose());
  }
  cov.triangularView<Eigen::StrictlyUpper>() = cov.transpose();
  return cov / static_cast<double>(n - 1);
}

// The index of the largest value (lowest index on ties).
int64_t argmax(const float* values, int64_t n) {
  return std::max_element(values, values + n) - values;
}

// Rows are unit vectors, so 1 - cos is half the squared Euclidean distance: k-means++ draws each next seed
// with probability proportional to it.
RowMatrixF kmeans_plus_plus(const Tensor& x, int64_t k, Rng& rng) {
  const int64_t n = x.dim(0), D = x.dim(1);
  RowMatrixF centroids(k, D);
  centroids.row(0) = as_matrix(x).row(rng.uniform_int(0, n - 1));
  std::vector<double> distance(n);
  for (int64_t i = 0; i < n; ++i)
    distance[i] = std::max(0.0, 1.0 - static_cast<double>(as_matrix(x).row(i).dot(centroids.row(0))));
  for (int64_t c = 1; c < k; ++c) {
    double total = 0;
    for (double d : distance) total += d;
    int64_t chosen = rng.uniform_int(0, n - 1);  // all rows equal to the seeds so far: any row will do
    if (total > 0) {
      double target = rng.uniform() * total, running = 0;
      for (chosen = 0; chosen < n - 1; ++chosen) {
        running += distance[chosen];
        if (running > target) break;
      }
    }
    centroids.row(c) = as_matrix(x).row(chosen);
    for (int64_t i = 0; i < n; ++i)
      distance[i] = std::min(
          distance[i], std::max(0.0, 1.0 - static_cast<double>(as_matrix(x).row(i).dot(centroids.row(c)))));
  }
  return centroids;
}

// New centroids: the normalised sum of each cluster's rows. An empty cluster takes the row farthest from its
// own centroid (taken from a cluster with more than one row), which then moves to it.
void update_centroids(const Tensor& x, std::vector<int32_t>& labels, std::vector<float>& best,
                      RowMatrixF& c) {
  const int64_t n = x.dim(0), k = c.rows();
  c.setZero();
  std::vector<int64_t> sizes(k, 0);
  for (int64_t i = 0; i < n; ++i) {
    c.row(labels[i]) += as_matrix(x).row(i);
    ++sizes[labels[i]];
  }
  for (int64_t j = 0; j < k; ++j) {
    if (sizes[j] > 0) continue;
    int64_t farthest = -1;
    for (int64_t i = 0; i < n; ++i)
      if (sizes[labels[i]] > 1 && (farthest < 0 || best[i] < best[farthest])) farthest = i;
    if (farthest < 0) break;  // fewer distinct rows than clusters
    c.row(labels[farthest]) -= as_matrix(x).row(farthest);
    --sizes[labels[farthest]];
    labels[farthest] = static_cast<int32_t>(j);
    best[farthest] = 1.0f;
    c.row(j) = as_matrix(x).row(farthest);
    sizes[j] = 1;
  }
  for (int64_t j = 0; j < k; ++j) {
    const float norm = c.row(j).norm();
    if (norm > 0) c.row(j) /= norm;
  }
}

KMeansResult kmeans_once(const Tensor& x, int64_t k, int64_t max_iterations, Rng& rng) {
  const int64_t n = x.dim(0);
  RowMatrixF centroids = kmeans_plus_plus(x, k, rng);  // [k, D]
  std::vector<int32_t> labels(n, -1);
  std::vector<float> best(n, 0.0f);  // cosine of each row with its centroid
  KMeansResult result;
  for (result.iterations = 1; result.iterations <= max_iterations; ++result.iterations) {
    bool changed = false;
    for (int64_t begin = 0; begin < n; begin += kChunkRows) {
      const int64_t rows = std::min(kChunkRows, n - begin);
      RowMatrixF sim = as_matrix(x).middleRows(begin, rows) * centroids.transpose();  // [rows, k]
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t label = static_cast<int32_t>(argmax(sim.row(r).data(), k));
        changed = changed || label != labels[begin + r];
        labels[begin + r] = label;
        best[begin + r] = sim(r, label);
      }
    }
    if (!changed) break;
    update_centroids(x, labels, best, centroids);
  }
  result.iterations = std::min(result.iterations, max_iterations);
  result.objective = 0;
  for (float b : best) result.objective += b;
  result.labels = std::move(labels);
  result.centroids =
      Tensor({k, x.dim(1)}, std::vector<float>(centroids.data(), centroids.data() + centroids.size()));
  return result;
}

}  // namespace

double Pca::explained_ratio() const {
  double kept = 0;
  for (double v : explained_variance) kept += v;
  return total_variance > 0 ? kept / total_variance : 1.0;
}

Pca fit_pca(const Tensor& x, double variance_fraction, int64_t min_components, int64_t max_components) {
  check_matrix(x, "pca");
  const int64_t n = x.dim(0), D = x.dim(1);
  EMO_CHECK(n >= 2, "pca", "needs at least 2 rows, got ", n);
  EMO_CHECK(variance_fraction > 0 && variance_fraction <= 1, "pca",
            "variance fraction must be in (0, 1], got ", variance_fraction);
  Eigen::VectorXd mean = as_matrix(x).cast<double>().colwise().mean().transpose();  // [D]
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(covariance(x, mean));
  EMO_CHECK(solver.info() == Eigen::Success, "pca", "the eigensolver did not converge");
  // Eigenvalues come in increasing order; rounding can make the smallest slightly negative.
  const Eigen::VectorXd values = solver.eigenvalues().reverse().cwiseMax(0.0);  // [D]
  Pca pca;
  pca.total_variance = values.sum();
  const int64_t limit = max_components > 0 ? std::min(max_components, D) : D;
  int64_t k = 0;
  double kept = 0;
  while (k < limit && (k < min_components || kept < variance_fraction * pca.total_variance))
    kept += values[k++];
  pca.mean = Tensor({D});
  for (int64_t j = 0; j < D; ++j) pca.mean[j] = static_cast<float>(mean[j]);
  pca.components = Tensor({k, D});
  for (int64_t c = 0; c < k; ++c) {
    Eigen::VectorXd direction = solver.eigenvectors().col(D - 1 - c);
    // A sign convention, so results do not flip between runs or libraries: largest |entry| positive.
    Eigen::Index largest = 0;
    direction.cwiseAbs().maxCoeff(&largest);
    if (direction[largest] < 0) direction = -direction;
    for (int64_t j = 0; j < D; ++j) pca.components[c * D + j] = static_cast<float>(direction[j]);
    pca.explained_variance.push_back(values[c]);
  }
  return pca;
}

Tensor pca_project(const Pca& pca, const Tensor& x, int64_t components) {
  check_matrix(x, "pca");
  const int64_t n = x.dim(0), D = x.dim(1);
  EMO_CHECK(D == pca.mean.size(), "pca", "rows have ", D, " features, the PCA was fitted on ",
            pca.mean.size());
  const int64_t k = components > 0 ? std::min(components, pca.components_kept()) : pca.components_kept();
  ConstRowMapF directions(pca.components.data(), k, D);           // [k, D]
  Eigen::Map<const Eigen::RowVectorXf> mean(pca.mean.data(), D);  // [1, D]
  Tensor out({n, k});
  RowMapF projected(out.data(), n, k);
  for (int64_t begin = 0; begin < n; begin += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, n - begin);
    RowMatrixF centred = as_matrix(x).middleRows(begin, rows).rowwise() - mean;  // [rows, D]
    projected.middleRows(begin, rows) = centred * directions.transpose();
  }
  return out;
}

void normalize_rows(Tensor& x) {
  check_matrix(x, "normalize");
  RowMapF rows(x.data(), x.dim(0), x.dim(1));
  for (int64_t i = 0; i < rows.rows(); ++i) {
    const float norm = rows.row(i).norm();
    if (norm > 0) rows.row(i) /= norm;
  }
}

KMeansResult spherical_kmeans(const Tensor& x, const KMeansOptions& options) {
  check_matrix(x, "kmeans");
  EMO_CHECK(x.dim(0) >= 1, "kmeans", "no rows to cluster");
  EMO_CHECK(options.k >= 1, "kmeans", "k must be at least 1, got ", options.k);
  const int64_t k = std::min(options.k, x.dim(0));
  Rng rng(options.seed, 0x6b6d65616e73ULL);
  KMeansResult best;
  best.objective = -std::numeric_limits<double>::infinity();
  for (int64_t restart = 0; restart < std::max<int64_t>(1, options.restarts); ++restart) {
    KMeansResult result = kmeans_once(x, k, std::max<int64_t>(1, options.max_iterations), rng);
    if (result.objective > best.objective) best = std::move(result);
  }
  return best;
}

}  // namespace emo::analysis
