#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/mapped_guard.h"
#include "io/output_dir.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kOp = "safetensors";
// The safetensors library refuses headers above 100 MB; a larger length is a corrupt file, not a big model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void append_le64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

bool is_float_dtype(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}

// The value of kQ4MetadataKey: what a reader without emo needs to know to use the bytes.
constexpr const char* kQ4Layout =
    "U8 [rows, cols / 32 * 18] tensors are Q4_0 [rows, cols]: llama.cpp blocks of 32 weights, an fp16 scale "
    "d "
    "then 16 bytes, byte j = element j (low nibble) and j + 16 (high); weight = (nibble - 8) * d";

}  // namespace

// ------------------------------------------------------------------------------------------------ reading

struct MappedFile {
  const unsigned char* bytes = nullptr;
  size_t size = 0;
  ~MappedFile() {
    if (bytes) {
      unregister_mapped_file(bytes);
      ::munmap(const_cast<unsigned char*>(bytes), size);
    }
  }
};

namespace {

// Parses one tensor entry of the header into `info` (data pointer not yet set); throws naming the tensor.
void parse_tensor_entry(const std::string& path, const std::string& name, const nlohmann::json& entry,
                        uint64_t data_size, TensorInfo& info, uint64_t& begin, uint64_t& end) {
  const std::string where = cat("tensor '", name, "'");
  auto bad = [&](const std::string& problem) { fail_at(kOp, path, where, problem); };
  if (!entry.is_object()) bad("entry is " + json_kind(entry) + ", expected an object");
  if (!entry.contains("dtype") || !entry["dtype"].is_string()) bad("no string 'dtype'");
  const std::string dtype = entry["dtype"].get<std::string>();
  try {
    info.dtype = dtype_from_name(dtype);
  } catch (const Error&) {
    bad(cat("unknown or unsupported dtype '", dtype, "'"));
  }
  if (!entry.contains("shape") || !entry["shape"].is_array()) bad("no array 'shape'");
  uint64_t count = 1;
  for (const auto& dim : entry["shape"]) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0)
      bad("shape " + entry["shape"].dump() + " is not a list of non-negative integers");
    uint64_t d = dim.get<uint64_t>();
    if (d != 0 && count > std::numeric_limits<uint64_t>::max() / 8 / d)
      bad("shape " + entry["shape"].dump() + " overflows");
    count *= d;
    info.shape.push_back(static_cast<int64_t>(d));
  }
  const auto& offsets = entry.contains("data_offsets") ? entry["data_offsets"] : nlohmann::json();
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    bad("'data_offsets' must be two non-negative integers [begin, end]");
  begin = offsets[0].get<uint64_t>();
  end = offsets[1].get<uint64_t>();
  if (begin > end) bad(cat("data_offsets [", begin, ", ", end, "] end before they begin"));
  if (end > data_size)
    bad(cat("data_offsets [", begin, ", ", end, "] run past the data section of ", data_size,
            " bytes (file truncated?)"));
  const uint64_t expected = count * dtype_size(info.dtype);
  if (end - begin != expected)
    bad(cat("data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes, but ", dtype, " ",
            shape_str(info.shape), " needs ", expected));
  info.name = name;
  info.nbytes = static_cast<size_t>(expected);
}

// In a file marked with kQ4MetadataKey, U8 [rows, bytes] tensors are the blocks of Q4_0 [rows, cols].
void read_q4_tensors(const std::string& path, std::map<std::string, TensorInfo>& tensors) {
  for (auto& [name, info] : tensors) {
    if (info.dtype != DType::kU8) continue;
    if (info.shape.empty() || info.shape.back() % kQ4BlockBytes != 0)
      fail_at(kOp, path, cat("tensor '", name, "'"),
              cat("U8 ", shape_str(info.shape), " in a file of Q4_0 blocks (__metadata__ '", kQ4MetadataKey,
                  "'): the last dimension must be whole ", kQ4BlockBytes, "-byte blocks"));
    info.dtype = DType::kQ4_0;
    info.shape.back() = info.shape.back() / kQ4BlockBytes * kQ4BlockWeights;
  }
}

SafetensorsMetadata parse_metadata(const std::string& path, const nlohmann::json& j) {
  if (!j.is_object()) fail_at(kOp, path, "__metadata__", "is " + json_kind(j) + ", expected an object");
  SafetensorsMetadata metadata;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string())
      fail_at(kOp, path, "__metadata__",
              cat("value of '", key, "' is ", json_kind(value), ", expected a string"));
    metadata[key] = value.get<std::string>();
  }
  return metadata;
}

