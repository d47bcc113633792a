#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/ggml_blocks.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

constexpr const char* kOp = "gguf";
constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint32_t kVersion = 3;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

uint64_t padded(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

// ---- writing ----

struct ByteSink {
  std::string bytes;
  template <typename T>
  void put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.append(s);
  }
};

void put_scalar(ByteSink& out, GgufType type, int64_t integer, double real) {
  switch (type) {
    case GgufType::kUint8:
      out.put<uint8_t>(static_cast<uint8_t>(integer));
      return;
    case GgufType::kInt8:
      out.put<int8_t>(static_cast<int8_t>(integer));
      return;
    case GgufType::kUint16:
      out.put<uint16_t>(static_cast<uint16_t>(integer));
      return;
    case GgufType::kInt16:
      out.put<int16_t>(static_cast<int16_t>(integer));
      return;
    case GgufType::kUint32:
      out.put<uint32_t>(static_cast<uint32_t>(integer));
      return;
    case GgufType::kInt32:
      out.put<int32_t>(static_cast<int32_t>(integer));
      return;
    case GgufType::kFloat32:
      out.put<float>(static_cast<float>(real));
      return;
    case GgufType::kBool:
      out.put<uint8_t>(integer != 0 ? 1 : 0);
      return;
    case GgufType::kUint64:
      out.put<uint64_t>(static_cast<uint64_t>(integer));
      return;
    case GgufType::kInt64:
      out.put<int64_t>(integer);
      return;
    case GgufType::kFloat64:
      out.put<double>(real);
      return;
    default:
      fail(kOp, cat("value type ", static_cast<uint32_t>(type), " is not a scalar"));
  }
}

bool is_real(GgufType type) {
  return type == GgufType::kFloat32 || type == GgufType::kFloat64;
}

void put_value(ByteSink& out, const GgufValue& v) {
  out.put<uint32_t>(static_cast<uint32_t>(v.type));
  if (v.type == GgufType::kString) return out.put_string(v.text);
  if (v.type != GgufType::kArray) return put_scalar(out, v.type, v.integer, v.real);
  out.put<uint32_t>(static_cast<uint32_t>(v.element_type));
  out.put<uint64_t>(v.size());
  if (v.element_type == GgufType::kString) {
    for (const auto& s : v.texts) out.put_string(s);
  } else if (is_real(v.element_type)) {
    for (double r : v.reals) put_scalar(out, v.element_type, 0, r);
  } else {
    for (int64_t i : v.integers) put_scalar(out, v.element_type, i, 0);
  }
}

// ---- reading ----

// A bounds-checked cursor over the file's bytes: every read names the byte where it failed.
class Cursor {
 public:
  Cursor(const std::string& path, const std::string& bytes) : path_(path), bytes_(bytes) {}

  size_t position() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  [[noreturn]] void bad(const std::string& problem) const {
    fail_at(kOp, path_, cat("byte ", pos_), problem);
  }

