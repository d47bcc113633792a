// Legend: N = tokens of a chunk, C = width, H/Hkv = query/kv heads, hd = head dim, F = expert width,
// V = vocab, E = experts of a layer, Er = routed, Kr = routed slots, K = all slots, A = assignments.
#include "infer/decoder.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/swiglu.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

constexpr const char* kOp = "generate";
// Tokens whose expert work is gathered at once (bounds the dispatch scratch of a long prompt).
constexpr int64_t kDispatchTokens = 32;
// Below this many bytes of expert weights a single token's experts run on the calling thread (handing them
// out would cost more than their products).
constexpr int64_t kSerialExpertBytes = 16 * 1024;

float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float sum = vec::hsum8(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y[n] += a * x[n]
void axpy(float* y, float a, const float* x, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

// out[hd] = softmax_s(q . k_s * scale) v_s over cached positions s in [0, last]; k, v rows of `stride`.
void attend_one(float* out, const float* q, const float* k, const float* v, int64_t last, int64_t stride,
                int64_t hd, float scale) {
  thread_local std::vector<float> scores;
  scores.resize(static_cast<size_t>(last + 1));
  for (int64_t s = 0; s <= last; ++s) scores[s] = dot(q, k + s * stride, hd) * scale;
  const float max = vec::max_of(scores.data(), last + 1);
  const float sum = vec::exp_shifted_sum(scores.data(), scores.data(), max, last + 1);
  std::fill(out, out + hd, 0.0f);
  for (int64_t s = 0; s <= last; ++s) axpy(out, scores[s] / sum, v + s * stride, hd);
}

void add_into(Tensor& dst, const Tensor& src) {
  float* d = dst.data();
  const float* s = src.data();
  for (int64_t i = 0; i < dst.size(); ++i) d[i] += s[i];
}

}  // namespace

KvCache::KvCache(int64_t layers, int64_t capacity, int64_t width)
    : layers_(layers), capacity_(capacity), width_(width) {
  // new float[] without () leaves the memory untouched: pages become resident only as positions are written.
  const size_t n = static_cast<size_t>(layers * capacity * width);
  k_.reset(new float[n]);
  v_.reset(new float[n]);
}

int64_t KvCache::bytes_used(int64_t length) const {
  return 2 * layers_ * length * width_ * static_cast<int64_t>(sizeof(float));
}

std::vector<MemoryRange> KvCache::memory_ranges() const {
  const int64_t bytes = layers_ * capacity_ * width_ * static_cast<int64_t>(sizeof(float));
  return {{"kv_cache", k_.get(), bytes}, {"kv_cache", v_.get(), bytes}};
}

Decoder::Decoder(InferWeights& weights, int64_t capacity, int64_t slots) : weights_(weights) {
  const ModelConfig& config = weights.config();
  EMO_CHECK(capacity >= 1 && capacity <= config.max_position_embeddings, kOp, "a sequence of ", capacity,
            " positions does not fit the model's context of ", config.max_position_embeddings);
  EMO_CHECK(slots >= 1, kOp, "a decoder of ", slots, " sequences");
  for (int64_t s = 0; s < slots; ++s)
    caches_.push_back(std::make_unique<KvCache>(config.num_hidden_layers, capacity,
                                                config.num_key_value_heads * config.head_dim()));
  lengths_.assign(static_cast<size_t>(slots), 0);
  RoutingOptions standard;
  standard.training = false;
  standard_ = make_routing_policy(standard);
  subset_options_.mode = RoutingMode::kSubset;
  subset_options_.training = false;
  subset_options_.subset.resize(config.num_hidden_layers);
  subset_ = make_routing_policy(subset_options_);
}

void Decoder::check_chunk(const std::vector<int32_t>& tokens, int64_t slot) const {
  const ModelConfig& config = weights_.config();
  const int64_t N = static_cast<int64_t>(tokens.size());
  EMO_CHECK(slot >= 0 && slot < slots(), kOp, "no sequence slot ", slot, " (the decoder holds ", slots(),
            ")");
  const int64_t cached = lengths_[slot];
  EMO_CHECK(N >= 1, kOp, "no tokens to run");
  EMO_CHECK(
      cached + N <= capacity(), kOp, cached, " cached + ", N, " new tokens exceed ",
      capacity() == config.max_position_embeddings ? "the model's context of " : "the sequence capacity of ",
      capacity(), " positions");
  for (int64_t n = 0; n < N; ++n)
    EMO_CHECK(tokens[n] >= 0 && tokens[n] < config.vocab_size, kOp, "token ", tokens[n], " at position ", n,
              " is outside the vocabulary of ", config.vocab_size);
}

const Tensor& Decoder::forward(const std::vector<int32_t>& tokens, bool all_logits) {
  begin(tokens);
  for (int64_t l = 0; l < weights_.config().num_hidden_layers; ++l) {
    attention(l);
    router(l);
    experts(l);
  }
  return finish(all_logits);
}

DecoderPass& Decoder::begin(const std::vector<int32_t>& tokens) {
  return begin_sequences({{0, lengths_[0], 0, static_cast<int64_t>(tokens.size()), nullptr}}, {&tokens});
}

DecoderPass& Decoder::begin_sequences(std::vector<PassSequence> sequences,
                                      const std::vector<const std::vector<int32_t>*>& tokens) {
  for (size_t i = 0; i < sequences.size(); ++i) check_chunk(*tokens[i], sequences[i].slot);
  const int64_t C = weights_.config().hidden_size;
  DecoderPass& p = pass_;
  p.tokens.clear();
  p.positions.clear();
  p.sequence_of.clear();
  for (size_t i = 0; i < sequences.size(); ++i) {
    sequences[i].first = static_cast<int64_t>(p.tokens.size());
    sequences[i].start = lengths_[sequences[i].slot];
    for (size_t t = 0; t < tokens[i]->size(); ++t) {
      p.tokens.push_back((*tokens[i])[t]);
      p.positions.push_back(static_cast<int32_t>(sequences[i].start + static_cast<int64_t>(t)));
      p.sequence_of.push_back(static_cast<int32_t>(i));
    }
  }
  p.sequences = std::move(sequences);
  p.N = static_cast<int64_t>(p.tokens.size());
  p.x.resize({p.N, C});
  for (int64_t n = 0; n < p.N; ++n)
    dequantize_rows(p.x.data() + n * C, weights_.embed(), p.tokens[n], p.tokens[n] + 1);
  return p;
}

const Tensor& Decoder::forward_batch(const std::vector<BatchEntry>& entries) {
  EMO_CHECK(!entries.empty(), kOp, "a batched step of no sequence");
  std::vector<PassSequence> sequences;
  std::vector<const std::vector<int32_t>*> tokens;
  std::vector<uint8_t> seen(static_cast<size_t>(slots()), 0);
  for (const BatchEntry& e : entries) {
    EMO_CHECK(e.slot >= 0 && e.slot < slots() && !seen[e.slot]++, kOp, "sequence slot ", e.slot,
              " is not a slot of the decoder, or appears twice in one step");
    sequences.push_back({e.slot, 0, 0, static_cast<int64_t>(e.tokens.size()), e.kept});
    tokens.push_back(&e.tokens);
  }
  begin_sequences(std::move(sequences), tokens);
  for (int64_t l = 0; l < weights_.config().num_hidden_layers; ++l) {
    attention(l);
    router(l);
    experts(l);
  }
  std::vector<int64_t> rows;
  for (const PassSequence& s : pass_.sequences) rows.push_back(s.first + s.count - 1);
  return logits_of(rows, false);
}

void Decoder::attention(int64_t l) {
  const ModelConfig& config = weights_.config();
  const LayerView& lw = weights_.layer(l);
  DecoderPass& p = pass_;
  const int64_t N = p.N, C = config.hidden_size, H = config.num_attention_heads;
  const int64_t Hkv = config.num_key_value_heads, hd = config.head_dim(), W = Hkv * hd;
  p.normed.resize({N, C});
  p.rstd.resize({N});
  rmsnorm_forward(p.normed.data(), p.rstd.data(), p.x.data(), lw.attn_norm, N, C,
                  static_cast<float>(config.rms_norm_eps));
  p.q.resize({N, H * hd});
  p.k.resize({N, W});
  p.v.resize({N, W});
  matmul_group({p.q.data(), p.k.data(), p.v.data()}, p.normed.data(), N, {lw.q, lw.k, lw.v});
  rope_forward(p.q.data(), p.positions.data(), N, H, weights_.rope());
  rope_forward(p.k.data(), p.positions.data(), N, Hkv, weights_.rope());
  int64_t longest = 0;  // positions the longest sequence attends to
  for (const PassSequence& s : p.sequences) {
    KvCache& cache = *caches_[s.slot];
    std::memcpy(cache.keys(l) + s.start * W, p.k.data() + s.first * W, sizeof(float) * s.count * W);
    std::memcpy(cache.values(l) + s.start * W, p.v.data() + s.first * W, sizeof(float) * s.count * W);
    longest = std::max(longest, s.start + s.count);
  }

  p.attn.resize({N, H * hd});
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t group = H / Hkv;
  // A (token, head) pair costs about 4 * positions * hd flops; chunks of at least ~64k flops (a few
  // microseconds, against 0.1-0.4 us to hand a chunk to a polling worker).
  const int64_t grain = std::max<int64_t>(1, 16384 / (longest * hd));
  parallel_for(N * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / H, h = i % H, kv = (h / group) * hd;
      KvCache& cache = *caches_[p.sequences[p.sequence_of[n]].slot];  // [capacity, W] keys and values
      attend_one(p.attn.data() + n * H * hd + h * hd, p.q.data() + n * H * hd + h * hd, cache.keys(l) + kv,
                 cache.values(l) + kv, p.positions[n], W, hd, scale);
    }
  });
  p.branch.resize({N, C});
  matmul(p.branch.data(), p.attn.data(), N, lw.o);
  add_into(p.x, p.branch);
}

