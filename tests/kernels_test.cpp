// Kernels against naive double-precision references.
//
// Forward: each fp32 kernel is compared with a straightforward double loop over the same inputs.
// Backward: each kernel's gradient (given dout = R, a fixed random tensor) is compared with the central
// finite difference (h = 1e-6) of the double reference's loss L = sum(R * out). The double difference is
// accurate to ~1e-9, so the tolerance only has to absorb the kernel's fp32 rounding:
//   |got - want| <= kAbs * max|want| + kRel * |want|, with kAbs = 1e-4 and kRel = 1e-3 unless a test says so.
// Every backward runs into gradient buffers pre-filled with kPrefill, checking that it accumulates.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "kernels/q4.h"
#include "kernels/quant.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/swiglu.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

constexpr double kAbs = 1e-4;
constexpr double kRel = 1e-3;
constexpr float kPrefill = 0.25f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

Vec random_vec(int64_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  Vec v(n);
  for (auto& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

DVec to_double(const Vec& v) {
  return DVec(v.begin(), v.end());
}

Vec prefilled(int64_t n) {
  return Vec(n, kPrefill);
}

// got (fp32, with kPrefill already accumulated into it when prefilled) against want (double).
void expect_close(const Vec& got, const DVec& want, const std::string& what, double abs_frac = kAbs,
                  double rel = kRel, float offset = 0.0f) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0.0;
  for (double w : want)
    if (!std::isnan(w)) scale = std::max(scale, std::abs(w));
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) continue;  // not computed
    double g = static_cast<double>(got[i]) - offset;
    double tol = abs_frac * scale + rel * std::abs(want[i]);
    if (!(std::abs(g - want[i]) <= tol) && reported++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << g << ", want " << want[i] << " (tol " << tol << ")";
  }
}

void expect_grad(const Vec& got, const DVec& want, const std::string& what) {
  expect_close(got, want, what, kAbs, kRel, kPrefill);
}

// Central difference of f at x, at every `stride`-th coordinate (the others are NaN: not checked).
DVec numeric_grad(const std::function<double(const DVec&)>& f, DVec x, double h = 1e-6, size_t stride = 1) {
  DVec grad(x.size(), std::nan(""));
  for (size_t i = 0; i < x.size(); i += stride) {
    double saved = x[i];
    x[i] = saved + h;
    double plus = f(x);
    x[i] = saved - h;
    double minus = f(x);
    x[i] = saved;
    grad[i] = (plus - minus) / (2 * h);
  }
  return grad;
}

double dot(const DVec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// gemm and linear

// C[M,N] = alpha * op(A) op(B) + beta * C in double, same storage conventions as emo::gemm.
DVec ref_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const Vec& A, int64_t lda,
              const Vec& B, int64_t ldb, double beta, const Vec& C, int64_t ldc) {
  DVec out = to_double(C);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += double(ta ? A[k * lda + m] : A[m * lda + k]) * double(tb ? B[n * ldb + k] : B[k * ldb + n]);
      out[m * ldc + n] = alpha * s + beta * C[m * ldc + n];
    }
  return out;
}

void check_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  // Padded strides (+3) so the kernel must honour lda/ldb/ldc.
  int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 3, ldc = N + 3;
  Vec A = random_vec((ta ? K : M) * lda, 1), B = random_vec((tb ? N : K) * ldb, 2),
      C = random_vec(M * ldc, 3);
  DVec want = ref_gemm(ta, tb, M, N, K, 0.5, A, lda, B, ldb, 2.0, C, ldc);
  gemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 2.0f, C.data(), ldc);
  expect_close(C, want,
               "gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " M=" + std::to_string(M) +
                   " N=" + std::to_string(N));
}

TEST(Gemm, AllTransposesSmallAndSplitOverThePool) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm(ta, tb, 7, 5, 3);      // serial path
      check_gemm(ta, tb, 300, 70, 64);  // large enough to split M over the pool
      check_gemm(ta, tb, 70, 300, 64);  // split N
    }
}

TEST(Linear, ForwardAndBackwardAccumulate) {
  const int64_t N = 5, C = 4, OC = 3;
  Vec inp = random_vec(N * C, 10), w = random_vec(OC * C, 11), R = random_vec(N * OC, 12);
  auto loss = [&](const DVec& x, const DVec& wt) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o) {
        double y = 0;
        for (int64_t c = 0; c < C; ++c) y += x[n * C + c] * wt[o * C + c];
        s += R[n * OC + o] * y;
      }
    return s;
  };
  Vec out(N * OC);
  linear_forward(out.data(), inp.data(), w.data(), N, C, OC);
  DVec want_out(N * OC);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o)
      for (int64_t c = 0; c < C; ++c) want_out[n * OC + o] += double(inp[n * C + c]) * w[o * C + c];
  expect_close(out, want_out, "linear out");

  Vec dinp = prefilled(N * C), dw = prefilled(OC * C);
  linear_backward(dinp.data(), dw.data(), R.data(), inp.data(), w.data(), N, C, OC);
  expect_grad(dinp, numeric_grad([&](const DVec& x) { return loss(x, to_double(w)); }, to_double(inp)),
              "dinp");
  expect_grad(dw, numeric_grad([&](const DVec& wt) { return loss(to_double(inp), wt); }, to_double(w)), "dw");

  Vec dw_only = prefilled(OC * C);
  linear_backward(nullptr, dw_only.data(), R.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(dw_only, dw);
}

// ---------------------------------------------------------------------------------------------------------------
// embedding

