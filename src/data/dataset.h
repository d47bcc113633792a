// Tokenised documents in one memory-mappable binary file (described for users in docs/corpus.md).
//
// Layout, little-endian, every section starting at a multiple of 8 bytes:
// clang-format off
//   header (64 bytes)
//     char     magic[8]        "EMODSET\0"
//     uint32   version         1
//     uint32   header_bytes    64
//     uint64   num_documents   D
//     uint64   num_tokens      N
//     uint32   num_domains     M
//     uint32   vocab_size      every token id is below it
//     uint64   names_bytes     size of the domain-name section
//     uint32   payload_crc32   zlib crc32 of everything after the header
//     uint32   header_crc32    zlib crc32 of the 60 header bytes before it
//     uint64   reserved        0
//   uint64   offsets[D + 1]    document d holds tokens[offsets[d], offsets[d+1]); offsets[0] = 0, offsets[D] = N
//   uint32   tokens[N]         (padded to 8 bytes)
//   uint32   domain_ids[D]     index into the domain names (padded to 8 bytes)
//   char     names[names_bytes]  the M domain names, each ended by '\n'
// clang-format on
// Documents hold no EOS: the packer adds one after each document.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace emo::data {

// Collects documents in memory and writes the file atomically (path.tmp, then rename).
class DatasetWriter {
 public:
  DatasetWriter(std::vector<std::string> domain_names, uint32_t vocab_size);
  // Appends one document; token ids must be below vocab_size and the domain id below the number of domains.
  void add(std::span<const uint32_t> tokens, uint32_t domain_id);
  void add(std::span<const int32_t> tokens, uint32_t domain_id);
  void write(const std::string& path) const;
  int64_t num_documents() const { return static_cast<int64_t>(domain_ids_.size()); }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  std::vector<std::string> domain_names_;
  uint32_t vocab_size_;
  std::vector<uint64_t> offsets_{0};
  std::vector<uint32_t> tokens_;
  std::vector<uint32_t> domain_ids_;
};

// A read-only memory map of a dataset file. open() checks the header, the section sizes against the file
// size, both checksums, the offsets, the domain ids and the token ids, and throws emo::Error naming the file
// and the problem ("[dataset] train.bin: byte 64: ...") on any mismatch.
class Dataset {
 public:
  static Dataset open(const std::string& path);
  Dataset() = default;
  Dataset(Dataset&& other) noexcept;
  Dataset& operator=(Dataset&& other) noexcept;
  Dataset(const Dataset&) = delete;
  Dataset& operator=(const Dataset&) = delete;
  ~Dataset();

  int64_t num_documents() const { return static_cast<int64_t>(num_documents_); }
  int64_t num_tokens() const { return static_cast<int64_t>(num_tokens_); }
  uint32_t vocab_size() const { return vocab_size_; }
  const std::vector<std::string>& domain_names() const { return domain_names_; }
  // Index of a domain name, or -1.
  int domain_index(const std::string& name) const;

  // Tokens of document d (bounds-checked: emo::Error for d outside [0, num_documents)).
  std::span<const uint32_t> document(int64_t d) const;
  int64_t document_length(int64_t d) const;
  uint32_t domain_of(int64_t d) const;
  const std::string& path() const { return path_; }

 private:
  void release();

  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  uint64_t num_documents_ = 0, num_tokens_ = 0;
  uint32_t vocab_size_ = 0;
  const uint64_t* offsets_ = nullptr;
  const uint32_t* tokens_ = nullptr;
  const uint32_t* domain_ids_ = nullptr;
  std::vector<std::string> domain_names_;
};

}  // namespace emo::data
