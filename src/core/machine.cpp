#include "core/machine.h"

#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

#include "core/thread_pool.h"

namespace emo {

int64_t machine_memory_bytes() {
  return static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
}

nlohmann::json machine_facts() {
  std::string cpu, flags;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    auto value = [&] { return line.substr(line.find(':') + 2); };
    if (cpu.empty() && line.rfind("model name", 0) == 0) cpu = value();
    if (flags.empty() && line.rfind("flags", 0) == 0) {
      const std::string all = " " + value() + " ";
      for (const char* f : {"avx2", "fma", "f16c", "avx512f"})
        if (all.find(std::string(" ") + f + " ") != std::string::npos)
          flags += (flags.empty() ? "" : " ") + std::string(f);
    }
  }
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return {{"cpu", cpu},
          {"cores", std::thread::hardware_concurrency()},
          {"threads", num_threads()},
          {"memory_bytes", machine_memory_bytes()},
          {"flags", flags},
          {"hostname", host}};
}

}  // namespace emo
