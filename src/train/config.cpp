#include "train/config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <utility>

#include "core/error.h"
#include "core/log.h"
#include "core/machine.h"
#include "io/json_file.h"

namespace emo {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ModelSize, d, layers, heads, kv_heads, experts, top_k,
                                                shared_experts, expert_width, vocab, max_position, rope_theta)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RoutingConfig, mode, pool_min, pool_max, pool_eval,
                                                intra_document_attention)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(LossConfig, output_z, lb, router_z, lb_scope)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(OptimizerConfig, lr, beta1, beta2, eps, weight_decay,
                                                grad_clip)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ScheduleConfig, kind, warmup_steps, final_lr_ratio,
                                                decay_steps, anneal_start_step, anneal_start_lr)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(BatchConfig, micro_batch_rows, global_batch_rows, row_length)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RunConfig, steps, tokens, seed, checkpoint_every, keep_last,
                                                validate_every, validation_rows, log_every)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(DataConfig, train, validation, tokenizer, eos_id)

namespace {

constexpr const char* kOp = "train-config";

// "an integer", ... when `value` cannot stand where the default `known` stands, else "". An integer key takes
// an integral number written as a float (1e3); a float key any number; a null default (optional) anything.
std::string type_expected(const nlohmann::json& value, const nlohmann::json& known) {
  if (known.is_null() || known.is_object()) return "";
  if (known.is_number_integer()) {
    const bool integral =
        value.is_number_integer() ||
        (value.is_number_float() && std::nearbyint(value.get<double>()) == value.get<double>() &&
         std::fabs(value.get<double>()) < 9.2e18);
    return integral ? "" : "an integer";
  }
  if (known.is_number()) return value.is_number() ? "" : "a number";
  if (known.is_boolean()) return value.is_boolean() ? "" : "a boolean";
  if (known.is_string()) return value.is_string() ? "" : "a string";
  if (known.is_array()) return value.is_array() ? "" : "an array";
  return "";
}

// Every key of `given` must exist in `known` (free-form maps such as data.validation excepted), with a value
// of the type of its default: "key 'model.d': expected an integer, found a string".
void check_known_keys(const nlohmann::json& given, const nlohmann::json& known, const std::string& path,
                      const std::string& source) {
  for (auto it = given.begin(); it != given.end(); ++it) {
    std::string key = path.empty() ? it.key() : path + "." + it.key();
    if (!known.contains(it.key())) fail_file(kOp, source, cat("unknown key '", key, "'"));
    const nlohmann::json& default_value = known[it.key()];
    if (it.value().is_null()) continue;  // merge_patch: null restores the default
    if (key == "data.validation") {      // domain -> dataset path
      if (!it.value().is_object()) json_detail::fail_type(source, key, "an object", it.value());
      for (auto domain = it.value().begin(); domain != it.value().end(); ++domain)
        if (!domain.value().is_string())
          json_detail::fail_type(source, key + "." + domain.key(), "a string", domain.value());
      continue;
    }
    if (default_value.is_object() && !it.value().is_object())
      json_detail::fail_type(source, key, "an object", it.value());
    const std::string expected = type_expected(it.value(), default_value);
    if (!expected.empty()) json_detail::fail_type(source, key, expected, it.value());
    if (it.value().is_object() && default_value.is_object())
      check_known_keys(it.value(), default_value, key, source);
  }
}

// Sizes that can never make a model, each problem naming its key: checked when a configuration is read
// (from_json) and again by validate(). model.vocab 0 means "from the tokenizer or dataset", pool bounds 0
// mean the defaults K and E.
void check_shape_sizes(const TrainConfig& c, const std::string& source) {
  auto check = [&](bool ok, const std::string& problem) {
    if (!ok) fail_file(kOp, source, problem);
  };
  using Named = std::initializer_list<std::pair<int64_t, const char*>>;
  const ModelSize& m = c.model;
  for (const auto& [value, key] : Named{{m.d, "model.d"},
                                        {m.layers, "model.layers"},
                                        {m.heads, "model.heads"},
                                        {m.kv_heads, "model.kv_heads"},
                                        {m.expert_width, "model.expert_width"},
                                        {m.max_position, "model.max_position"}})
    check(value > 0, cat(key, " must be positive, got ", value));
  check(m.vocab >= 0, cat("model.vocab must be positive (or 0 for the tokenizer's), got ", m.vocab));
  check(m.d % m.heads == 0, cat("model.d ", m.d, " is not a multiple of model.heads ", m.heads));
  check(m.heads % m.kv_heads == 0,
        cat("model.heads ", m.heads, " is not a multiple of model.kv_heads ", m.kv_heads));
  check((m.d / m.heads) % 2 == 0,
        cat("model.d / model.heads = head dim ", m.d / m.heads, " must be even for RoPE"));
  if (c.routing.mode == "dense") return;
  check(m.experts > 0, cat("model.experts must be positive, got ", m.experts));
  check(m.shared_experts >= 0 && m.shared_experts < m.experts,
        cat("model.shared_experts ", m.shared_experts, " must lie in [0, model.experts ", m.experts, ")"));
  check(m.top_k <= m.experts, cat("model.top_k ", m.top_k, " exceeds model.experts ", m.experts));
  check(m.top_k > m.shared_experts, cat("model.top_k ", m.top_k, " leaves no routed slot beside ",
                                        "model.shared_experts ", m.shared_experts));
  const RoutingConfig& r = c.routing;
  for (const auto& [value, key] : Named{{r.pool_min, "routing.pool_min"}, {r.pool_max, "routing.pool_max"}})
    check(value == 0 || (value >= m.top_k && value <= m.experts),
          cat(key, " ", value, " is outside [model.top_k ", m.top_k, ", model.experts ", m.experts,
              "] (0 = the default bound)"));
  const int64_t pool_min = r.pool_min > 0 ? r.pool_min : m.top_k;
  const int64_t pool_max = r.pool_max > 0 ? r.pool_max : m.experts;
  check(pool_min <= pool_max, cat("routing.pool_min ", pool_min, " exceeds routing.pool_max ", pool_max));
  check(r.pool_eval > 0, cat("routing.pool_eval must be positive, got ", r.pool_eval));
}

// Training holds per parameter its value, gradient and two AdamW moments, all fp32.
constexpr double kTrainingBytesPerParameter = 4 * sizeof(float);

void check_sizes(const TrainConfig& c, const std::string& source) {
  check_shape_sizes(c, source);
  const ModelSize& m = c.model;
  if (m.max_position > ModelConfig::kMaxPositionEmbeddings)
    fail_file(kOp, source,
              cat("model.max_position ", m.max_position, " exceeds the ", ModelConfig::kMaxPositionEmbeddings,
                  " positions emo supports"));
  const double params = c.model_config().parameter_count(), bytes = params * kTrainingBytesPerParameter;
  const int64_t memory = machine_memory_bytes();
  if (bytes > static_cast<double>(memory))
    fail_file(kOp, source,
              cat("model.d ", m.d, ", model.expert_width ", m.expert_width, ", model.layers ", m.layers,
                  ", model.experts ", m.experts, ", model.vocab ", m.vocab, " make ", params, " parameters: ",
                  human_bytes(bytes), " of weights, gradients and AdamW moments (16 bytes each), more than ",
                  "this machine's memory of ", human_bytes(static_cast<double>(memory))));
}

bool one_of(const std::string& value, std::initializer_list<const char*> allowed) {
  for (const char* a : allowed)
    if (value == a) return true;
  return false;
}

}  // namespace

