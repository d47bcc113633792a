// Running the external tools the corpus builder needs (npm pack, apt-get download through scripts/fetch-*),
// and the file helpers it shares with the dataset code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace emo::data {

// Runs argv[0] (looked up in PATH) with the arguments, without a shell; returns its standard output. Throws
// emo::Error naming the command, its exit status and the tail of its standard error when it fails.
std::string run_command(const std::vector<std::string>& argv);

// Whole file as bytes; emo::Error naming the file when it cannot be read.
std::string read_file_bytes(const std::string& path);

// Lower-case hex SHA-256 (OpenSSL) of bytes and of a file's content.
std::string sha256_hex(const std::string& bytes);
std::string sha256_file_hex(const std::string& path);
// SHA-256 of bytes [offset, offset + length) of a file, read in 1 MiB chunks (files larger than memory).
std::string sha256_file_range_hex(const std::string& path, uint64_t offset, uint64_t length);
// Git's object id of a blob: SHA-1 of "blob <size>\0" + bytes (what the Hugging Face Hub gives as the ETag of
// a file kept in git rather than in LFS).
std::string git_blob_sha1_hex(const std::string& bytes);

}  // namespace emo::data