// The format requires the tensors to tile the data section exactly: no overlap, no hole, nothing after.
void check_tiling(const std::string& path, std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans,
                  uint64_t data_size) {
  std::sort(spans.begin(), spans.end());
  uint64_t covered = 0;
  std::string previous;
  for (const auto& [begin, end, name] : spans) {
    if (begin < covered)
      fail_at(kOp, path, cat("tensor '", name, "'"),
              cat("data_offsets [", begin, ", ", end, "] overlap tensor '", previous, "' (which ends at ",
                  covered, ")"));
    if (begin > covered)
      fail_at(kOp, path, cat("tensor '", name, "'"),
              cat("data_offsets begin at ", begin, ", leaving a hole after byte ", covered,
                  " of the data section"));
    covered = end;
    previous = name;
  }
  if (covered != data_size)
    fail_at(kOp, path, cat("byte ", covered),
            cat("the data section has ", data_size - covered, " bytes that no tensor claims"));
}

std::shared_ptr<const MappedFile> map_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_file(kOp, path, cat("cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail_file(kOp, path, "not a regular file");
  }
  auto mapping = std::make_shared<MappedFile>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    void* p = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string reason = std::strerror(errno);
      ::close(fd);
      fail_file(kOp, path, "mmap failed: " + reason);
    }
    mapping->bytes = static_cast<const unsigned char*>(p);
    register_mapped_file(p, mapping->size, path,
                         kOp);  // a truncation under us: an error naming it, not SIGBUS
    // No read-around while the header is parsed: its page faults would otherwise read the first megabytes of
    // tensor data into memory (measured: 2.5 MB of unused experts' int8 scales for a 12.5% run). Reset to
    // the default policy once the header is read (SafetensorsFile::open).
    ::madvise(p, mapping->size, MADV_RANDOM);
  }
  ::close(fd);  // the mapping keeps the file alive
  return mapping;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = map_file(path);
  const unsigned char* bytes = file.mapping_->bytes;
  const uint64_t file_size = file.mapping_->size;
  if (file_size < 8)
    fail_at(kOp, path, "byte 0",
            cat("the file is ", file_size, " bytes, too short for the 8-byte header length"));
  const uint64_t header_size = read_le64(bytes);
  if (header_size > kMaxHeaderBytes)
    fail_at(kOp, path, "byte 0",
            cat("header length ", header_size, " exceeds the 100 MB limit (not a safetensors file?)"));
  if (header_size > file_size - 8)
    fail_at(kOp, path, "byte 0",
            cat("header length ", header_size, " runs past the file end (file is ", file_size,
                " bytes; truncated?)"));
  const uint64_t data_start = 8 + header_size, data_size = file_size - data_start;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + data_start);
  } catch (const nlohmann::json::parse_error& e) {
    fail_at(kOp, path, cat("header byte ", 8 + (e.byte > 0 ? e.byte - 1 : 0)), cat("bad JSON: ", e.what()));
  } catch (const nlohmann::json::out_of_range& e) {  // a number past double's range
    fail_at(kOp, path, "header", cat("bad JSON: ", e.what()));
  }
  if (!header.is_object())
    fail_at(kOp, path, "header", "is " + json_kind(header) + ", expected a JSON object");

  ::madvise(const_cast<unsigned char*>(bytes), file_size, MADV_NORMAL);

  std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      file.metadata_ = parse_metadata(path, entry);
      continue;
    }
    TensorInfo info;
    uint64_t begin = 0, end = 0;
    parse_tensor_entry(path, name, entry, data_size, info, begin, end);
    info.file_offset = data_start + begin;
    info.data = bytes + data_start + begin;
    spans.emplace_back(begin, end, name);
    file.tensors_.emplace(name, std::move(info));
  }
  check_tiling(path, std::move(spans), data_size);
  if (file.metadata_.count(kQ4MetadataKey)) read_q4_tensors(path, file.tensors_);
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail_file(kOp, path_, cat("no tensor '", name, "'"));
  return it->second;
}

Tensor SafetensorsFile::read_fp32(const std::string& name) const {
  const TensorInfo& t = info(name);
  Tensor out(t.shape);
  read_fp32_into(name, out.data(), out.size());
  return out;
}