TEST(Embedding, GathersRowsAndScattersGradientsWithRepeats) {
  const int64_t V = 6, C = 3, N = 5;
  Vec table = random_vec(V * C, 20), dout = random_vec(N * C, 21);
  std::vector<int32_t> tokens = {4, 1, 4, 0, 4};
  Vec out(N * C);
  embedding_forward(out.data(), tokens.data(), table.data(), N, V, C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(out[n * C + c], table[tokens[n] * C + c]);

  Vec dtable = prefilled(V * C);
  embedding_backward(dtable.data(), dout.data(), tokens.data(), N, V, C);
  DVec want(V * C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) want[tokens[n] * C + c] += dout[n * C + c];
  expect_grad(dtable, want, "dtable");
}

TEST(Embedding, BadTokenThrowsNamingTokenAndPosition) {
  Vec table(4 * 2), out(3 * 2);
  std::vector<int32_t> tokens = {0, 3, 7};
  try {
    embedding_forward(out.data(), tokens.data(), table.data(), 3, 4, 2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[embedding] token 7 at position 2"), std::string::npos) << e.what();
  }
  tokens = {-1, 0, 0};
  EXPECT_THROW(embedding_backward(out.data(), table.data(), tokens.data(), 3, 4, 2), Error);
}

// ---------------------------------------------------------------------------------------------------------------
// rmsnorm

TEST(RmsNorm, ForwardAndBackward) {
  const int64_t N = 4, C = 8;
  const float eps = 1e-6f;
  Vec inp = random_vec(N * C, 30), w = random_vec(C, 31), R = random_vec(N * C, 32);
  auto ref = [&](const DVec& x, const DVec& wt) {
    DVec y(N * C);
    for (int64_t n = 0; n < N; ++n) {
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
      double r = 1.0 / std::sqrt(ss / C + eps);
      for (int64_t c = 0; c < C; ++c) y[n * C + c] = wt[c] * x[n * C + c] * r;
    }
    return y;
  };
  Vec out(N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), inp.data(), w.data(), N, C, eps);
  expect_close(out, ref(to_double(inp), to_double(w)), "rmsnorm out");

  Vec dinp = prefilled(N * C), dw = prefilled(C);
  rmsnorm_backward(dinp.data(), dw.data(), R.data(), inp.data(), w.data(), rstd.data(), N, C);
  auto loss_x = [&](const DVec& x) {
    DVec y = ref(x, to_double(w));
    return dot(y, R);
  };
  auto loss_w = [&](const DVec& wt) { return dot(ref(to_double(inp), wt), R); };
  expect_grad(dinp, numeric_grad(loss_x, to_double(inp)), "rmsnorm dinp");
  expect_grad(dw, numeric_grad(loss_w, to_double(w)), "rmsnorm dweight");
}

// ---------------------------------------------------------------------------------------------------------------
// rope

TEST(Rope, MatchesRotateHalfFormulaWithTheta500000) {
  const int64_t hd = 8, H = 2, N = 3;
  const double theta = 500000.0;
  RopeTable table = rope_table(hd, 4096, theta);
  std::vector<int32_t> positions = {0, 17, 4095};
  Vec x = random_vec(N * H * hd, 40);
  Vec y = x;
  rope_forward(y.data(), positions.data(), N, H, table);
  DVec want(N * H * hd);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < hd; ++i) {
        int64_t j = i % (hd / 2);
        double angle = positions[n] * std::pow(theta, -2.0 * j / hd);
        const float* head = &x[(n * H + h) * hd];
        double rotated = i < hd / 2 ? -head[i + hd / 2] : head[i - hd / 2];  // rotate_half
        want[(n * H + h) * hd + i] = head[i] * std::cos(angle) + rotated * std::sin(angle);
      }
  // cos/sin tables are rounded to fp32: angles up to 4095 rad lose ~4095 * 2^-24 absolute.
  expect_close(y, want, "rope", 1e-5, 1e-4);

  // The backward is the transpose (the inverse rotation): it undoes the forward, and it is the gradient.
  Vec back = y;
  rope_backward(back.data(), positions.data(), N, H, table);
  expect_close(back, to_double(x), "rope inverse", 1e-5, 1e-4);
  Vec R = random_vec(N * H * hd, 41);
  Vec grad = R;
  rope_backward(grad.data(), positions.data(), N, H, table);
  auto loss = [&](const DVec& xin) {
    Vec xf(xin.begin(), xin.end());
    rope_forward(xf.data(), positions.data(), N, H, table);
    return dot(to_double(xf), R);
  };
  // fp32 forward inside the difference: larger step and tolerance (rope is linear, so h does not bias it).
  expect_close(grad, numeric_grad(loss, to_double(x), 1e-2), "rope grad", 1e-3, 1e-3);
}

// A context longer than the table (max_position_embeddings up to 2^24): positions past kRopeTableRows are
// computed when used, as the table computes its rows (double angles rounded to fp32); no table row is
// allocated past kRopeTableRows.
TEST(Rope, PositionsPastTheTableRotateExactlyAsTableRows) {
  const int64_t hd = 8, max_positions = int64_t{1} << 24;
  RopeTable table = rope_table(hd, max_positions, 500000.0);
  EXPECT_EQ(table.rows, kRopeTableRows);
  EXPECT_EQ(static_cast<int64_t>(table.cos.size()), kRopeTableRows * hd / 2);
  std::vector<int32_t> positions = {static_cast<int32_t>(max_positions - 1)};
  Vec far = random_vec(hd, 43), want = far;
  rope_forward(far.data(), positions.data(), 1, 1, table);
  for (int64_t i = 0; i < hd / 2; ++i) {
    const double angle = static_cast<double>(max_positions - 1) * std::pow(500000.0, -2.0 * i / hd);
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    EXPECT_NEAR(far[i], want[i] * c - want[i + hd / 2] * s, 1e-6);
    EXPECT_NEAR(far[i + hd / 2], want[i + hd / 2] * c + want[i] * s, 1e-6);
  }
}

TEST(Rope, PositionOutsideTableThrows) {
  RopeTable table = rope_table(4, 8, 10000.0);
  Vec x(4);
  int32_t pos = 8;
  EXPECT_THROW(rope_forward(x.data(), &pos, 1, 1, table), Error);
}

// ---------------------------------------------------------------------------------------------------------------
// attention

struct AttnRef {
  DVec out, probs;
};

