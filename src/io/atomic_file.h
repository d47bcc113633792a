// Crash-safe writes. A reader (or a run restarted after a crash) sees either the old content or the new,
// never half a file: the bytes go to a temporary name in the same directory (same file system, so rename is
// atomic), are fsync'ed, then renamed over the target, and the directory is fsync'ed so the rename itself is
// durable.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace emo {

// A file being written under a temporary name ("<path>.tmp-XXXXXX"); commit() makes it `path`. Destroyed
// without commit() (an exception on the way), it removes the temporary file and leaves `path` untouched.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes; throws "[io] <path>: write failed: <reason>".
  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Bytes written so far.
  size_t size() const { return written_; }
  // fsync, close, rename over `path`, fsync the directory.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_, temp_path_;
  int fd_ = -1;
  size_t written_ = 0;
  bool committed_ = false;
};

// Writes `bytes` to `path` atomically.
void atomic_write_file(const std::string& path, std::string_view bytes);

// Copies `from` to `to` (replacing a file there). A failure (a full disk, no permission) is an emo::Error
// naming both files, never a std::filesystem_error that the command line would report as an internal error.
void copy_file_checked(const std::string& from, const std::string& to);

// Removes a directory of emo's, the output marker of io/output_dir (".emo-output") last: a process killed
// half way leaves a directory that still carries the marker, which the next run recognises as its own
// leftover and removes, instead of a marker-less one that looks like the user's and stays for ever.
void remove_marked_directory(const std::string& dir);

// fsync of a directory, so that renames and creations inside it survive a power loss.
void sync_directory(const std::string& dir);

// A directory being written under a temporary name ("<dir>.emo-tmp-<pid>-XXXXXX", a sibling of `dir`);
// commit() makes it `dir`, replacing an existing `dir` only once the new one is complete: the old one is
// moved aside, the new one renamed in, then the old one removed (if the second rename fails the old one is
// moved back). Destroyed without commit(), it removes the temporary directory and leaves `dir` untouched. It
// replaces whatever is at `dir`: commands write their outputs through io/output_dir, which decides whether
// they may.
class AtomicDirectory {
 public:
  explicit AtomicDirectory(std::string dir);
  ~AtomicDirectory();
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;

  // Where to write the files (the temporary directory).
  const std::string& temp_path() const { return temp_path_; }
  const std::string& path() const { return path_; }
  void commit();

 private:
  std::string path_, temp_path_;
  bool committed_ = false;
};

}  // namespace emo