void SafetensorsFile::read_fp32_into(const std::string& name, float* dst, int64_t n) const {
  const TensorInfo& t = info(name);
  if (!is_float_dtype(t.dtype) && t.dtype != DType::kQ4_0)
    fail_at(kOp, path_, cat("tensor '", name, "'"),
            cat("dtype ", dtype_name(t.dtype), " is not a float type"));
  if (n != t.numel())
    fail_at(kOp, path_, cat("tensor '", name, "'"),
            cat("has ", t.numel(), " elements ", shape_str(t.shape), ", the destination holds ", n));
  // Converted in units of one element (a Q4_0 block of 32), chunks of about 1M elements: large enough to
  // amortise the pool, small enough to share a 100M-element tensor.
  const int64_t unit = t.dtype == DType::kQ4_0 ? kQ4BlockWeights : 1;
  const size_t unit_bytes = static_cast<size_t>(dtype_bytes(t.dtype, static_cast<uint64_t>(unit)));
  const unsigned char* src = static_cast<const unsigned char*>(t.data);
  // The Q4_0 converter reads bytes; the others need element alignment.
  const bool aligned = t.dtype == DType::kQ4_0 || reinterpret_cast<uintptr_t>(src) % unit_bytes == 0;
  parallel_for(n / unit, (1 << 20) / unit, [&](int64_t begin, int64_t end) {
    const unsigned char* from = src + static_cast<size_t>(begin) * unit_bytes;
    const size_t count = static_cast<size_t>((end - begin) * unit);
    float* to = dst + begin * unit;
    if (aligned) return convert_to_f32(t.dtype, from, to, count);
    // A foreign file may start the data section at any byte (unpadded header): the converters need element
    // alignment, so copy through an aligned buffer.
    const size_t bytes = static_cast<size_t>(end - begin) * unit_bytes;
    std::vector<uint64_t> buffer((bytes + 7) / 8);
    std::memcpy(buffer.data(), from, bytes);
    convert_to_f32(t.dtype, buffer.data(), to, count);
  });
}

// ------------------------------------------------------------------------------------------------ checkpoint

bool SafetensorsCheckpoint::exists(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / kSingleFile) || fs::is_regular_file(fs::path(dir) / kIndexFile);
}

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path) {
  SafetensorsCheckpoint ckpt;
  ckpt.path_ = path;
  const fs::path dir(path);
  auto add_whole_file = [&](const std::string& file_path) {
    ckpt.files_.push_back(SafetensorsFile::open(file_path));
    for (const auto& name : ckpt.files_.back().names()) ckpt.shard_of_[name] = 0;
  };
  if (fs::is_regular_file(dir)) {
    add_whole_file(path);
    return ckpt;
  }
  if (!fs::is_directory(dir)) fail_file(kOp, path, "no such directory");
  refuse_unfinished_output(path, kOp);
  if (fs::is_regular_file(dir / kSingleFile)) {
    add_whole_file((dir / kSingleFile).string());
    return ckpt;
  }
  const std::string index_path = (dir / kIndexFile).string();
  if (!fs::is_regular_file(index_path))
    fail_file(kOp, path, cat("holds neither ", kSingleFile, " nor ", kIndexFile));

  const nlohmann::json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail_file(kOp, index_path, "no object 'weight_map'");
  std::map<std::string, size_t> file_number;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      fail_file(kOp, index_path,
                cat("weight_map['", name, "'] is ", json_kind(shard), ", expected a file name"));
    const std::string shard_name = shard.get<std::string>();
    // A shard is a file of this directory: an absolute path or a '..' would read outside the model.
    const fs::path shard_path(shard_name);
    if (shard_name.empty() || shard_name == "." || shard_name == ".." || shard_path.is_absolute() ||
        shard_path.has_root_name() || shard_path.filename() != shard_path)
      fail_file(kOp, index_path,
                cat("weight_map['", name, "'] is '", shard_name,
                    "': a shard must be a file name of the model directory"));
    auto [it, inserted] = file_number.emplace(shard_name, ckpt.files_.size());
    if (inserted) {
      if (!fs::is_regular_file(dir / shard_name))
        fail_file(kOp, index_path, cat("shard '", shard_name, "' (holding '", name, "') does not exist"));
      ckpt.files_.push_back(SafetensorsFile::open((dir / shard_name).string()));
    }
    if (!ckpt.files_[it->second].contains(name))
      fail_file(kOp, ckpt.files_[it->second].path(),
                cat("no tensor '", name, "' (listed in ", kIndexFile, ")"));
    ckpt.shard_of_[name] = it->second;
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(shard_of_.size());
  for (const auto& [name, shard] : shard_of_) out.push_back(name);
  return out;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) fail_file(kOp, path_, cat("no tensor '", name, "'"));
  return files_[it->second];
}