AttnRef ref_attention(const DVec& q, const DVec& k, const DVec& v, const int32_t* docs,
                      const AttentionShape& s) {
  AttnRef r{DVec(s.B * s.T * s.H * s.hd, 0.0), DVec(s.B * s.H * s.T * s.T, 0.0)};
  const int64_t group = s.H / s.Hkv;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        auto qi = [&](int64_t d) { return q[((b * s.T + t) * s.H + h) * s.hd + d]; };
        auto kv = [&](const DVec& x, int64_t u, int64_t d) {
          return x[((b * s.T + u) * s.Hkv + h / group) * s.hd + d];
        };
        std::vector<double> score(s.T, -INFINITY);
        double max = -INFINITY;
        for (int64_t u = 0; u <= t; ++u) {
          if (docs && docs[b * s.T + u] != docs[b * s.T + t]) continue;
          double d = 0;
          for (int64_t i = 0; i < s.hd; ++i) d += qi(i) * kv(k, u, i);
          score[u] = d / std::sqrt(double(s.hd));
          max = std::max(max, score[u]);
        }
        double sum = 0;
        for (int64_t u = 0; u <= t; ++u) sum += std::exp(score[u] - max);
        for (int64_t u = 0; u <= t; ++u) {
          double p = std::exp(score[u] - max) / sum;
          r.probs[((b * s.H + h) * s.T + t) * s.T + u] = p;
          for (int64_t i = 0; i < s.hd; ++i) r.out[((b * s.T + t) * s.H + h) * s.hd + i] += p * kv(v, u, i);
        }
      }
  return r;
}

// stride > 1 checks only every stride-th gradient coordinate against the (costly) finite difference.
void check_attention(const AttentionShape& s, const int32_t* docs, uint64_t seed, size_t stride = 1) {
  Vec q = random_vec(s.B * s.T * s.H * s.hd, seed), k = random_vec(s.B * s.T * s.Hkv * s.hd, seed + 1),
      v = random_vec(s.B * s.T * s.Hkv * s.hd, seed + 2), R = random_vec(s.B * s.T * s.H * s.hd, seed + 3);
  Vec out(q.size()), probs(s.B * s.H * s.T * s.T, -1.0f);
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), docs, s);
  AttnRef want = ref_attention(to_double(q), to_double(k), to_double(v), docs, s);
  expect_close(out, want.out, "attention out");
  expect_close(probs, want.probs, "attention probs");

  Vec dq = prefilled(q.size()), dk = prefilled(k.size()), dv = prefilled(v.size());
  attention_backward(dq.data(), dk.data(), dv.data(), R.data(), probs.data(), q.data(), k.data(), v.data(),
                     s);
  DVec qd = to_double(q), kd = to_double(k), vd = to_double(v);
  expect_grad(dq,
              numeric_grad([&](const DVec& x) { return dot(ref_attention(x, kd, vd, docs, s).out, R); }, qd,
                           1e-6, stride),
              "attention dq");
  expect_grad(dk,
              numeric_grad([&](const DVec& x) { return dot(ref_attention(qd, x, vd, docs, s).out, R); }, kd,
                           1e-6, stride),
              "attention dk");
  expect_grad(dv,
              numeric_grad([&](const DVec& x) { return dot(ref_attention(qd, kd, x, docs, s).out, R); }, vd,
                           1e-6, stride),
              "attention dv");
}

TEST(Attention, CausalGroupedQueryHeads) {
  check_attention({2, 5, 4, 2, 3}, nullptr, 50);
}

TEST(Attention, MultiHeadWithoutGrouping) {
  check_attention({1, 6, 2, 2, 4}, nullptr, 55);
}

TEST(Attention, DocumentMaskForwardAndBackward) {
  std::vector<int32_t> docs = {0, 0, 1, 1, 1, 2, 7, 7, 7, 7, 8, 8};  // B=2, T=6
  check_attention({2, 6, 4, 2, 3}, docs.data(), 60);
}

TEST(Attention, LongRowsSpanSeveralQueryBlocks) {
  // T = 150 crosses the kernel's 64-row query blocks (the last one partial); documents straddle block edges.
  std::vector<int32_t> docs(150);
  for (int64_t t = 0; t < 150; ++t) docs[t] = t < 50 ? 0 : (t < 130 ? 1 : 2);
  check_attention({1, 150, 2, 1, 2}, nullptr, 65, 7);
  check_attention({1, 150, 2, 1, 2}, docs.data(), 66, 7);
}

TEST(Attention, DocumentMaskAcrossSeveralQueryBlocks) {
  // Query blocks whose first document began earlier (keys from 50) or exactly at the block (keys from 64):
  // the kernel skips the keys before that document, forward and backward.
  std::vector<int32_t> docs(150);
  for (int64_t t = 0; t < 150; ++t) docs[t] = t < 50 ? 0 : (t < 130 ? 1 : 2);
  check_attention({1, 150, 2, 1, 2}, docs.data(), 66, 7);
  for (int64_t t = 0; t < 150; ++t) docs[t] = t < 64 ? 0 : 1;
  check_attention({1, 150, 2, 1, 2}, docs.data(), 67, 7);
}

TEST(Attention, NoAttentionAcrossDocuments) {
  const AttentionShape s{1, 6, 2, 1, 4};
  std::vector<int32_t> docs = {0, 0, 0, 1, 1, 1};
  Vec q = random_vec(s.T * s.H * s.hd, 70), k = random_vec(s.T * s.hd, 71), v = random_vec(s.T * s.hd, 72);
  Vec out(q.size()), probs(s.H * s.T * s.T);
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), docs.data(), s);
  for (int64_t h = 0; h < s.H; ++h)
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t u = 0; u < s.T; ++u)
        if (u > t || docs[u] != docs[t]) {
          EXPECT_EQ(probs[(h * s.T + t) * s.T + u], 0.0f) << t << "," << u;
        }
  // Changing the first document's keys and values leaves the second document's outputs bit-identical.
  Vec k2 = k, v2 = v, out2(q.size());
  for (int64_t i = 0; i < 3 * s.hd; ++i) k2[i] += 1.0f, v2[i] -= 2.0f;
  attention_forward(out2.data(), probs.data(), q.data(), k2.data(), v2.data(), docs.data(), s);
  for (int64_t i = 3 * s.H * s.hd; i < s.T * s.H * s.hd; ++i) EXPECT_EQ(out[i], out2[i]);
  // And the first token of the second document attends to itself only: its output is its own value.
  for (int64_t h = 0; h < s.H; ++h)
    for (int64_t i = 0; i < s.hd; ++i) EXPECT_FLOAT_EQ(out[(3 * s.H + h) * s.hd + i], v[3 * s.hd + i]);
}