  template <typename T>
  T get(const char* what) {
    if (remaining() < sizeof(T))
      bad(cat("file ends inside ", what, " (", sizeof(T), " bytes needed, ", remaining(), " left)"));
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string get_string(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    if (n > remaining())
      bad(cat(what, " of ", n, " bytes runs past the end of the file (", remaining(), " left)"));
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // A count of items of at least min_bytes each, checked against what is left so that it can size a vector.
  uint64_t get_count(const char* what, uint64_t min_bytes) {
    const uint64_t n = get<uint64_t>(what);
    if (n > remaining() / std::max<uint64_t>(min_bytes, 1))
      bad(cat(what, " ", n, " cannot fit in the ", remaining(), " bytes left"));
    return n;
  }
  void skip_to(size_t pos) { pos_ = pos; }

 private:
  const std::string& path_;
  const std::string& bytes_;
  size_t pos_ = 0;
};

size_t scalar_bytes(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

void get_scalar(Cursor& in, GgufType type, int64_t& integer, double& real) {
  switch (type) {
    case GgufType::kUint8:
      integer = in.get<uint8_t>("a uint8");
      return;
    case GgufType::kInt8:
      integer = in.get<int8_t>("an int8");
      return;
    case GgufType::kUint16:
      integer = in.get<uint16_t>("a uint16");
      return;
    case GgufType::kInt16:
      integer = in.get<int16_t>("an int16");
      return;
    case GgufType::kUint32:
      integer = in.get<uint32_t>("a uint32");
      return;
    case GgufType::kInt32:
      integer = in.get<int32_t>("an int32");
      return;
    case GgufType::kFloat32:
      real = in.get<float>("a float32");
      return;
    case GgufType::kBool: {
      const uint8_t b = in.get<uint8_t>("a bool");
      if (b > 1) in.bad(cat("bool value ", int(b), " is neither 0 nor 1"));
      integer = b;
      return;
    }
    case GgufType::kUint64: {
      const uint64_t u = in.get<uint64_t>("a uint64");
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        in.bad(cat("uint64 ", u, " too large"));
      integer = static_cast<int64_t>(u);
      return;
    }
    case GgufType::kInt64:
      integer = in.get<int64_t>("an int64");
      return;
    case GgufType::kFloat64:
      real = in.get<double>("a float64");
      return;
    default:
      in.bad(cat("unknown value type ", static_cast<uint32_t>(type)));
  }
}

GgufValue get_value(Cursor& in) {
  GgufValue v;
  v.type = static_cast<GgufType>(in.get<uint32_t>("a value type"));
  if (v.type == GgufType::kString) {
    v.text = in.get_string("a string");
  } else if (v.type == GgufType::kArray) {
    v.element_type = static_cast<GgufType>(in.get<uint32_t>("an array's element type"));
    if (v.element_type == GgufType::kArray) in.bad("arrays of arrays are not supported");
    const bool strings = v.element_type == GgufType::kString;
    const size_t element_bytes = strings ? 8 : scalar_bytes(v.element_type);
    if (element_bytes == 0) in.bad(cat("unknown array element type ", static_cast<uint32_t>(v.element_type)));
    const uint64_t n = in.get_count("array length", element_bytes);
    for (uint64_t i = 0; i < n; ++i) {
      if (strings) {
        v.texts.push_back(in.get_string("an array string"));
        continue;
      }
      int64_t integer = 0;
      double real = 0;
      get_scalar(in, v.element_type, integer, real);
      if (is_real(v.element_type))
        v.reals.push_back(real);
      else
        v.integers.push_back(integer);
    }
  } else {
    get_scalar(in, v.type, v.integer, v.real);
  }
  return v;
}

bool known_type(uint32_t t) {
  return t == 0 || t == 1 || t == 2 || t == 6 || t == 7 || t == 8 || t == 12 || t == 13 || t == 14 || t == 30;
}

}  // namespace

// ---- ggml types ----

std::string ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ5_0:
      return "Q5_0";
    case GgmlType::kQ5_1:
      return "Q5_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kQ4_K:
      return "Q4_K";
    case GgmlType::kQ5_K:
      return "Q5_K";
    case GgmlType::kQ6_K:
      return "Q6_K";
    case GgmlType::kBF16:
      return "BF16";
  }
  fail(kOp, cat("unknown ggml type ", static_cast<uint32_t>(type)));
}

int64_t ggml_block_size(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
      return 32;
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return 256;
    default:
      return 1;
  }
}

int64_t ggml_block_bytes(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return 4;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 2;
    case GgmlType::kQ4_0:
      return kQ4BlockBytes;
    case GgmlType::kQ5_0:
      return 2 + 4 + 16;
    case GgmlType::kQ5_1:
      return 2 + 2 + 4 + 16;
    case GgmlType::kQ8_0:
      return 2 + 32;
    case GgmlType::kQ4_K:
      return 2 + 2 + 12 + 128;
    case GgmlType::kQ5_K:
      return 2 + 2 + 12 + 32 + 128;
    case GgmlType::kQ6_K:
      return 128 + 64 + 16 + 2;
  }
  fail(kOp, cat("unknown ggml type ", static_cast<uint32_t>(type)));
}