const TensorInfo& SafetensorsCheckpoint::info(const std::string& name) const {
  return file_of(name).info(name);
}

const SafetensorsMetadata& SafetensorsCheckpoint::metadata() const {
  static const SafetensorsMetadata kEmpty;
  return files_.empty() ? kEmpty : files_.front().metadata();
}

Tensor SafetensorsCheckpoint::read_fp32(const std::string& name) const {
  return file_of(name).read_fp32(name);
}

void SafetensorsCheckpoint::read_fp32_into(const std::string& name, float* dst, int64_t n) const {
  file_of(name).read_fp32_into(name, dst, n);
}

// ------------------------------------------------------------------------------------------------ writing

SafetensorsEntry::SafetensorsEntry(std::string name_, const Tensor* tensor, DType dtype_)
    : name(std::move(name_)), dtype(dtype_), shape(tensor->shape()), data(tensor->data()) {}

SafetensorsEntry::SafetensorsEntry(std::string name_, const Tensor& tensor, DType dtype_)
    : SafetensorsEntry(std::move(name_), &tensor, dtype_) {}

SafetensorsEntry::SafetensorsEntry(std::string name_, DType dtype_, Shape shape_, const float* data_)
    : name(std::move(name_)), dtype(dtype_), shape(std::move(shape_)), data(data_) {}

SafetensorsEntry SafetensorsEntry::raw(std::string name, DType dtype, Shape shape, const void* bytes) {
  SafetensorsEntry e(std::move(name), dtype, std::move(shape), nullptr);
  e.raw_bytes = bytes;
  return e;
}

namespace {

// Order of the safetensors library's Dtype enum (roughly by size); it writes larger dtypes first.
int dtype_rank(DType t) {
  switch (t) {
    case DType::kU8:
    case DType::kQ4_0:  // stored as U8 (kQ4MetadataKey)
      return 0;
    case DType::kI8:
      return 1;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 3;
    case DType::kI32:
      return 4;
    case DType::kF32:
      return 5;
    case DType::kI64:
      return 6;
  }
  return 0;
}

void check_entries(const std::string& path, const std::vector<SafetensorsEntry>& tensors) {
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    const std::string where = cat("tensor '", t.name, "'");
    if (t.name.empty() || t.name == "__metadata__")
      fail_file(kOp, path, cat("invalid tensor name '", t.name, "'"));
    if (!seen.insert(t.name).second) fail_at(kOp, path, where, "written twice");
    for (int64_t d : t.shape)
      if (d < 0) fail_at(kOp, path, where, "negative dimension in " + shape_str(t.shape));
    if (!t.raw_bytes && !is_float_dtype(t.dtype))
      fail_at(kOp, path, where, cat("cannot convert fp32 values to ", dtype_name(t.dtype)));
    if (t.dtype == DType::kQ4_0 && (t.shape.empty() || t.shape.back() % kQ4BlockWeights != 0))
      fail_at(
          kOp, path, where,
          cat("Q4_0 ", shape_str(t.shape), ": the last dimension must be whole blocks of ", kQ4BlockWeights));
    if (!t.raw_bytes && !t.data && t.nbytes() > 0) fail_at(kOp, path, where, "no data");
  }
}

void write_tensor_bytes(AtomicFile& out, const SafetensorsEntry& t) {
  if (t.raw_bytes || t.dtype == DType::kF32) {
    out.write(t.raw_bytes ? t.raw_bytes : static_cast<const void*>(t.data), t.nbytes());
    return;
  }
  // Convert in chunks: a 1 GB fp32 tensor should not need a second full-size buffer.
  constexpr size_t kChunk = 1 << 20;
  const size_t n = static_cast<size_t>(emo::numel(t.shape)), elem = dtype_size(t.dtype);
  std::vector<unsigned char> buffer(std::min(n, kChunk) * elem);
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t count = std::min(kChunk, n - i);
    convert_from_f32(t.dtype, t.data + i, buffer.data(), count);
    out.write(buffer.data(), count * elem);
  }
}

