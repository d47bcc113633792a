// THE safetensors reader and writer of emo (format: https://github.com/huggingface/safetensors).
// File = 8-byte little-endian header length N, N bytes of JSON header, data section. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section) and
// may hold
// "__metadata__": {string: string}.
//
// Reading memory-maps the file read-only and validates the whole header before anything is used: a truncated
// or corrupt file is an emo::Error naming the file, the tensor and the problem, never a crash. Tensor bytes
// stay in the mapping (zero-copy access through TensorInfo::data) until converted by read_fp32.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace emo {

using SafetensorsMetadata = std::map<std::string, std::string>;

// 4-bit weights (DType::kQ4_0, llama.cpp's Q4_0 blocks) have no safetensors dtype: a Q4_0 [rows, cols]
// tensor is stored as U8 [rows, cols / 32 * 18], its block bytes, in a file whose __metadata__ holds this key
// (the writer adds it). Reading such a file gives every U8 tensor back as Q4_0 [rows, cols] (TensorInfo
// shape = the weights', nbytes = the blocks'), so a checkpoint's shapes read the same in every format.
constexpr const char* kQ4MetadataKey = "emo_q4_0";

struct MappedFile;  // a read-only memory mapping (safetensors.cpp)

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  // The tensor's bytes in the mapped file, in `dtype`, row-major. Valid while any copy of the SafetensorsFile
  // (or of a SafetensorsCheckpoint holding it) lives. Aligned only as the file aligns it: files emo writes
  // keep every tensor at a multiple of 8 bytes from a page boundary; use memcpy-safe access for foreign
  // files.
  const void* data = nullptr;
  size_t nbytes = 0;
  uint64_t file_offset = 0;  // where the bytes start in the file (for messages and direct I/O)

  int64_t numel() const { return emo::numel(shape); }
};

class SafetensorsFile {
 public:
  // Maps and validates `path`; throws "[safetensors] <path>: <position>: <problem>".
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names, sorted.
  std::vector<std::string> names() const;
  size_t size() const { return tensors_.size(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws "[safetensors] <path>: no tensor '<name>'" when absent.
  const TensorInfo& info(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const SafetensorsMetadata& metadata() const { return metadata_; }

  // The tensor converted to fp32 (F32, BF16, F16 and Q4_0, dequantised, are accepted; other dtypes throw).
  Tensor read_fp32(const std::string& name) const;
  // Same into caller memory; n must equal the tensor's element count.
  void read_fp32_into(const std::string& name, float* dst, int64_t n) const;

 private:
  std::shared_ptr<const MappedFile> mapping_;  // shared by copies: tensor pointers live as long as any copy
  std::string path_;
  std::map<std::string, TensorInfo> tensors_;
  SafetensorsMetadata metadata_;
};

// The weights of a model directory, Hugging Face layout: `model.safetensors`, or the shards listed in the
// "weight_map" of `model.safetensors.index.json`. Tensor lookup is uniform over the shards.
class SafetensorsCheckpoint {
 public:
  static constexpr const char* kSingleFile = "model.safetensors";
  static constexpr const char* kIndexFile = "model.safetensors.index.json";

  // `path` is a model directory or a single .safetensors file. Throws when neither file exists, when the
  // index is malformed, or when a tensor of the weight map is missing from its shard.
  static SafetensorsCheckpoint open(const std::string& path);
  // True when `dir` holds model.safetensors or model.safetensors.index.json.
  static bool exists(const std::string& dir);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
  // Throws "[safetensors] <dir>: no tensor '<name>'" when absent.
  const TensorInfo& info(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // __metadata__ of the single file, or of the first shard.
  const SafetensorsMetadata& metadata() const;

  Tensor read_fp32(const std::string& name) const;
  void read_fp32_into(const std::string& name, float* dst, int64_t n) const;

 private:
  std::string path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> shard_of_;  // tensor name -> index in files_
};

// One tensor to write: fp32 values converted to `dtype` on the way out (kF32, kBF16 or kF16), or, with
// raw_bytes set, dtype_bytes(dtype, numel) bytes already in `dtype` written unchanged (any dtype; kQ4_0 as
// U8 blocks, see kQ4MetadataKey).
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const float* data = nullptr;
  const void* raw_bytes = nullptr;

  SafetensorsEntry() = default;
  SafetensorsEntry(std::string name, const Tensor* tensor, DType dtype = DType::kF32);
  SafetensorsEntry(std::string name, const Tensor& tensor, DType dtype = DType::kF32);
  SafetensorsEntry(std::string name, DType dtype, Shape shape, const float* data);
  static SafetensorsEntry raw(std::string name, DType dtype, Shape shape, const void* bytes);

  size_t nbytes() const {
    return static_cast<size_t>(dtype_bytes(dtype, static_cast<uint64_t>(emo::numel(shape))));
  }
};

// Writes one safetensors file atomically. Tensors are laid out as the safetensors library does (by dtype
// alignment, larger first, then by name), the header is padded with spaces to a multiple of 8 bytes.
// Throws on duplicate or empty names, "__metadata__" as a name, or an fp32 conversion to a non-float dtype.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const SafetensorsMetadata& metadata = {});

// Writes the tensors into `dir` in the Hugging Face layout: model.safetensors when they fit in one shard of
// max_shard_bytes, else model-00001-of-0000M.safetensors ... (tensors taken in the given order, a new shard
// started when the next tensor would overflow; a tensor larger than the limit gets a shard of its own) plus
// model.safetensors.index.json {"metadata": {"total_size": bytes}, "weight_map": {name: file}}. Each file is
// written atomically, the index last; then weight files of an earlier save that this one did not write
// (model.safetensors, the index, model-NNNNN-of-NNNNN.safetensors) are removed, other files are left alone.
// Returns the file names written (index included).
std::vector<std::string> write_safetensors_sharded(const std::string& dir,
                                                   const std::vector<SafetensorsEntry>& tensors,
                                                   int64_t max_shard_bytes,
                                                   const SafetensorsMetadata& metadata = {});

}  // namespace emo