void Decoder::router(int64_t l) {
  const ModelConfig& config = weights_.config();
  const LayerView& lw = weights_.layer(l);
  DecoderPass& p = pass_;
  const int64_t N = p.N, C = config.hidden_size;
  p.normed.resize({N, C});
  rmsnorm_forward(p.normed.data(), p.rstd.data(), p.x.data(), lw.ffn_norm, N, C,
                  static_cast<float>(config.rms_norm_eps));
  if (!config.is_moe()) return;
  const int64_t Er = config.routed_in_layer(l);
  // The routed experts' rows of gate.weight come first; the shared expert's row is never used.
  p.router_logits.resize({N, Er});
  matmul(p.router_logits.data(), p.normed.data(), N, lw.router.row_block(0, Er));
  p.routing.probs.resize({N, Er});
  softmax_forward(p.routing.probs.data(), nullptr, p.router_logits.data(), N, Er);
}

void Decoder::experts(int64_t l) {
  const ModelConfig& config = weights_.config();
  DecoderPass& p = pass_;
  const int64_t N = p.N;
  if (!config.is_moe()) {
    p.slot_expert.assign(N, 0);
    p.slot_weight.assign(N, 1.0f);
    dispatch(l, 1);
    return;
  }
  const int64_t E = config.experts_in_layer(l), shared = config.shared_in_layer(l), Er = E - shared;
  const int64_t Kr = std::min(config.num_experts_per_tok - shared, Er), K = Kr + shared;
  route(l, Kr, K);
  // The shared expert(s) fill the last slots with weight exactly 1.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < shared; ++j) {
      p.slot_expert[n * K + Kr + j] = static_cast<int32_t>(Er + j);
      p.slot_weight[n * K + Kr + j] = 1.0f;
    }
  dispatch(l, K);
}

