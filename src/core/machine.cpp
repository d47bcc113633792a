#include "core/machine.h"

#include <cpuid.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>
#include <utility>

#include "core/thread_pool.h"

namespace emo {

int64_t machine_memory_bytes() {
  return static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    // __builtin_cpu_supports also checks that the OS saves the AVX and AVX-512 registers (XCR0).
    __builtin_cpu_init();
    CpuFeatures f;
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    // clang 14 has no "f16c" for __builtin_cpu_supports: CPUID leaf 1, ECX bit 29.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    f.f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    return f;
  }();
  return features;
}

nlohmann::json machine_facts() {
  std::string cpu;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line) && cpu.empty();)
    if (line.rfind("model name", 0) == 0) cpu = line.substr(line.find(':') + 2);
  const CpuFeatures& f = cpu_features();
  std::string flags;
  for (auto [name, has] : {std::pair{"avx2", f.avx2},
                           {"fma", f.fma},
                           {"f16c", f.f16c},
                           {"avx512f", f.avx512f},
                           {"avx512bw", f.avx512bw},
                           {"avx512vl", f.avx512vl},
                           {"avx512bf16", f.avx512bf16},
                           {"avx512vnni", f.avx512vnni}})
    if (has) flags += (flags.empty() ? "" : " ") + std::string(name);
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