// ---------------------------------------------------------------------------------------------------------------
// swiglu and the vector exp under it

TEST(VecExp, MatchesStdExpAndHandlesEdges) {
  // Relative error within 4 fp32 ulp (~5e-7) over the whole finite range.
  alignas(32) float in[8], out[8];
  for (double x = -87.0; x <= 88.0; x += 0.37) {
    for (int i = 0; i < 8; ++i) in[i] = static_cast<float>(x + 0.01 * i);
    _mm256_store_ps(out, vec::exp8(_mm256_load_ps(in)));
    for (int i = 0; i < 8; ++i) {
      double want = std::exp(static_cast<double>(in[i]));
      EXPECT_NEAR(out[i], want, 5e-7 * want) << in[i];
    }
  }
  const float edges[8] = {kNegInf, -1000.0f, -88.0f, 0.0f, 1000.0f, INFINITY, std::nanf(""), -0.0f};
  _mm256_store_ps(out, vec::exp8(_mm256_loadu_ps(edges)));
  EXPECT_EQ(out[0], 0.0f);  // masked logits contribute exactly nothing
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], 1.0f);
  EXPECT_EQ(out[4], INFINITY);
  EXPECT_EQ(out[5], INFINITY);
  EXPECT_TRUE(std::isnan(out[6]));
  EXPECT_EQ(out[7], 1.0f);
}

TEST(SwiGlu, ForwardAndBackward) {
  const int64_t n = 20;
  Vec gate = random_vec(n, 80, 3.0), up = random_vec(n, 81), R = random_vec(n, 82);
  auto ref = [&](const DVec& g, const DVec& u) {
    DVec y(n);
    for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
    return y;
  };
  Vec out(n);
  swiglu_forward(out.data(), gate.data(), up.data(), n);
  expect_close(out, ref(to_double(gate), to_double(up)), "swiglu out");
  Vec dgate = prefilled(n), dup = prefilled(n);
  swiglu_backward(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), n);
  expect_grad(dgate,
              numeric_grad([&](const DVec& g) { return dot(ref(g, to_double(up)), R); }, to_double(gate)),
              "dgate");
  expect_grad(dup,
              numeric_grad([&](const DVec& u) { return dot(ref(to_double(gate), u), R); }, to_double(up)),
              "dup");
}

// ---------------------------------------------------------------------------------------------------------------
// softmax, cross-entropy, topk

DVec ref_softmax(const DVec& x, int64_t N, int64_t C, DVec* lse = nullptr) {
  DVec p(N * C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double max = -INFINITY, sum = 0;
    for (int64_t c = 0; c < C; ++c) max = std::max(max, x[n * C + c]);
    for (int64_t c = 0; c < C; ++c) sum += std::exp(x[n * C + c] - max);
    for (int64_t c = 0; c < C; ++c) p[n * C + c] = std::exp(x[n * C + c] - max) / sum;
    if (lse) (*lse)[n] = max + std::log(sum);
  }
  return p;
}

TEST(Softmax, MinusInfinityEntriesGetZeroProbability) {
  const int64_t N = 3, C = 5;
  Vec x = random_vec(N * C, 90, 2.0), R = random_vec(N * C, 91);
  x[1] = kNegInf, x[3] = kNegInf, x[C + 0] = kNegInf;  // masked experts (a pruned router's rows)
  Vec out(N * C), lse(N);
  softmax_forward(out.data(), lse.data(), x.data(), N, C);
  DVec want_lse(N);
  expect_close(out, ref_softmax(to_double(x), N, C, &want_lse), "softmax");
  expect_close(lse, want_lse, "softmax lse");
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_EQ(out[C], 0.0f);

  Vec dx = prefilled(N * C);
  softmax_backward(dx.data(), R.data(), out.data(), N, C);
  // The difference stays finite at -inf entries (-inf +- h is -inf), where the gradient is 0.
  DVec want = numeric_grad([&](const DVec& xin) { return dot(ref_softmax(xin, N, C), R); }, to_double(x));
  for (auto& w : want)
    if (!std::isfinite(w)) w = 0;
  expect_grad(dx, want, "softmax dx");
  EXPECT_EQ(dx[1], kPrefill);
}

TEST(Softmax, AllMinusInfinityRowIsZeroNotNan) {
  Vec x(4, kNegInf), out(4), lse(1);
  softmax_forward(out.data(), lse.data(), x.data(), 1, 4);
  for (float p : out) EXPECT_EQ(p, 0.0f);
}

