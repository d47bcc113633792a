#include "train/row_source.h"

#include "core/error.h"
#include "data/dataset.h"
#include "data/packer.h"

namespace emo {

SyntheticSource::SyntheticSource(RowSourceOptions options, int64_t topics)
    : options_(std::move(options)), topics_(topics), rng_(options_.seed, 0x5eed) {
  EMO_CHECK(options_.vocab >= 2 * topics + 1, "synthetic", "vocabulary of ", options_.vocab,
            " is too small for ", topics, " topics");
  EMO_CHECK(options_.global_batch_rows % options_.world_size == 0, "synthetic", "global batch of ",
            options_.global_batch_rows, " rows does not split over ", options_.world_size, " ranks");
}

int32_t SyntheticSource::next_token() {
  if (remaining_ == 0) {  // end of document: EOS, then draw the next one
    topic_ = rng_.uniform_int(0, topics_ - 1);
    remaining_ = rng_.uniform_int(4, options_.row_length);
    previous_ = -1;
    return options_.eos_id;
  }
  --remaining_;
  // Topic t owns the slice [t * width, (t + 1) * width) of the vocabulary without EOS.
  const int64_t width = (options_.vocab - 1) / topics_, base = topic_ * width;
  int64_t offset;
  if (previous_ >= 0 && rng_.uniform() < 0.75)
    offset = ((previous_ - base) * 5 + 3) % width;  // the successor rule
  else
    offset = rng_.uniform_int(0, width - 1);
  previous_ = static_cast<int32_t>(base + offset);
  return previous_ >= options_.eos_id ? previous_ + 1 : previous_;  // skip the EOS id wherever it lies
}

bool SyntheticSource::next(Batch& rows) {
  const int64_t T = options_.row_length, B = options_.global_batch_rows / options_.world_size;
  const int64_t first = options_.rank * B;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  if (lookahead_ < 0) lookahead_ = next_token();
  // Every rank generates the whole global batch and keeps its rows: the stream position stays identical.
  for (int64_t r = 0; r < options_.global_batch_rows; ++r)
    for (int64_t t = 0; t < T; ++t) {
      bool mine = r >= first && r < first + B;
      if (mine) tokens[(r - first) * T + t] = lookahead_;
      lookahead_ = next_token();
      if (mine) targets[(r - first) * T + t] = lookahead_;
    }
  rows = Batch::from_tokens(B, T, std::move(tokens), std::move(targets), options_.eos_id);
  return true;
}

nlohmann::json SyntheticSource::state() const {
  return {{"kind", "synthetic"},     {"rng_state", rng_.state()}, {"rng_inc", rng_.inc()},  {"topic", topic_},
          {"remaining", remaining_}, {"previous", previous_},     {"lookahead", lookahead_}};
}

void SyntheticSource::restore(const nlohmann::json& s) {
  try {
    EMO_CHECK(s.at("kind") == "synthetic", "synthetic", "cannot restore a data position of kind ",
              s.at("kind"));
    rng_.restore(s.at("rng_state").get<uint64_t>(), s.at("rng_inc").get<uint64_t>());
    topic_ = s.at("topic").get<int64_t>();
    remaining_ = s.at("remaining").get<int64_t>();
    previous_ = s.at("previous").get<int32_t>();
    lookahead_ = s.at("lookahead").get<int32_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("synthetic", cat("bad data position in the training state: ", e.what()));
  }
}

namespace {

// The data packer over a dataset file.
class DatasetSource : public RowSource {
 public:
  DatasetSource(const std::string& path, const RowSourceOptions& options)
      : dataset_(data::Dataset::open(path)), packer_(dataset_, packer_options(dataset_, path, options)) {}

  bool next(Batch& rows) override {
    data::PackedBatch packed;
    if (!packer_.next(packed)) return false;
    rows.B = packed.B;
    rows.T = packed.T;
    rows.tokens = std::move(packed.tokens);
    rows.targets = std::move(packed.targets);
    rows.doc_ids = std::move(packed.doc_ids);
    rows.attention_doc_ids = std::move(packed.attention_doc_ids);
    return true;
  }
  nlohmann::json state() const override {
    nlohmann::json j = packer_.state().to_json();
    j["kind"] = "dataset";
    return j;
  }
  void restore(const nlohmann::json& state) override {
    nlohmann::json j = state;
    j.erase("kind");
    packer_.restore(data::PackerState::from_json(j));
  }

 private:
  static data::PackerOptions packer_options(const data::Dataset& dataset, const std::string& path,
                                            const RowSourceOptions& o) {
    data::PackerOptions p;
    p.seq_len = o.row_length;
    p.global_batch_rows = o.global_batch_rows;
    p.rank = o.rank;
    p.world_size = o.world_size;
    p.seed = o.seed;
    p.shuffle = !o.single_pass;
    p.single_pass = o.single_pass;
    p.eos_id = o.eos_id;
    if (!o.domain.empty()) {
      p.domain = dataset.domain_index(o.domain);
      if (p.domain < 0) fail_file("data", path, cat("no domain '", o.domain, "' in this dataset"));
    }
    EMO_CHECK(o.vocab == 0 || dataset.vocab_size() <= o.vocab, "data", path, ": token ids up to ",
              dataset.vocab_size(), " exceed the model's vocabulary of ", o.vocab);
    return p;
  }

  data::Dataset dataset_;
  data::Packer packer_;
};

}  // namespace

std::unique_ptr<RowSource> make_row_source(const std::string& spec, const RowSourceOptions& options) {
  if (spec == "synthetic") return std::make_unique<SyntheticSource>(options);
  if (spec.rfind("synthetic:", 0) == 0) {
    RowSourceOptions o = options;
    o.seed = std::stoull(spec.substr(10));
    return std::make_unique<SyntheticSource>(o);
  }
  size_t hash = spec.rfind('#');
  if (hash == std::string::npos) return std::make_unique<DatasetSource>(spec, options);
  RowSourceOptions o = options;
  o.domain = spec.substr(hash + 1);
  return std::make_unique<DatasetSource>(spec.substr(0, hash), o);
}

std::map<std::string, std::string> per_domain_sources(const std::string& dataset_path) {
  data::Dataset dataset = data::Dataset::open(dataset_path);
  std::vector<bool> has_text(dataset.domain_names().size(), false);
  for (int64_t d = 0; d < dataset.num_documents(); ++d)
    if (dataset.document_length(d) > 0) has_text[dataset.domain_of(d)] = true;
  std::map<std::string, std::string> out;
  for (size_t i = 0; i < has_text.size(); ++i)
    if (has_text[i]) out[dataset.domain_names()[i]] = dataset_path + "#" + dataset.domain_names()[i];
  return out;
}

int64_t row_source_vocab(const std::string& spec) {
  if (spec.rfind("synthetic", 0) == 0) return 0;
  return data::Dataset::open(spec.substr(0, spec.rfind('#'))).vocab_size();
}

}  // namespace emo