std::string shard_name(size_t index, size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buf;
}

// "model-NNNNN-of-NNNNN.safetensors", the names shard_name gives.
bool is_shard_name(const std::string& name) {
  const std::string pattern = "model-#####-of-#####.safetensors";
  if (name.size() != pattern.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (pattern[i] == '#' ? !std::isdigit(static_cast<unsigned char>(name[i])) : name[i] != pattern[i])
      return false;
  return true;
}

// Weight files of an earlier save in `dir` that the new one did not write: a stale single file would be
// preferred over the new index by readers, a stale index would describe other files, stale shards waste
// space.
void remove_stale_weight_files(const fs::path& dir, const std::vector<std::string>& written) {
  const std::set<std::string> keep(written.begin(), written.end());
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool weights = name == SafetensorsCheckpoint::kSingleFile ||
                         name == SafetensorsCheckpoint::kIndexFile || is_shard_name(name);
    if (weights && !keep.count(name)) stale.push_back(entry.path());
  }
  for (const auto& path : stale) {
    std::error_code ignored;
    fs::remove(path, ignored);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const SafetensorsMetadata& metadata) {
  check_entries(path, tensors);
  std::vector<const SafetensorsEntry*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    if (dtype_rank(a->dtype) != dtype_rank(b->dtype)) return dtype_rank(a->dtype) > dtype_rank(b->dtype);
    return a->name < b->name;
  });

  SafetensorsMetadata file_metadata = metadata;
  const bool q4 = std::any_of(tensors.begin(), tensors.end(),
                              [](const SafetensorsEntry& t) { return t.dtype == DType::kQ4_0; });
  if (q4) file_metadata[kQ4MetadataKey] = kQ4Layout;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file_metadata.empty()) header["__metadata__"] = file_metadata;
  uint64_t offset = 0;
  for (const SafetensorsEntry* t : order) {
    Shape stored = t->shape;  // Q4_0 as U8 bytes of its blocks
    if (t->dtype == DType::kQ4_0) stored.back() = stored.back() / kQ4BlockWeights * kQ4BlockBytes;
    header[t->name] = {{"dtype", t->dtype == DType::kQ4_0 ? "U8" : dtype_name(t->dtype)},
                       {"shape", stored},
                       {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  std::string header_text = header.dump();
  // Padding with spaces keeps the data section 8-byte aligned, as the safetensors library does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string prefix;
  append_le64(prefix, header_text.size());
  prefix += header_text;
  AtomicFile out(path);
  out.write(prefix);
  for (const SafetensorsEntry* t : order) write_tensor_bytes(out, *t);
  out.commit();
}

std::vector<std::string> write_safetensors_sharded(const std::string& dir,
                                                   const std::vector<SafetensorsEntry>& tensors,
                                                   int64_t max_shard_bytes,
                                                   const SafetensorsMetadata& metadata) {
  EMO_CHECK(max_shard_bytes > 0, kOp, dir, ": max shard size must be positive, got ", max_shard_bytes);
  check_entries(dir, tensors);
  fs::create_directories(dir);
  const fs::path root(dir);
  std::vector<std::vector<SafetensorsEntry>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const auto& t : tensors) {
    if (!shards.back().empty() && shard_bytes + t.nbytes() > static_cast<uint64_t>(max_shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(t);
    shard_bytes += t.nbytes();
    total_bytes += t.nbytes();
  }
  if (shards.size() == 1) {
    write_safetensors((root / SafetensorsCheckpoint::kSingleFile).string(), shards[0], metadata);
    remove_stale_weight_files(root, {SafetensorsCheckpoint::kSingleFile});
    return {SafetensorsCheckpoint::kSingleFile};
  }
  std::vector<std::string> written;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = shard_name(i, shards.size());
    write_safetensors((root / name).string(), shards[i], metadata);
    for (const auto& t : shards[i]) weight_map[t.name] = name;
    written.push_back(name);
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  atomic_write_file((root / SafetensorsCheckpoint::kIndexFile).string(), index.dump(2) + "\n");
  written.push_back(SafetensorsCheckpoint::kIndexFile);
  remove_stale_weight_files(root, written);
  return written;
}

}  // namespace emo
