#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kOp = "io";

std::string errno_text() {
  return std::strerror(errno);
}

// "XXXXXX" replaced by random letters: concurrent writers of the same target never share a temporary name.
std::string random_suffix() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  static const char letters[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(6, 'x');
  for (char& c : s) c = letters[gen() % (sizeof(letters) - 1)];
  return s;
}

std::string parent_or_dot(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

}  // namespace

void remove_marked_directory(const std::string& dir) {
  std::error_code ignored;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ignored))
    if (entry.path().filename() != ".emo-output") fs::remove_all(entry.path(), ignored);
  fs::remove_all(dir, ignored);
}

void sync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail_file(kOp, dir, "cannot open directory to sync: " + errno_text());
  // Some file systems refuse fsync on directories (EINVAL); the rename is then as durable as they allow.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    std::string reason = errno_text();
    ::close(fd);
    fail_file(kOp, dir, "fsync of directory failed: " + reason);
  }
  ::close(fd);
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    temp_path_ = path_ + ".tmp-" + random_suffix();
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) fail_file(kOp, path_, "cannot create temporary file: " + errno_text());
  }
  if (fd_ < 0) fail_file(kOp, path_, "cannot find a free temporary name");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  EMO_CHECK(fd_ >= 0, kOp, path_, ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_file(kOp, path_, "write failed: " + errno_text());
    p += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  EMO_CHECK(fd_ >= 0, kOp, path_, ": committed twice");
  if (::fsync(fd_) != 0) fail_file(kOp, path_, "fsync failed: " + errno_text());
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_file(kOp, path_, "close failed: " + errno_text());
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
    fail_file(kOp, path_, "rename failed: " + errno_text());
  committed_ = true;
  sync_directory(parent_or_dot(path_));
}

void atomic_write_file(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

void copy_file_checked(const std::string& from, const std::string& to) {
  std::error_code error;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, error);
  if (error) fail_file(kOp, to, cat("copy of ", from, " failed: ", error.message()));
}

AtomicDirectory::AtomicDirectory(std::string dir) : path_(std::move(dir)) {
  while (!path_.empty() && path_.size() > 1 && path_.back() == '/') path_.pop_back();
  fs::create_directories(parent_or_dot(path_));
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_path_ = cat(path_, ".emo-tmp-", ::getpid(), "-", random_suffix());
    std::error_code error;
    if (fs::create_directory(temp_path_, error)) return;
    if (error) fail_file(kOp, path_, "cannot create temporary directory: " + error.message());
  }
  fail_file(kOp, path_, "cannot find a free temporary name");
}

AtomicDirectory::~AtomicDirectory() {
  if (committed_) return;
  remove_marked_directory(temp_path_);
}

void AtomicDirectory::commit() {
  EMO_CHECK(!committed_, kOp, path_, ": committed twice");
  const std::string parent = parent_or_dot(path_);
  sync_directory(temp_path_);  // the files' own names are durable before the directory appears
  // rename(2) cannot replace a non-empty directory. Swapping the two names in one step (RENAME_EXCHANGE)
  // means that `path_` always names a whole directory, the old one or the new one, whenever the process is
  // killed; the old one then sits under the temporary name until it is removed (or, if killed first, until
  // the next run removes it as a stale temporary). File systems without the exchange fall back to moving the
  // old directory aside first, which leaves a moment without `path_` (the next run puts the old one back).
  std::string old_path;
  if (fs::exists(path_)) {
    if (::renameat2(AT_FDCWD, temp_path_.c_str(), AT_FDCWD, path_.c_str(), RENAME_EXCHANGE) == 0) {
      old_path = temp_path_;
    } else if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
      fail_file(kOp, path_, "cannot exchange the new directory with the previous one: " + errno_text());
    }
  }
  if (old_path.empty()) {
    if (fs::exists(path_)) {
      old_path = cat(path_, ".emo-old-", ::getpid(), "-", random_suffix());
      if (::rename(path_.c_str(), old_path.c_str()) != 0)
        fail_file(kOp, path_, "cannot move the previous directory aside: " + errno_text());
    }
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
      std::string reason = errno_text();
      if (!old_path.empty()) ::rename(old_path.c_str(), path_.c_str());
      fail_file(kOp, path_, "rename of the new directory failed: " + reason);
    }
  }
  committed_ = true;
  sync_directory(parent);
  if (!old_path.empty()) remove_marked_directory(old_path);
}

}  // namespace emo