int64_t ggml_row_bytes(GgmlType type, int64_t ne0) {
  const int64_t block = ggml_block_size(type);
  EMO_CHECK(ne0 >= 0 && ne0 % block == 0, kOp, ggml_type_name(type), " rows hold whole blocks of ", block,
            " weights; a row of ", ne0, " does not");
  return ne0 / block * ggml_block_bytes(type);
}

void ggml_encode(GgmlType type, const float* w, int64_t n, std::vector<uint8_t>& out) {
  const size_t start = out.size();
  out.resize(start + static_cast<size_t>(ggml_row_bytes(type, n)));
  uint8_t* dst = out.data() + start;
  if (is_ggml_block_type(type)) return encode_ggml_blocks(type, w, n, dst);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, w, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      convert_from_f32(DType::kF16, w, dst, static_cast<size_t>(n));
      return;
    case GgmlType::kBF16:
      convert_from_f32(DType::kBF16, w, dst, static_cast<size_t>(n));
      return;
    case GgmlType::kQ8_0:
      for (int64_t b = 0; b < n / 32; ++b, dst += 34) {
        const float* x = w + b * 32;
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        convert_from_f32(DType::kF16, &d, dst, 1);
        for (int j = 0; j < 32; ++j)
          dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
      }
      return;
    case GgmlType::kQ4_0:
      fail(kOp, "Q4_0 blocks are made by the q4 quantisers (kernels/q4.h), not by ggml_encode");
    default:
      break;
  }
  fail(kOp, cat("unknown ggml type ", static_cast<uint32_t>(type)));
}

void ggml_decode(GgmlType type, const uint8_t* src, int64_t n, float* out) {
  if (is_ggml_block_type(type)) return decode_ggml_blocks(type, src, n, out);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      convert_to_f32(DType::kF16, src, out, static_cast<size_t>(n));
      return;
    case GgmlType::kBF16:
      convert_to_f32(DType::kBF16, src, out, static_cast<size_t>(n));
      return;
    case GgmlType::kQ4_0:
      EMO_CHECK(n % kQ4BlockWeights == 0, kOp, "Q4_0 holds whole blocks of 32 weights, not ", n);
      convert_to_f32(DType::kQ4_0, src, out, static_cast<size_t>(n));
      return;
    case GgmlType::kQ8_0:
      EMO_CHECK(n % 32 == 0, kOp, "Q8_0 holds whole blocks of 32 weights, not ", n);
      for (int64_t b = 0; b < n / 32; ++b, src += 34) {
        float d;
        convert_to_f32(DType::kF16, src, &d, 1);
        for (int j = 0; j < 32; ++j)
          out[b * 32 + j] = d * static_cast<float>(static_cast<int8_t>(src[2 + j]));
      }
      return;
    default:
      break;
  }
  fail(kOp, cat("unknown ggml type ", static_cast<uint32_t>(type)));
}

// ---- values ----

GgufValue GgufValue::u32(uint32_t v) {
  GgufValue x;
  x.type = GgufType::kUint32;
  x.integer = v;
  return x;
}
GgufValue GgufValue::i32(int32_t v) {
  GgufValue x;
  x.type = GgufType::kInt32;
  x.integer = v;
  return x;
}
GgufValue GgufValue::f32(float v) {
  GgufValue x;
  x.type = GgufType::kFloat32;
  x.real = v;
  return x;
}
GgufValue GgufValue::boolean(bool v) {
  GgufValue x;
  x.type = GgufType::kBool;
  x.integer = v ? 1 : 0;
  return x;
}
GgufValue GgufValue::string(std::string v) {
  GgufValue x;
  x.type = GgufType::kString;
  x.text = std::move(v);
  return x;
}
GgufValue GgufValue::strings(std::vector<std::string> v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.element_type = GgufType::kString;
  x.texts = std::move(v);
  return x;
}
GgufValue GgufValue::i32s(std::vector<int32_t> v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.element_type = GgufType::kInt32;
  x.integers.assign(v.begin(), v.end());
  return x;
}
GgufValue GgufValue::f32s(std::vector<float> v) {
  GgufValue x;
  x.type = GgufType::kArray;
  x.element_type = GgufType::kFloat32;
  x.reals.assign(v.begin(), v.end());
  return x;
}