void TrainConfig::validate(const std::string& source) const {
  auto check = [&](bool ok, const std::string& problem) {
    if (!ok) fail_file(kOp, source, problem);
  };
  check(one_of(routing.mode, {"emo", "standard", "dense"}),
        cat("routing.mode '", routing.mode, "' is not emo, standard or dense"));
  check(one_of(loss.lb_scope, {"global", "micro_batch"}),
        cat("loss.lb_scope '", loss.lb_scope, "' is not global or micro_batch"));
  check(one_of(schedule.kind, {"cosine", "wsd", "anneal", "constant"}),
        cat("schedule.kind '", schedule.kind, "' is not cosine, wsd, anneal or constant"));
  check_sizes(*this, source);
  check(batch.micro_batch_rows > 0 && batch.row_length > 1,
        "batch.micro_batch_rows and row_length must be positive");
  check(batch.global_batch_rows % batch.micro_batch_rows == 0,
        cat("batch.global_batch_rows ", batch.global_batch_rows, " is not a multiple of micro_batch_rows ",
            batch.micro_batch_rows));
  check(run.steps > 0 || run.tokens > 0, "set run.steps or run.tokens");
  check(optimizer.lr > 0 && optimizer.beta1 >= 0 && optimizer.beta1 < 1 && optimizer.beta2 >= 0 &&
            optimizer.beta2 < 1 && optimizer.eps > 0,
        "optimizer: lr > 0, betas in [0, 1), eps > 0");
  check(run.keep_last >= 1, "run.keep_last must be at least 1");
}