TEST(CrossEntropy, IgnoredTargetsAndZLoss) {
  const int64_t N = 5, V = 7;
  const float ce_scale = 0.7f, z_scale = 0.3f;
  Vec logits = random_vec(N * V, 100, 2.0);
  std::vector<int32_t> targets = {3, -1, 0, 6, -1};
  auto sums_ref = [&](const DVec& x, double* ce, double* z) {
    DVec lse(N);
    DVec p = ref_softmax(x, N, V, &lse);
    *ce = *z = 0;
    for (int64_t n = 0; n < N; ++n) {
      if (targets[n] < 0) continue;
      *ce += -std::log(p[n * V + targets[n]]);
      *z += lse[n] * lse[n];
    }
  };
  Vec lse(N);
  CrossEntropySums sums = cross_entropy_forward(lse.data(), logits.data(), targets.data(), N, V);
  double ce, z;
  sums_ref(to_double(logits), &ce, &z);
  EXPECT_EQ(sums.count, 3);
  EXPECT_NEAR(sums.ce, ce, 1e-5 * std::abs(ce));
  EXPECT_NEAR(sums.z, z, 1e-5 * std::abs(z));

  Vec dlogits = prefilled(N * V);
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), N, V, ce_scale, z_scale);
  auto loss = [&](const DVec& x) {
    double c, zz;
    sums_ref(x, &c, &zz);
    return ce_scale * c + z_scale * zz;
  };
  expect_grad(dlogits, numeric_grad(loss, to_double(logits)), "dlogits");
  for (int64_t v = 0; v < V; ++v) EXPECT_EQ(dlogits[1 * V + v], kPrefill) << "ignored row gets nothing";
}

TEST(CrossEntropy, TargetOutsideVocabularyThrows) {
  Vec logits(2 * 3), lse(2);
  std::vector<int32_t> targets = {0, 3};
  EXPECT_THROW(cross_entropy_forward(lse.data(), logits.data(), targets.data(), 2, 3), Error);
}

TEST(TopK, DescendingWithTiesKeepingLowerIndexFirst) {
  Vec x = {1,  3,  3,  2,  3,  0.5f,  //
           -1, -1, -1, -1, -1, -1};
  std::vector<int32_t> idx(2 * 4);
  Vec val(2 * 4);
  topk(idx.data(), val.data(), x.data(), 2, 6, 4);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2, 4, 3, 0, 1, 2, 3}));
  EXPECT_EQ(val, (Vec{3, 3, 3, 2, -1, -1, -1, -1}));
  topk(idx.data(), nullptr, x.data(), 2, 6, 1);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 0);
}

// ---------------------------------------------------------------------------------------------------------------
// MoE dispatch

struct MoeProblem {
  int64_t N = 7, K = 2, C = 6, F = 4, E = 5;
  // Expert 3 receives no tokens; slots holding -1 are unused; token 5 uses no expert at all.
  std::vector<int32_t> ids = {0, 2, 2, -1, 4, 0, 1, 2, 2, 4, -1, -1, 0, 1};
  Vec x, weights, params, R;  // params: per expert gate [F,C], up [F,C], down [C,F]
  MoeProblem() {
    x = random_vec(N * C, 110);
    weights = random_vec(N * K, 111);
    params = random_vec(E * 3 * F * C, 112, 0.5);
    R = random_vec(N * C, 113);
  }
  int64_t expert_size() const { return 3 * F * C; }
  std::vector<ExpertWeights> experts(const Vec& p) const {
    std::vector<ExpertWeights> ws;
    for (int64_t e = 0; e < E; ++e) {
      const float* base = p.data() + e * expert_size();
      ws.push_back({base, base + F * C, base + 2 * F * C});
    }
    return ws;
  }
  DVec reference(const DVec& xd, const DVec& wd, const DVec& pd) const {
    DVec out(N * C, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        int32_t e = ids[n * K + k];
        if (e < 0) continue;
        const double* gate = pd.data() + e * expert_size();
        const double *up = gate + F * C, *down = gate + 2 * F * C;
        DVec hidden(F);
        for (int64_t f = 0; f < F; ++f) {
          double g = 0, u = 0;
          for (int64_t c = 0; c < C; ++c)
            g += gate[f * C + c] * xd[n * C + c], u += up[f * C + c] * xd[n * C + c];
          hidden[f] = g / (1 + std::exp(-g)) * u;
        }
        for (int64_t c = 0; c < C; ++c) {
          double y = 0;
          for (int64_t f = 0; f < F; ++f) y += down[c * F + f] * hidden[f];
          out[n * C + c] += wd[n * K + k] * y;
        }
      }
    return out;
  }
};

TEST(Moe, DispatchForwardAndBackwardWithUnusedSlotsAndIdleExpert) {
  MoeProblem p;
  MoeCache cache;
  Vec out(p.N * p.C, 99.0f);  // overwritten
  moe_forward(out.data(), cache, p.x.data(), p.ids.data(), p.weights.data(), p.N, p.K, p.C, p.F,
              p.experts(p.params));
  DVec xd = to_double(p.x), wd = to_double(p.weights), pd = to_double(p.params);
  expect_close(out, p.reference(xd, wd, pd), "moe out");
  EXPECT_EQ(cache.expert_offsets[4] - cache.expert_offsets[3], 0);
  EXPECT_EQ(static_cast<int64_t>(cache.rows.size()), 11);

  Vec dx = prefilled(p.N * p.C), dweights = prefilled(p.N * p.K), dparams = prefilled(p.params.size());
  std::vector<ExpertGrads> grads;
  for (int64_t e = 0; e < p.E; ++e) {
    float* base = dparams.data() + e * p.expert_size();
    grads.push_back({base, base + p.F * p.C, base + 2 * p.F * p.C});
  }
  moe_backward(dx.data(), dweights.data(), grads, p.R.data(), p.ids.data(), p.weights.data(), cache,
               p.experts(p.params));
  expect_grad(dx, numeric_grad([&](const DVec& v) { return dot(p.reference(v, wd, pd), p.R); }, xd),
              "moe dx");
  expect_grad(dweights, numeric_grad([&](const DVec& v) { return dot(p.reference(xd, v, pd), p.R); }, wd),
              "moe dweights");
  expect_grad(dparams, numeric_grad([&](const DVec& v) { return dot(p.reference(xd, wd, v), p.R); }, pd),
              "moe dparams");
  // Unused slots get no weight gradient; the idle expert gets no parameter gradient.
  EXPECT_EQ(dweights[3], kPrefill);
  for (int64_t i = 0; i < p.expert_size(); ++i) EXPECT_EQ(dparams[3 * p.expert_size() + i], kPrefill);
}