size_t GgufValue::size() const {
  if (type != GgufType::kArray) return 0;
  if (element_type == GgufType::kString) return texts.size();
  return is_real(element_type) ? reals.size() : integers.size();
}

// ---- writer ----

int64_t GgufTensorEntry::nbytes() const {
  int64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
  return ggml_row_bytes(type, dims.empty() ? 1 : dims[0]) * rows;
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : metadata_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(GgufTensorEntry entry) {
  EMO_CHECK(!entry.name.empty(), kOp, "a tensor needs a name");
  for (const auto& t : tensors_)
    EMO_CHECK(t.name != entry.name, kOp, "tensor '", entry.name, "' added twice");
  EMO_CHECK(!entry.dims.empty() && entry.dims.size() <= kMaxDims, kOp, "tensor '", entry.name, "' has ",
            entry.dims.size(), " dims (1 to 4)");
  for (int64_t d : entry.dims) EMO_CHECK(d > 0, kOp, "tensor '", entry.name, "' has a dimension ", d);
  try {
    (void)entry.nbytes();
  } catch (const Error& e) {
    fail(kOp, cat("tensor '", entry.name, "': ", e.what()));
  }
  tensors_.push_back(std::move(entry));
}

void GgufWriter::write(const std::string& path, const std::function<void(size_t, size_t)>& progress) const {
  ByteSink header;
  header.put<uint32_t>(kMagic);
  header.put<uint32_t>(kVersion);
  header.put<uint64_t>(tensors_.size());
  header.put<uint64_t>(metadata_.size());
  for (const auto& [key, value] : metadata_) {
    header.put_string(key);
    put_value(header, value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    header.put_string(t.name);
    header.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) header.put<uint64_t>(static_cast<uint64_t>(d));
    header.put<uint32_t>(static_cast<uint32_t>(t.type));
    header.put<uint64_t>(offset);
    offset = padded(offset + static_cast<uint64_t>(t.nbytes()), kAlignment);
  }
  header.bytes.resize(padded(header.bytes.size(), kAlignment), '\0');

  AtomicFile file(path);
  file.write(header.bytes);
  const std::string zeros(kAlignment, '\0');
  std::vector<uint8_t> data;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    data.clear();
    t.bytes(data);
    if (static_cast<int64_t>(data.size()) != t.nbytes())
      fail_file(kOp, path,
                cat("tensor '", t.name, "' produced ", data.size(), " bytes, its shape and type need ",
                    t.nbytes()));
    file.write(data.data(), data.size());
    file.write(zeros.data(), padded(data.size(), kAlignment) - data.size());
    if (progress) progress(i + 1, tensors_.size());
  }
  file.commit();
}

// ---- reader ----

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string gguf_leading_string(const std::string& path, const std::string& key) {
  std::ifstream stream(path, std::ios::binary);
  std::string head(64 * 1024, '\0');
  stream.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(std::max<std::streamsize>(stream.gcount(), 0)));
  try {
    Cursor in(path, head);
    if (in.get<uint32_t>("the magic") != kMagic) return "";
    in.get<uint32_t>("the version");
    in.get<uint64_t>("tensor count");
    const uint64_t n_metadata = in.get<uint64_t>("metadata count");
    for (uint64_t i = 0; i < n_metadata; ++i) {
      const std::string name = in.get_string("a metadata key");
      const auto type = static_cast<GgufType>(in.get<uint32_t>("a value type"));
      if (type == GgufType::kString) {
        std::string value = in.get_string("a string value");
        if (name == key) return value;
      } else if (scalar_bytes(type) > 0) {
        in.skip_to(in.position() + std::min(scalar_bytes(type), in.remaining()));
      } else {
        return "";  // an array (or an unknown type): the leading entries end here
      }
    }
  } catch (const Error&) {
    // A header cut short by the 64 KB read, or no GGUF file: the key is not among the leading entries.
  }
  return "";
}

