// GGUF, the single-file model format of llama.cpp (version 3; https://github.com/ggml-org/ggml, docs/gguf.md
// there). File = "GGUF" magic, uint32 version, uint64 tensor count, uint64 metadata count, the metadata
// (key, value type, value), the tensor infos (name, dims innermost first, ggml type, offset into the data
// section), padding to the alignment (general.alignment, default 32), then the data section, each tensor at a
// multiple of the alignment. All integers little-endian; strings are uint64 length + bytes, not terminated.
//
// The writer streams tensors to a temporary file renamed into place (io/atomic_file). The reader validates
// the whole header against the file size before anything is used, like the safetensors reader: a truncated
// or corrupt file is an emo::Error naming the file, the byte position and the problem.
//
// Tensor data in llama.cpp's block layouts: F32, F16, BF16, Q8_0 (blocks of 32 weights: an fp16 scale d
// and 32 int8, w = d * q) and Q4_0 (blocks of 32: an fp16 scale d and 16 bytes of nibbles, w = d * (q - 8);
// DType::kQ4_0's layout, tensor/dtype.h), and the 5-bit and k-quant layouts Q5_0, Q5_1, Q4_K, Q5_K and Q6_K
// (io/ggml_blocks.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace emo {

// ggml_type numbers as llama.cpp stores them.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30
};

// "F32", "F16", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"; throws "[gguf] unknown ggml
// type N" for others.
std::string ggml_type_name(GgmlType type);
// Weights per block (1 for plain floats) and bytes per block.
int64_t ggml_block_size(GgmlType type);
int64_t ggml_block_bytes(GgmlType type);
// Bytes of a row of ne0 weights; throws when ne0 is not a multiple of the block size.
int64_t ggml_row_bytes(GgmlType type, int64_t ne0);

// n fp32 weights (n a multiple of the type's block size) in `type`'s layout, appended to out. Q8_0 as
// llama.cpp's reference quantiser: d = max|w| / 127 over the block, q = round(w / d), d stored as fp16.
// Q5_0, Q5_1 and the K types by io/ggml_blocks' quantisers. Q4_0 is not encoded here (its quantisers are
// kernels/q4.h's): throws.
void ggml_encode(GgmlType type, const float* w, int64_t n, std::vector<uint8_t>& out);
// The inverse: n weights of `type` at src to fp32.
void ggml_decode(GgmlType type, const uint8_t* src, int64_t n, float* out);

// Metadata value types.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One metadata value: a scalar, a string, or an array of scalars or strings (arrays of arrays are not
// supported). Integers of every width and bools are held in `integer(s)`, floats in `real(s)`.
struct GgufValue {
  GgufType type = GgufType::kUint32;
  GgufType element_type = GgufType::kUint32;  // arrays only
  int64_t integer = 0;
  double real = 0;
  std::string text;
  std::vector<int64_t> integers;
  std::vector<double> reals;
  std::vector<std::string> texts;

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue strings(std::vector<std::string> v);
  static GgufValue i32s(std::vector<int32_t> v);
  static GgufValue f32s(std::vector<float> v);
  // Elements of an array (0 for scalars).
  size_t size() const;
};

// One tensor to write. dims innermost first (ggml's ne0, ne1, ...): a PyTorch [out, in] matrix is {in, out}.
// `bytes` produces the tensor's data in `type`'s layout when the writer reaches it (so a large model is never
// held in memory twice); it must produce exactly ggml_row_bytes(type, dims[0]) * (rows) bytes.
struct GgufTensorEntry {
  std::string name;
  std::vector<int64_t> dims;
  GgmlType type = GgmlType::kF32;
  std::function<void(std::vector<uint8_t>& out)> bytes;

  int64_t nbytes() const;
};

class GgufWriter {
 public:
  static constexpr uint32_t kAlignment = 32;

  // Sets a metadata entry (keys keep the order of their first set).
  void set(const std::string& key, GgufValue value);
  // Throws on a duplicate name, more than 4 dims, or a row not a whole number of blocks.
  void add_tensor(GgufTensorEntry entry);
  // Writes the file atomically; `progress` (may be empty) is called after each tensor with (done, total).
  void write(const std::string& path, const std::function<void(size_t, size_t)>& progress = {}) const;

 private:
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorEntry> tensors_;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // innermost first
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the file's bytes, valid while the GgufFile lives

  int64_t numel() const;
};

// The string value of `key` when it is among the leading metadata entries of the GGUF file at `path` (those
// before the first array, read from the file's first 64 KB); "" when it is absent, the file is no GGUF file
// or cannot be read. Cheap on a file of any size: it tells an earlier output of emo's exporter (which writes
// its key second) from any other file without reading the weights.
std::string gguf_leading_string(const std::string& path, const std::string& key);

// A GGUF file read whole and validated (meant for checking what emo wrote, and for small files).
class GgufFile {
 public:
  // Throws "[gguf] <path>: byte N: <problem>".
  static GgufFile open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  // nullptr when absent.
  const GgufValue* find(const std::string& key) const;
  // Throws "[gguf] <path>: no metadata key 'K'" when absent.
  const GgufValue& get(const std::string& key) const;
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // Throws "[gguf] <path>: no tensor 'NAME'" when absent.
  const GgufTensorInfo& tensor(const std::string& name) const;
  // The tensor's weights in fp32 (any type of GgmlType).
  std::vector<float> read_f32(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const std::string> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = GgufWriter::kAlignment;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace emo