TEST(Moe, FrozenExpertsWithNullGradientsStillPassInputGradients) {
  MoeProblem p;
  MoeCache cache;
  Vec out(p.N * p.C);
  moe_forward(out.data(), cache, p.x.data(), p.ids.data(), p.weights.data(), p.N, p.K, p.C, p.F,
              p.experts(p.params));
  std::vector<ExpertGrads> frozen(p.E, ExpertGrads{nullptr, nullptr, nullptr});
  Vec dx = prefilled(p.N * p.C);
  moe_backward(dx.data(), nullptr, frozen, p.R.data(), p.ids.data(), p.weights.data(), cache,
               p.experts(p.params));
  DVec wd = to_double(p.weights), pd = to_double(p.params);
  expect_grad(dx,
              numeric_grad([&](const DVec& v) { return dot(p.reference(v, wd, pd), p.R); }, to_double(p.x)),
              "moe dx frozen");
}

TEST(Moe, ExpertIdOutOfRangeThrows) {
  MoeProblem p;
  p.ids[4] = 5;
  MoeCache cache;
  Vec out(p.N * p.C);
  EXPECT_THROW(moe_forward(out.data(), cache, p.x.data(), p.ids.data(), p.weights.data(), p.N, p.K, p.C, p.F,
                           p.experts(p.params)),
               Error);
}

// ---------------------------------------------------------------------------------------------------------------
// Thread counts: every kernel gives bit-identical results with 1 and 2 threads.

struct AllOutputs {
  std::vector<Vec> tensors;
  bool operator==(const AllOutputs&) const = default;
};

AllOutputs run_everything() {
  AllOutputs all;
  auto keep = [&](const Vec& v) { all.tensors.push_back(v); };
  // A gemm large enough to split, and linear through it.
  const int64_t M = 256, N = 192, K = 64;
  Vec A = random_vec(M * K, 200), B = random_vec(N * K, 201), C(M * N);
  gemm(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
  keep(C);
  Vec dA(M * K), dB(N * K);
  linear_backward(dA.data(), dB.data(), C.data(), A.data(), B.data(), M, K, N);
  keep(dA), keep(dB);
  // rmsnorm
  Vec rn(M * K), rstd(M), w = random_vec(K, 202), drn(M * K), dw(K);
  rmsnorm_forward(rn.data(), rstd.data(), A.data(), w.data(), M, K, 1e-6f);
  rmsnorm_backward(drn.data(), dw.data(), rn.data(), A.data(), w.data(), rstd.data(), M, K);
  keep(rn), keep(drn), keep(dw);
  // attention with GQA and documents
  const AttentionShape s{2, 40, 4, 2, 8};
  Vec q = random_vec(s.B * s.T * s.H * s.hd, 203), k = random_vec(s.B * s.T * s.Hkv * s.hd, 204),
      v = random_vec(s.B * s.T * s.Hkv * s.hd, 205);
  std::vector<int32_t> docs(s.B * s.T);
  for (int64_t i = 0; i < s.B * s.T; ++i) docs[i] = static_cast<int32_t>(i / 13);
  Vec out(q.size()), probs(s.B * s.H * s.T * s.T), dq(q.size()), dk(k.size()), dv(v.size());
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), docs.data(), s);
  attention_backward(dq.data(), dk.data(), dv.data(), out.data(), probs.data(), q.data(), k.data(), v.data(),
                     s);
  keep(out), keep(dq), keep(dk), keep(dv);
  // MoE: 300 tokens, 8 experts, K=2
  MoeProblem p;
  p.N = 300, p.E = 8, p.C = 16, p.F = 8;
  p.x = random_vec(p.N * p.C, 206), p.weights = random_vec(p.N * p.K, 207);
  p.params = random_vec(p.E * p.expert_size(), 208), p.R = random_vec(p.N * p.C, 209);
  p.ids.resize(p.N * p.K);
  Rng rng(210);
  for (auto& id : p.ids) id = static_cast<int32_t>(rng.uniform_int(-1, 6));  // expert 7 idle
  MoeCache cache;
  Vec moe_out(p.N * p.C), moe_dx(p.N * p.C), moe_dw(p.N * p.K), moe_dp(p.params.size());
  moe_forward(moe_out.data(), cache, p.x.data(), p.ids.data(), p.weights.data(), p.N, p.K, p.C, p.F,
              p.experts(p.params));
  std::vector<ExpertGrads> grads;
  for (int64_t e = 0; e < p.E; ++e) {
    float* base = moe_dp.data() + e * p.expert_size();
    grads.push_back({base, base + p.F * p.C, base + 2 * p.F * p.C});
  }
  moe_backward(moe_dx.data(), moe_dw.data(), grads, p.R.data(), p.ids.data(), p.weights.data(), cache,
               p.experts(p.params));
  keep(moe_out), keep(moe_dx), keep(moe_dw), keep(moe_dp);
  // softmax, cross-entropy, embedding
  Vec sm(M * K), dsm(M * K);
  softmax_forward(sm.data(), nullptr, A.data(), M, K);
  softmax_backward(dsm.data(), rn.data(), sm.data(), M, K);  // dout [M,K]
  keep(sm), keep(dsm);
  std::vector<int32_t> targets(M);
  for (int64_t i = 0; i < M; ++i) targets[i] = static_cast<int32_t>(i % 7 == 0 ? -1 : i % K);
  Vec lse(M), dlogits(M * K);
  CrossEntropySums sums = cross_entropy_forward(lse.data(), A.data(), targets.data(), M, K);
  cross_entropy_backward(dlogits.data(), A.data(), lse.data(), targets.data(), M, K, 0.5f, 1e-4f);
  keep(dlogits), keep(Vec{static_cast<float>(sums.ce), static_cast<float>(sums.z)});
  Vec dtable(K * 16);
  std::vector<int32_t> tokens(M);
  for (int64_t i = 0; i < M; ++i) tokens[i] = static_cast<int32_t>((i * 7) % K);
  embedding_backward(dtable.data(), A.data(), tokens.data(), M, K, 16);
  keep(dtable);
  // swiglu over an odd length: the pool's split point falls inside an 8-wide block
  const int64_t n = 10001;
  Vec g = random_vec(n, 211, 3.0), u = random_vec(n, 212), h(n), dg(n), du(n);
  swiglu_forward(h.data(), g.data(), u.data(), n);
  swiglu_backward(dg.data(), du.data(), u.data(), g.data(), u.data(), n);
  keep(h), keep(dg), keep(du);
  return all;
}