int64_t TrainConfig::total_steps() const {
  if (run.steps > 0) return run.steps;
  return (run.tokens + tokens_per_step() - 1) / tokens_per_step();
}

ModelConfig TrainConfig::model_config() const {
  ModelConfig c;
  bool dense = routing.mode == "dense";
  c.model_type = dense ? "olmo2_noqknorm_prenorm" : "emo";
  c.vocab_size = model.vocab;
  c.hidden_size = model.d;
  c.intermediate_size = model.expert_width;
  c.num_hidden_layers = model.layers;
  c.num_attention_heads = model.heads;
  c.num_key_value_heads = model.kv_heads;
  c.max_position_embeddings = model.max_position;
  c.rope_theta = model.rope_theta;
  if (data.eos_id >= 0) c.eos_token_id = data.eos_id;
  if (!dense) {
    c.num_experts = model.experts;
    c.num_experts_per_tok = model.top_k;
    c.num_shared_experts = model.shared_experts;
    c.router_aux_loss_coef = loss.lb;
  }
  return c;
}

LossWeights TrainConfig::loss_weights() const {
  LossWeights w;
  w.output_z = loss.output_z;
  w.lb = loss.lb;
  w.router_z = loss.router_z;
  return w;
}

RoutingOptions TrainConfig::routing_options(bool training) const {
  RoutingOptions r;
  r.mode = routing.mode == "emo" ? RoutingMode::kEmoPool : RoutingMode::kStandard;
  r.training = training;
  r.pool_min = routing.pool_min;
  r.pool_max = routing.pool_max;
  r.pool_eval = routing.pool_eval;
  return r;
}

nlohmann::json TrainConfig::to_json() const {
  return nlohmann::json{
      {"model", model},       {"routing", routing}, {"loss", loss}, {"optimizer", optimizer},
      {"schedule", schedule}, {"batch", batch},     {"run", run},   {"data", data}};
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail_file(kOp, source, "the configuration must be a JSON object");
  nlohmann::json merged = TrainConfig{}.to_json();
  check_known_keys(j, merged, "", source);
  merged.merge_patch(j);
  TrainConfig c;
  try {
    merged.at("model").get_to(c.model);
    merged.at("routing").get_to(c.routing);
    merged.at("loss").get_to(c.loss);
    merged.at("optimizer").get_to(c.optimizer);
    merged.at("schedule").get_to(c.schedule);
    merged.at("batch").get_to(c.batch);
    merged.at("run").get_to(c.run);
    merged.at("data").get_to(c.data);
  } catch (const nlohmann::json::exception& e) {
    fail_file(kOp, source, cat("wrong value type: ", e.what()));
  }
  // Impossible sizes are rejected here, at load; the rest of validate() waits for values filled in later.
  check_sizes(c, source);
  return c;
}

