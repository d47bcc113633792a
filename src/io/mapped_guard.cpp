#include "io/mapped_guard.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace emo {

namespace {

constexpr size_t kSlots = 4096;
constexpr size_t kPathBytes = 1024;

// One registered mapping. `begin` is published last (release) and read first (acquire) by the handler, so the
// handler never sees a half-written path; 0 marks a free slot.
struct Slot {
  std::atomic<uintptr_t> begin{0};
  size_t size = 0;
  char op[32] = {0};
  char path[kPathBytes] = {0};
};

std::array<Slot, kSlots> g_slots;
std::mutex g_register_mutex;  // registration only; the handler takes no lock
struct sigaction g_previous {};

// Async-signal-safe output: write(2) of a string and of a decimal number.
void say(const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

void say_number(uint64_t value) {
  char digits[24];
  size_t n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  char text[24];
  for (size_t i = 0; i < n; ++i) text[i] = digits[n - 1 - i];
  text[n] = '\0';
  say(text);
}

void on_sigbus(int signal, siginfo_t* info, void* context) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const Slot& slot : g_slots) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    if (begin == 0 || address < begin || address - begin >= slot.size) continue;
    say("emo: error: [");
    say(slot.op);
    say("] ");
    say(slot.path);
    say(": byte ");
    say_number(address - begin);
    say(": the file was truncated or rewritten in place while emo was reading it (what was there is "
        "gone); another program changed it: emo's writers only ever rename a whole new file over it. Run "
        "again once the file is whole\n");
    ::_exit(1);
  }
  // Not a mapped weights file: what would have happened without this handler.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) return g_previous.sa_sigaction(signal, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    return g_previous.sa_handler(signal);
  }
  ::signal(SIGBUS, SIG_DFL);  // the faulting access runs again and ends the process with SIGBUS
}

void install_handler() {
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, &g_previous);
}

}  // namespace

void register_mapped_file(const void* begin, size_t size, const std::string& path, const char* op) {
  static std::once_flag installed;
  std::call_once(installed, install_handler);
  std::lock_guard<std::mutex> lock(g_register_mutex);
  for (Slot& slot : g_slots) {
    if (slot.begin.load(std::memory_order_relaxed) != 0) continue;
    slot.size = size;
    const size_t n = std::min(path.size(), kPathBytes - 1);
    std::memcpy(slot.path, path.data(), n);
    slot.path[n] = '\0';
    std::strncpy(slot.op, op, sizeof(slot.op) - 1);
    slot.begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
    return;
  }
}

void unregister_mapped_file(const void* begin) {
  std::lock_guard<std::mutex> lock(g_register_mutex);
  for (Slot& slot : g_slots)
    if (slot.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(begin)) {
      slot.begin.store(0, std::memory_order_release);
      return;
    }
}

}  // namespace emo