// Each sequence's tokens are routed within its own kept experts (or the weights' restriction); one sequence
// is routed into pass().routing itself (which selection reads), several one by one.
void Decoder::route(int64_t l, int64_t Kr, int64_t K) {
  const ModelConfig& config = weights_.config();
  DecoderPass& p = pass_;
  const int64_t N = p.N, E = config.experts_in_layer(l), Er = config.routed_in_layer(l);
  p.slot_expert.assign(N * K, -1);
  p.slot_weight.assign(N * K, 0.0f);
  const bool one = p.sequences.size() == 1;
  for (const PassSequence& s : p.sequences) {
    const std::vector<int32_t>* kept = s.kept ? &(*s.kept)[l] : weights_.kept(l);
    if (kept) subset_options_.subset[l] = *kept;
    RoutingContext context{nullptr, &subset_options_, l, E, config.num_experts_per_tok, nullptr};
    LayerRouting& r = one ? p.routing : p.sequence_routing;
    route_forward(r, p.router_logits.data() + s.first * Er, s.count, Er, Kr, config.norm_topk_prob,
                  kept ? *subset_ : *standard_, context);
    for (int64_t n = 0; n < s.count; ++n)
      for (int64_t k = 0; k < Kr; ++k) {
        p.slot_expert[(s.first + n) * K + k] = r.ids[n * Kr + k];
        p.slot_weight[(s.first + n) * K + k] = r.weights[n * Kr + k];
      }
  }
}