TEST(Threads, OneAndTwoThreadsGiveIdenticalResults) {
  const int saved = num_threads();
  set_num_threads(1);
  AllOutputs one = run_everything();
  set_num_threads(2);
  AllOutputs two = run_everything();
  set_num_threads(saved);
  ASSERT_EQ(one.tensors.size(), two.tensors.size());
  for (size_t i = 0; i < one.tensors.size(); ++i) EXPECT_EQ(one.tensors[i], two.tensors[i]) << "output " << i;
}

// ------------------------------------------------------------------------------------------ q4 weights

std::vector<float> normal_values(int64_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = scale * static_cast<float>(rng.normal());
  return v;
}

TEST(Q4, BlockLayoutIsLlamaCppQ4_0) {
  BlockQ4_0 block;
  block.d = 0x3C00;  // fp16 1.0
  for (int j = 0; j < 16; ++j) block.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32];
  dequantize_row_q4_0(&block, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], static_cast<float>(j - 8)) << j;       // low nibble: element j
    EXPECT_EQ(out[16 + j], static_cast<float>(7 - j)) << j;  // high nibble: element j + 16
  }
  // The value of largest magnitude becomes exactly -8 d (d = that value / -8), as llama.cpp quantises.
  std::vector<float> w(32, 0.25f);
  w[5] = -2.0f;
  BlockQ4_0 q;
  quantize_row_q4_0(w.data(), &q, 32);
  EXPECT_EQ(f16_to_f32(q.d), 0.25f);
  EXPECT_EQ(q.qs[5] & 0x0F, 0);
  EXPECT_EQ(q.qs[0] & 0x0F, 9);  // 0.25 / 0.25 + 8
}

TEST(Q4, RoundTripErrorIsAtMostHalfAStepAndOneStepAtTheClippedEnd) {
  const int64_t rows = 7, cols = 96;
  const std::vector<float> w = normal_values(rows * cols, 11);
  std::vector<uint8_t> q(static_cast<size_t>(rows * q4_row_bytes(cols)));
  quantize_rows_q4_0(q.data(), w.data(), rows, cols);
  std::vector<float> back(w.size());
  MatrixView view{DType::kQ4_0, q.data(), nullptr, rows, cols};
  dequantize_rows(back.data(), view, 0, rows);
  const auto* blocks = reinterpret_cast<const BlockQ4_0*>(q.data());
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float d = std::fabs(f16_to_f32(blocks[i / 32].d));
    // d is rounded to fp16 (relative 2^-11, times up to 8 steps); the side opposite the extreme value
    // reaches +8 steps, which 4 bits clip to +7.
    const float scaled = std::fabs(w[i]) / d;
    const float bound = (scaled < 7.5f ? 0.5f : 1.0f) * d + 8.0f * d / 2048.0f + 1e-7f;
    EXPECT_LE(std::fabs(back[i] - w[i]), bound) << i;
  }
}

// The fitted scales keep the layout (dequantised by the same code) and never lose to llama.cpp's choice
// (the extreme / -8 scale is among the candidates' neighbours, and each candidate is refined by least
// squares): measured over normal rows and rows with outliers, block by block.
TEST(Q4, FittedScalesHaveAtMostTheSquaredErrorOfTheExtremeScale) {
  const int64_t rows = 16, cols = 256;
  std::vector<float> w = normal_values(rows * cols, 21);
  for (int64_t i = 0; i < rows * cols; i += 97) w[i] *= 6.0f;  // outliers in some blocks
  std::vector<uint8_t> extreme(static_cast<size_t>(rows * q4_row_bytes(cols))), fitted(extreme.size());
  quantize_rows_q4_0(extreme.data(), w.data(), rows, cols, Q4Scale::kExtreme);
  quantize_rows_q4_0(fitted.data(), w.data(), rows, cols, Q4Scale::kFitted);
  std::vector<float> a(w.size()), b(w.size());
  dequantize_rows(a.data(), {DType::kQ4_0, extreme.data(), nullptr, rows, cols}, 0, rows);
  dequantize_rows(b.data(), {DType::kQ4_0, fitted.data(), nullptr, rows, cols}, 0, rows);
  double total_extreme = 0, total_fitted = 0;
  for (int64_t block = 0; block < rows * cols / 32; ++block) {
    double ea = 0, eb = 0;
    for (int64_t j = block * 32; j < (block + 1) * 32; ++j) {
      ea += (a[j] - w[j]) * double(a[j] - w[j]);
      eb += (b[j] - w[j]) * double(b[j] - w[j]);
    }
    EXPECT_LE(eb, ea * 1.0001 + 1e-9) << "block " << block;
    total_extreme += ea, total_fitted += eb;
  }
  EXPECT_LT(total_fitted, 0.95 * total_extreme);
  std::printf("q4 squared error: extreme / -8 %.4f, fitted %.4f (%.1f%% less)\n", total_extreme, total_fitted,
              100.0 * (1.0 - total_fitted / total_extreme));
  // An all-zero block stays zero.
  std::vector<float> zeros(32, 0.0f), back(32, 1.0f);
  BlockQ4_0 z;
  quantize_row_q4_0_fitted(zeros.data(), &z, 32);
  dequantize_row_q4_0(&z, back.data(), 32);
  EXPECT_EQ(back, zeros);
}

