#include "data/process.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace emo::data {
namespace {

std::string join(const std::vector<std::string>& argv) {
  std::string joined;
  for (const auto& arg : argv) joined += (joined.empty() ? "" : " ") + arg;
  return joined;
}

// Reads both pipes to their end without letting either fill up and block the child.
void drain(int out_fd, int err_fd, std::string& out, std::string& err) {
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  std::string* sinks[2] = {&out, &err};
  int open_fds = 2;
  char buffer[65536];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
      if (n > 0) {
        sinks[i]->append(buffer, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
}

}  // namespace

std::string run_command(const std::vector<std::string>& argv) {
  EMO_CHECK(!argv.empty(), "run", "empty command");
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0)
    fail("run", cat(join(argv), ": pipe: ", std::strerror(errno)));
  pid_t pid = fork();
  if (pid < 0) fail("run", cat(join(argv), ": fork: ", std::strerror(errno)));
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    close(out_pipe[0]), close(out_pipe[1]), close(err_pipe[0]), close(err_pipe[1]);
    std::vector<char*> args;
    for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "cannot execute %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(out_pipe[1]), close(err_pipe[1]);
  std::string out, err;
  drain(out_pipe[0], err_pipe[0], out, err);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (err.size() > 2000) err = "..." + err.substr(err.size() - 2000);
    fail("run", cat(join(argv), ": exit status ", WIFEXITED(status) ? WEXITSTATUS(status) : -1, ": ", err));
  }
  return out;
}

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("read", path, std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) fail_file("read", path, "read error");
  return bytes.str();
}

namespace {

struct DigestDeleter {
  void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};

std::string to_hex(const unsigned char* digest, unsigned length) {
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < length; ++i) hex += kHex[digest[i] >> 4], hex += kHex[digest[i] & 15];
  return hex;
}

}  // namespace

namespace {

// Digest of the chunks `feed` hands to `add`.
std::string digest_hex(const EVP_MD* md,
                       const std::function<void(const std::function<void(const void*, size_t)>&)>& feed) {
  std::unique_ptr<EVP_MD_CTX, DigestDeleter> context(EVP_MD_CTX_new());
  if (!context || EVP_DigestInit_ex(context.get(), md, nullptr) != 1) fail("digest", "OpenSSL digest failed");
  feed([&](const void* data, size_t size) {
    if (EVP_DigestUpdate(context.get(), data, size) != 1) fail("digest", "OpenSSL digest failed");
  });
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  if (EVP_DigestFinal_ex(context.get(), digest, &length) != 1) fail("digest", "OpenSSL digest failed");
  return to_hex(digest, length);
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  return digest_hex(EVP_sha256(), [&](const auto& add) { add(bytes.data(), bytes.size()); });
}

std::string sha256_file_hex(const std::string& path) {
  return sha256_file_range_hex(path, 0, static_cast<uint64_t>(std::filesystem::file_size(path)));
}

std::string sha256_file_range_hex(const std::string& path, uint64_t offset, uint64_t length) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("read", path, std::strerror(errno));
  in.seekg(static_cast<std::streamoff>(offset));
  return digest_hex(EVP_sha256(), [&](const auto& add) {
    std::vector<char> chunk(1 << 20);
    for (uint64_t left = length; left > 0;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, chunk.size()));
      if (!in.read(chunk.data(), static_cast<std::streamsize>(n)))
        fail_file("read", path,
                  cat("byte ", offset + length - left, ": the file ends before byte ", offset + length));
      add(chunk.data(), n);
      left -= n;
    }
  });
}

std::string git_blob_sha1_hex(const std::string& bytes) {
  const std::string prefix = cat("blob ", bytes.size(), std::string(1, '\0'));
  return digest_hex(EVP_sha1(), [&](const auto& add) {
    add(prefix.data(), prefix.size());
    add(bytes.data(), bytes.size());
  });
}

}  // namespace emo::data