// Adds the experts' weighted outputs to the residual stream, the tokens in chunks of kDispatchTokens so the
// scratch of a long prompt stays small (it counts in the resident memory).
void Decoder::dispatch(int64_t l, int64_t K) {
  DecoderPass& p = pass_;
  p.branch.resize({p.N, weights_.config().hidden_size});
  for (int64_t begin = 0; begin < p.N; begin += kDispatchTokens)
    dispatch_chunk(l, K, begin, std::min(p.N, begin + kDispatchTokens));
  add_into(p.x, p.branch);
}

// Tokens [n0, n1): runs every used expert once on its gathered tokens, then adds the weighted outputs to the
// branch in slot order (deterministic, independent of the threads).
void Decoder::dispatch_chunk(int64_t l, int64_t K, int64_t n0, int64_t n1) {
  const ModelConfig& config = weights_.config();
  DecoderPass& p = pass_;
  const int64_t N = n1 - n0, C = config.hidden_size, F = config.intermediate_size;
  const int64_t E = config.is_moe() ? config.experts_in_layer(l) : 1;
  const int32_t* slot_expert = p.slot_expert.data() + n0 * K;  // [N, K]
  const float* slot_weight = p.slot_weight.data() + n0 * K;    // [N, K]
  p.offsets.assign(E + 1, 0);
  for (int64_t i = 0; i < N * K; ++i)
    if (slot_expert[i] >= 0) ++p.offsets[slot_expert[i] + 1];
  for (int64_t e = 0; e < E; ++e) p.offsets[e + 1] += p.offsets[e];
  const int64_t A = p.offsets[E];
  p.order.resize(A);
  std::vector<int32_t> position(N * K, -1);  // [N, K] slot -> sorted position
  {
    std::vector<int64_t> fill(p.offsets.begin(), p.offsets.end() - 1);
    for (int64_t i = 0; i < N * K; ++i) {
      const int32_t e = slot_expert[i];
      if (e < 0) continue;
      position[i] = static_cast<int32_t>(fill[e]);
      p.order[fill[e]++] = static_cast<int32_t>(i);
    }
  }
  std::vector<int32_t> used;  // experts with at least one token, loaded here (not thread-safe)
  for (int64_t e = 0; e < E; ++e)
    if (p.offsets[e + 1] > p.offsets[e]) {
      weights_.load_expert(l, e);
      used.push_back(static_cast<int32_t>(e));
    }
  p.gathered.resize({A, C});
  p.gate.resize({A, F});
  p.up.resize({A, F});
  p.out.resize({A, C});
  for (int64_t a = 0; a < A; ++a)
    std::memcpy(p.gathered.data() + a * C, p.normed.data() + (n0 + p.order[a] / K) * C, sizeof(float) * C);

  auto run_expert = [&](int32_t e, bool serial) {
    const ExpertView& ex = weights_.expert(l, e);
    const int64_t begin = p.offsets[e], n = p.offsets[e + 1] - begin;
    auto product = serial ? matmul_serial : matmul;
    product(p.gate.data() + begin * F, p.gathered.data() + begin * C, n, ex.gate);
    product(p.up.data() + begin * F, p.gathered.data() + begin * C, n, ex.up);
    swiglu_forward(p.gate.data() + begin * F, p.gate.data() + begin * F, p.up.data() + begin * F, n * F);
    product(p.out.data() + begin * C, p.gate.data() + begin * F, n, ex.down);
  };
  // Enough experts: one expert per task (the lesson of docs/machine.md); else split each expert's rows.
  int64_t work_bytes = 0;
  for (int32_t e : used) work_bytes += weights_.expert(l, e).gate.nbytes() * 3;
  if (N == 1 && work_bytes < kSerialExpertBytes)
    for (int32_t e : used) run_expert(e, true);
  else if (static_cast<int64_t>(used.size()) >= num_threads())
    parallel_tasks(static_cast<int64_t>(used.size()), [&](int64_t i) { run_expert(used[i], true); });
  else
    for (int32_t e : used) run_expert(e, false);

  for (int64_t i = 0; i < N * K; ++i)
    if (position[i] >= 0)
      axpy(p.branch.data() + (n0 + i / K) * C, slot_weight[i], p.out.data() + position[i] * C, C);
}