// A product large enough to be split over the pool's threads: every worker reads the activations the
// calling thread rounded (a worker once read its own, empty thread-local copy and crashed).
TEST(Q4, AProductSplitOverThreadsEqualsTheSerialOne) {
  const int64_t OC = 2048, C = 256, N = 3;  // 2048 rows of 144 bytes: about 18 chunks of 16 KiB
  const std::vector<float> w = normal_values(OC * C, 8, 0.1f), x = normal_values(N * C, 9);
  std::vector<uint8_t> q(static_cast<size_t>(OC * q4_row_bytes(C)));
  quantize_rows_q4_0(q.data(), w.data(), OC, C);
  const MatrixView view{DType::kQ4_0, q.data(), nullptr, OC, C};
  std::vector<float> pooled(static_cast<size_t>(N * OC)), serial(pooled.size()), grouped(pooled.size());
  const int saved = num_threads();
  set_num_threads(2);
  matmul(pooled.data(), x.data(), N, view);
  matmul_serial(serial.data(), x.data(), N, view);
  EXPECT_EQ(pooled, serial);
  std::vector<float> half(static_cast<size_t>(N * OC / 2));
  matmul_group({grouped.data(), half.data()}, x.data(), N, {view, view.row_block(0, OC / 2)});
  set_num_threads(saved);
  EXPECT_EQ(grouped, serial);
}

TEST(Q4, ColumnsThatAreNotWholeBlocksAreRefused) {
  std::vector<float> w(2 * 48, 1.0f);
  std::vector<uint8_t> q(200);
  EXPECT_THROW(
      {
        try {
          quantize_rows_q4_0(q.data(), w.data(), 2, 48);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("48 columns are not a multiple of 32"), std::string::npos);
          throw;
        }
      },
      Error);
  MatrixView view{DType::kQ4_0, q.data(), nullptr, 2, 40};
  EXPECT_THROW(check_matrix_view(view, "w"), Error);
}

// Every kernel the CPU has (the process's one kernel choice, set_quant_kernel), serial and over the pool,
// against the scalar reference on the same int8 activations (only fp32 summation order differs: 1e-5 of the
// sum of |terms|) and against the fp32 product of the dequantised weights with the unrounded x (the int8
// rounding of x: half a step of its block per weight); AVX-512 VNNI bit-identical to the forced AVX2 kernel.
TEST(Q4, EveryKernelEqualsTheScalarReferenceAndTheDequantisedProduct) {
  const QuantKernel chosen = quant_kernel();
  for (int64_t C : {96, 320}) {
    const int64_t OC = 37, nb = C / 32;  // 37: not a multiple of the 2 or 4 rows of a register block
    const std::vector<float> w = normal_values(OC * C, 5, 0.1f);
    std::vector<uint8_t> q(static_cast<size_t>(OC * q4_row_bytes(C)));
    quantize_rows_q4_0(q.data(), w.data(), OC, C);
    MatrixView view{DType::kQ4_0, q.data(), nullptr, OC, C};
    std::vector<float> wd(w.size());
    dequantize_rows(wd.data(), view, 0, OC);
    for (int64_t N : {1, 2, 3, 4, 5, 9, 20}) {
      const std::vector<float> x = normal_values(N * C, 100 + N);
      std::vector<int8_t> xq(static_cast<size_t>(N * C));
      std::vector<float> xd(static_cast<size_t>(N * nb));
      for (int64_t n = 0; n < N; ++n)
        quantize_row_q8(x.data() + n * C, xq.data() + n * C, xd.data() + n * nb, C);
      std::vector<float> ref(static_cast<size_t>(N * OC));
      q4_dot_rows(Q4Kernel::kScalar, ref.data(), OC, q.data(), OC, C, xq.data(), xd.data(), N);
      std::vector<float> avx2_result;
      for (QuantKernel kernel : {QuantKernel::kAvx2, QuantKernel::kAvx512}) {
        if (!quant_kernel_available(kernel, DType::kQ4_0)) {
          std::printf("q4 kernel %s: not on this CPU, skipped\n", quant_kernel_name(kernel));
          continue;
        }
        set_quant_kernel(kernel);
        std::vector<float> y(static_cast<size_t>(N * OC)), ys(y.size());
        matmul(y.data(), x.data(), N, view);
        matmul_serial(ys.data(), x.data(), N, view);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t r = 0; r < OC; ++r) {
            double exact = 0, magnitude = 0, rounding = 0;
            for (int64_t c = 0; c < C; ++c) {
              exact += double(wd[r * C + c]) * x[n * C + c];
              magnitude += std::fabs(double(wd[r * C + c]) * x[n * C + c]);
              rounding += 0.5 * xd[n * nb + c / 32] * std::fabs(double(wd[r * C + c]));
            }
            const size_t i = static_cast<size_t>(n * OC + r);
            EXPECT_NEAR(y[i], ref[i], 1e-5 * magnitude + 1e-6) << quant_kernel_name(kernel) << " N=" << N;
            EXPECT_EQ(y[i], ys[i]) << quant_kernel_name(kernel) << " N=" << N;
            EXPECT_NEAR(y[i], exact, 1.0001 * rounding + 1e-5 * magnitude) << quant_kernel_name(kernel);
          }
        if (N == 1) {
          std::vector<float> yv(static_cast<size_t>(OC));
          matvec(yv.data(), view, x.data());
          for (int64_t r = 0; r < OC; ++r) EXPECT_EQ(yv[r], y[r]);
        }
        // Same integer sums and the same fp32 order: VNNI gives AVX2's results bit for bit.
        if (kernel == QuantKernel::kAvx2) avx2_result = y;
        if (kernel == QuantKernel::kAvx512) {
          EXPECT_EQ(y, avx2_result);
        }
      }
      // The kernels called directly, beside the dispatch: AVX2 and (where the CPU has it) VNNI give the same.
      std::vector<float> direct(ref.size());
      q4_dot_rows(Q4Kernel::kAvx2, direct.data(), OC, q.data(), OC, C, xq.data(), xd.data(), N);
      EXPECT_EQ(direct, avx2_result);
    }
  }
  set_quant_kernel(chosen);
}

}  // namespace
}  // namespace emo