GgufFile GgufFile::open(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) fail_file(kOp, path, "cannot open the file");
  auto bytes = std::make_shared<std::string>((std::istreambuf_iterator<char>(stream)),
                                             std::istreambuf_iterator<char>());
  if (stream.bad()) fail_file(kOp, path, "read failed");
  GgufFile f;
  f.path_ = path;
  f.bytes_ = bytes;
  Cursor in(path, *bytes);
  if (in.get<uint32_t>("the magic") != kMagic)
    fail_at(kOp, path, "byte 0", "not a GGUF file (no 'GGUF' magic)");
  f.version_ = in.get<uint32_t>("the version");
  if (f.version_ < 2 || f.version_ > 3) in.bad(cat("version ", f.version_, " is not supported (2 or 3)"));
  // Smallest possible entries: a tensor info is name length 8 + n_dims 4 + one dim 8 + type 4 + offset 8.
  const uint64_t n_tensors = in.get_count("tensor count", 32);
  const uint64_t n_metadata = in.get_count("metadata count", 8 + 4 + 1);
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_metadata; ++i) {
    const size_t at = in.position();
    std::string key = in.get_string("a metadata key");
    if (!keys.insert(key).second)
      fail_at(kOp, path, cat("byte ", at), cat("metadata key '", key, "' repeated"));
    GgufValue value = get_value(in);
    if (key == "general.alignment") {
      if (value.type != GgufType::kUint32 || value.integer == 0 || (value.integer & (value.integer - 1)) != 0)
        fail_at(kOp, path, cat("byte ", at), "general.alignment must be a uint32 power of two");
      f.alignment_ = static_cast<uint64_t>(value.integer);
    }
    f.metadata_.emplace_back(std::move(key), std::move(value));
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = in.get_string("a tensor name");
    if (!names.insert(t.name).second) in.bad(cat("tensor '", t.name, "' repeated"));
    const uint32_t n_dims = in.get<uint32_t>("a tensor's dim count");
    if (n_dims == 0 || n_dims > kMaxDims) in.bad(cat("tensor '", t.name, "' has ", n_dims, " dims (1 to 4)"));
    uint64_t count = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = in.get<uint64_t>("a tensor dim");
      if (dim == 0 || count > (uint64_t{1} << 62) / dim)
        in.bad(cat("tensor '", t.name, "' has a bad dim ", dim));
      count *= dim;
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint32_t type = in.get<uint32_t>("a tensor type");
    if (!known_type(type)) in.bad(cat("tensor '", t.name, "' has ggml type ", type, ", not one emo reads"));
    t.type = static_cast<GgmlType>(type);
    if (t.dims[0] % ggml_block_size(t.type) != 0)
      in.bad(cat("tensor '", t.name, "': rows of ", t.dims[0], " are not whole ", ggml_type_name(t.type),
                 " blocks"));
    t.nbytes = count / static_cast<uint64_t>(ggml_block_size(t.type)) *
               static_cast<uint64_t>(ggml_block_bytes(t.type));
    t.offset = in.get<uint64_t>("a tensor offset");
    if (t.offset % f.alignment_ != 0)
      in.bad(cat("tensor '", t.name, "' offset ", t.offset, " is not a multiple of the alignment ",
                 f.alignment_));
    f.tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = padded(in.position(), f.alignment_);
  for (auto& t : f.tensors_) {
    if (t.offset > bytes->size() || t.nbytes > bytes->size() - data_start ||
        data_start + t.offset > bytes->size() - t.nbytes)
      fail_at(kOp, path, cat("tensor '", t.name, "'"),
              cat("data [", data_start + t.offset, ", +", t.nbytes, ") runs past the end of the file (",
                  bytes->size(), " bytes)"));
    t.data = reinterpret_cast<const uint8_t*>(bytes->data()) + data_start + t.offset;
  }
  return f;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& [k, v] : metadata_)
    if (k == key) return &v;
  return nullptr;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail_file(kOp, path_, cat("no metadata key '", key, "'"));
  return *v;
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  fail_file(kOp, path_, cat("no tensor '", name, "'"));
}

std::vector<float> GgufFile::read_f32(const std::string& name) const {
  const GgufTensorInfo& t = tensor(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  ggml_decode(t.type, t.data, t.numel(), out.data());
  return out;
}

}  // namespace emo