const Tensor& Decoder::finish(bool all_logits) {
  std::vector<int64_t> rows;
  for (int64_t n = all_logits ? 0 : pass_.N - 1; n < pass_.N; ++n) rows.push_back(n);
  return logits_of(rows, !all_logits);
}

const Tensor& Decoder::logits_of(const std::vector<int64_t>& rows, bool as_vector) {
  const ModelConfig& config = weights_.config();
  DecoderPass& p = pass_;
  const int64_t C = config.hidden_size, V = config.vocab_size, R = static_cast<int64_t>(rows.size());
  // The rows are contiguous but for a batched step: gather them then.
  const float* x = p.x.data() + rows.front() * C;  // [R, C]
  if (rows.back() - rows.front() + 1 != R) {
    p.last_rows.resize({R, C});
    for (int64_t i = 0; i < R; ++i)
      std::memcpy(p.last_rows.data() + i * C, p.x.data() + rows[i] * C, sizeof(float) * C);
    x = p.last_rows.data();
  }
  p.normed.resize({R, C});
  rmsnorm_forward(p.normed.data(), p.rstd.data(), x, weights_.final_norm(), R, C,
                  static_cast<float>(config.rms_norm_eps));
  p.logits.resize(as_vector ? Shape{V} : Shape{R, V});
  matmul(p.logits.data(), p.normed.data(), R, weights_.lm_head());
  for (const PassSequence& s : p.sequences) lengths_[s.slot] += s.count;
  return p.logits;
}

void Decoder::truncate(int64_t length, int64_t slot) {
  EMO_CHECK(slot >= 0 && slot < slots(), "decode", "no sequence slot ", slot);
  EMO_CHECK(length >= 0 && length <= lengths_[slot], "decode", "cannot truncate ", lengths_[slot],
            " positions to ", length);
  lengths_[slot] = length;
}

}  // namespace emo
