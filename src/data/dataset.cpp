#include "data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_guard.h"

namespace emo::data {
namespace {

constexpr char kMagic[8] = {'E', 'M', 'O', 'D', 'S', 'E', 'T', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kHeaderBytes = 64;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t num_documents;
  uint64_t num_tokens;
  uint32_t num_domains;
  uint32_t vocab_size;
  uint64_t names_bytes;
  uint32_t payload_crc32;
  uint32_t header_crc32;
  uint64_t reserved;
};
static_assert(sizeof(Header) == kHeaderBytes, "dataset header must be 64 bytes");
constexpr size_t kHeaderCrcOffset = offsetof(Header, header_crc32);

uint64_t pad8(uint64_t bytes) {
  return (bytes + 7) / 8 * 8;
}

// Byte sizes of the sections after the header, each padded to 8 bytes (the names section is last, unpadded).
struct Sections {
  uint64_t offsets, tokens, domain_ids, names;
  Sections(uint64_t documents, uint64_t num_tokens, uint64_t names_bytes)
      : offsets((documents + 1) * 8),
        tokens(pad8(num_tokens * 4)),
        domain_ids(pad8(documents * 4)),
        names(names_bytes) {}
  uint64_t total() const { return kHeaderBytes + offsets + tokens + domain_ids + names; }
};

uint32_t crc_update(uint32_t crc, const void* data, uint64_t bytes) {
  const auto* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {
    auto chunk = static_cast<uInt>(std::min<uint64_t>(bytes, 1u << 30));
    crc = static_cast<uint32_t>(crc32(crc, p, chunk));
    p += chunk, bytes -= chunk;
  }
  return crc;
}

}  // namespace

DatasetWriter::DatasetWriter(std::vector<std::string> domain_names, uint32_t vocab_size)
    : domain_names_(std::move(domain_names)), vocab_size_(vocab_size) {
  for (const auto& name : domain_names_)
    EMO_CHECK(!name.empty() && name.find('\n') == std::string::npos, "dataset",
              "domain names must be non-empty and hold no newline: '", name, "'");
}

void DatasetWriter::add(std::span<const uint32_t> tokens, uint32_t domain_id) {
  EMO_CHECK(domain_id < domain_names_.size(), "dataset", "domain id ", domain_id, " of document ",
            domain_ids_.size(), " is not below the ", domain_names_.size(), " domains");
  for (uint32_t token : tokens)
    EMO_CHECK(token < vocab_size_, "dataset", "token id ", token, " of document ", domain_ids_.size(),
              " is not below the vocabulary size ", vocab_size_);
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  offsets_.push_back(tokens_.size());
  domain_ids_.push_back(domain_id);
}

void DatasetWriter::add(std::span<const int32_t> tokens, uint32_t domain_id) {
  for (int32_t token : tokens)
    EMO_CHECK(token >= 0, "dataset", "negative token id ", token, " in document ", domain_ids_.size());
  add(std::span<const uint32_t>(reinterpret_cast<const uint32_t*>(tokens.data()), tokens.size()), domain_id);
}

void DatasetWriter::write(const std::string& path) const {
  std::string names;
  for (const auto& name : domain_names_) names += name + "\n";
  Sections sections(domain_ids_.size(), tokens_.size(), names.size());
  static const char kZeros[8] = {};
  const uint64_t token_pad = sections.tokens - tokens_.size() * 4;
  const uint64_t domain_pad = sections.domain_ids - domain_ids_.size() * 4;

  Header header{};
  std::memcpy(header.magic, kMagic, sizeof kMagic);
  header.version = kVersion;
  header.header_bytes = kHeaderBytes;
  header.num_documents = domain_ids_.size();
  header.num_tokens = tokens_.size();
  header.num_domains = static_cast<uint32_t>(domain_names_.size());
  header.vocab_size = vocab_size_;
  header.names_bytes = names.size();
  uint32_t crc = crc_update(0, offsets_.data(), offsets_.size() * 8);
  crc = crc_update(crc, tokens_.data(), tokens_.size() * 4);
  crc = crc_update(crc, kZeros, token_pad);
  crc = crc_update(crc, domain_ids_.data(), domain_ids_.size() * 4);
  crc = crc_update(crc, kZeros, domain_pad);
  crc = crc_update(crc, names.data(), names.size());
  header.payload_crc32 = crc;
  header.header_crc32 = crc_update(0, &header, kHeaderCrcOffset);

  AtomicFile out(path);
  out.write(&header, sizeof header);
  out.write(offsets_.data(), offsets_.size() * 8);
  out.write(tokens_.data(), tokens_.size() * 4);
  out.write(kZeros, token_pad);
  out.write(domain_ids_.data(), domain_ids_.size() * 4);
  out.write(kZeros, domain_pad);
  out.write(names.data(), names.size());
  out.commit();
}

Dataset Dataset::open(const std::string& path) {
  Dataset dataset;
  dataset.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail_file("dataset", path, std::strerror(errno));
  struct stat info {};
  if (fstat(fd, &info) != 0) {
    ::close(fd);
    fail_file("dataset", path, std::strerror(errno));
  }
  auto file_bytes = static_cast<uint64_t>(info.st_size);
  if (file_bytes < kHeaderBytes) {
    ::close(fd);
    fail_at("dataset", path, cat("byte ", file_bytes),
            cat("file of ", file_bytes, " bytes is shorter than the ", kHeaderBytes,
                "-byte header (truncated?)"));
  }
  void* map = mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) fail_file("dataset", path, cat("mmap: ", std::strerror(errno)));
  dataset.map_ = map;
  dataset.map_bytes_ = file_bytes;
  register_mapped_file(map, file_bytes, path, "dataset");  // truncated under us: an error, not a SIGBUS