TrainConfig TrainConfig::load(const std::string& path) {
  return from_json(read_json_file(path, kOp), path);
}

namespace {

// Keys whose change a resumed run survives: how long it runs and what it writes along the way.
bool safe_to_change_on_resume(const std::string& key) {
  static const char* const kSafe[] = {"run.steps",     "run.tokens",         "run.checkpoint_every",
                                      "run.keep_last", "run.validate_every", "run.validation_rows",
                                      "run.log_every", "data.validation"};
  for (const char* safe : kSafe)
    if (key == safe || key.rfind(std::string(safe) + ".", 0) == 0) return true;
  return false;
}

// "/model/d" (nlohmann's flatten) -> "model.d".
std::string dotted(const std::string& pointer) {
  std::string key = pointer.substr(1);
  for (char& c : key)
    if (c == '/') c = '.';
  return key;
}

}  // namespace

std::vector<std::string> check_resume_changes(const TrainConfig& checkpoint, TrainConfig& now,
                                              const std::string& source) {
  if (now.model.vocab == 0) now.model.vocab = checkpoint.model.vocab;
  if (now.data.eos_id < 0) now.data.eos_id = checkpoint.data.eos_id;
  const nlohmann::json before = checkpoint.to_json().flatten(), after = now.to_json().flatten();
  std::vector<std::string> allowed, refused;
  std::set<std::string> keys;
  for (auto it = before.begin(); it != before.end(); ++it) keys.insert(it.key());
  for (auto it = after.begin(); it != after.end(); ++it) keys.insert(it.key());
  for (const std::string& pointer : keys) {
    const nlohmann::json was = before.value(pointer, nlohmann::json()),
                         is = after.value(pointer, nlohmann::json());
    if (was == is) continue;
    const std::string key = dotted(pointer);
    (safe_to_change_on_resume(key) ? allowed : refused)
        .push_back(cat(key, " ", was.is_null() ? "(none)" : was.dump(), " -> ",
                       is.is_null() ? "(none)" : is.dump()));
  }
  if (!refused.empty()) {
    std::string list;
    for (const std::string& r : refused) list += (list.empty() ? "" : "; ") + r;
    fail_file(
        "train", source,
        cat("--resume would change the run: ", list,
            " (checkpoint -> now). A resumed run keeps its model, data and optimisation; only run.steps, "
            "run.tokens and the checkpoint, validation and log intervals may change. Start a new run "
            "(another --out) for the rest"));
  }
  return allowed;
}

void apply_override(nlohmann::json& config, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    fail(kOp, cat("override '", assignment, "' is not of the form section.key=value"));
  std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  nlohmann::json* node = &config;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool last = dot == std::string::npos;
    bool free_map = path.rfind("data.validation.", 0) == 0 && last;
    if (!node->is_object() || (!node->contains(key) && !free_map))
      fail(kOp, cat("override '", assignment, "': unknown key '", path, "'"));
    if (last) {
      nlohmann::json& target = (*node)[key];
      try {
        if (target.is_boolean()) {
          if (text != "true" && text != "false")
            fail(kOp, cat("override '", assignment, "': expected true or false"));
          target = text == "true";
        } else if (target.is_number_unsigned()) {
          target = std::stoull(text);
        } else if (target.is_number_integer()) {
          target = std::stoll(text);
        } else if (target.is_number_float()) {
          target = std::stod(text);
        } else if (target.is_string() || target.is_null()) {
          target = text;
        } else {
          fail(kOp, cat("override '", assignment, "': '", path, "' is not a single value"));
        }
      } catch (const std::logic_error&) {  // stoll/stod: invalid_argument, out_of_range
        fail(kOp, cat("override '", assignment, "': '", text, "' is not a number"));
      }
      return;
    }
    node = &(*node)[key];
    start = dot + 1;
  }
}

}  // namespace emo