  const auto* base = static_cast<const unsigned char*>(map);
  Header header;
  std::memcpy(&header, base, sizeof header);
  if (std::memcmp(header.magic, kMagic, sizeof kMagic) != 0)
    fail_at("dataset", path, "byte 0", "not an emo dataset (bad magic)");
  if (header.version != kVersion)
    fail_at("dataset", path, "byte 8",
            cat("unsupported version ", header.version, " (this build reads ", kVersion, ")"));
  if (header.header_bytes != kHeaderBytes || crc_update(0, &header, kHeaderCrcOffset) != header.header_crc32)
    fail_at("dataset", path, "byte 0", "corrupt header (checksum mismatch)");
  // Sizes come from a checksummed header, but guard the arithmetic against absurd values anyway.
  if (header.num_documents > file_bytes || header.num_tokens > file_bytes || header.names_bytes > file_bytes)
    fail_at("dataset", path, "byte 16", "counts larger than the file");
  Sections sections(header.num_documents, header.num_tokens, header.names_bytes);
  if (sections.total() != file_bytes)
    fail_at("dataset", path, cat("byte ", file_bytes),
            cat("file has ", file_bytes, " bytes but its header describes ", sections.total(),
                file_bytes < sections.total() ? " (truncated)" : " (trailing bytes)"));
  if (crc_update(0, base + kHeaderBytes, file_bytes - kHeaderBytes) != header.payload_crc32)
    fail_at("dataset", path, cat("byte ", kHeaderBytes), "corrupt data (payload checksum mismatch)");

  dataset.num_documents_ = header.num_documents;
  dataset.num_tokens_ = header.num_tokens;
  dataset.vocab_size_ = header.vocab_size;
  uint64_t at = kHeaderBytes;
  dataset.offsets_ = reinterpret_cast<const uint64_t*>(base + at);
  at += sections.offsets;
  dataset.tokens_ = reinterpret_cast<const uint32_t*>(base + at);
  at += sections.tokens;
  dataset.domain_ids_ = reinterpret_cast<const uint32_t*>(base + at);
  at += sections.domain_ids;
  std::string_view names(reinterpret_cast<const char*>(base + at), header.names_bytes);

  size_t start = 0;
  while (start < names.size()) {
    size_t end = names.find('\n', start);
    if (end == std::string_view::npos)
      fail_at("dataset", path, cat("byte ", at + start), "domain name not ended by a newline");
    dataset.domain_names_.emplace_back(names.substr(start, end - start));
    start = end + 1;
  }
  if (dataset.domain_names_.size() != header.num_domains)
    fail_at("dataset", path, cat("byte ", at),
            cat("expected ", header.num_domains, " domain names, found ", dataset.domain_names_.size()));
  const uint64_t* offsets = dataset.offsets_;
  if (offsets[0] != 0 || offsets[header.num_documents] != header.num_tokens)
    fail_at("dataset", path, cat("byte ", kHeaderBytes), "document offsets do not span the tokens");
  for (uint64_t d = 0; d < header.num_documents; ++d) {
    if (offsets[d + 1] < offsets[d])
      fail_at("dataset", path, cat("byte ", kHeaderBytes + 8 * (d + 1)),
              cat("offset of document ", d + 1, " decreases"));
    if (dataset.domain_ids_[d] >= header.num_domains)
      fail_at("dataset", path, cat("document ", d),
              cat("domain id ", dataset.domain_ids_[d], " is not below ", header.num_domains));
  }
  for (uint64_t t = 0; t < header.num_tokens; ++t)
    if (dataset.tokens_[t] >= header.vocab_size)
      fail_at("dataset", path, cat("token ", t),
              cat("id ", dataset.tokens_[t], " is not below the vocabulary size ", header.vocab_size));
  return dataset;
}

Dataset::Dataset(Dataset&& other) noexcept {
  *this = std::move(other);
}

Dataset& Dataset::operator=(Dataset&& other) noexcept {
  if (this == &other) return *this;
  release();
  path_ = std::move(other.path_);
  map_ = other.map_, map_bytes_ = other.map_bytes_;
  num_documents_ = other.num_documents_, num_tokens_ = other.num_tokens_, vocab_size_ = other.vocab_size_;
  offsets_ = other.offsets_, tokens_ = other.tokens_, domain_ids_ = other.domain_ids_;
  domain_names_ = std::move(other.domain_names_);
  other.map_ = nullptr, other.map_bytes_ = 0, other.num_documents_ = other.num_tokens_ = 0;
  other.offsets_ = nullptr, other.tokens_ = other.domain_ids_ = nullptr;
  return *this;
}

Dataset::~Dataset() {
  release();
}

void Dataset::release() {
  if (map_) {
    unregister_mapped_file(map_);
    munmap(map_, map_bytes_);
  }
  map_ = nullptr;
}

int Dataset::domain_index(const std::string& name) const {
  for (size_t i = 0; i < domain_names_.size(); ++i)
    if (domain_names_[i] == name) return static_cast<int>(i);
  return -1;
}

std::span<const uint32_t> Dataset::document(int64_t d) const {
  if (d < 0 || static_cast<uint64_t>(d) >= num_documents_)
    fail_file("dataset", path_, cat("document ", d, " out of range [0, ", num_documents_, ")"));
  return {tokens_ + offsets_[d], static_cast<size_t>(offsets_[d + 1] - offsets_[d])};
}

int64_t Dataset::document_length(int64_t d) const {
  return static_cast<int64_t>(document(d).size());
}

uint32_t Dataset::domain_of(int64_t d) const {
  if (d < 0 || static_cast<uint64_t>(d) >= num_documents_)
    fail_file("dataset", path_, cat("document ", d, " out of range [0, ", num_documents_, ")"));
  return domain_ids_[d];
}

}  // namespace emo::data
