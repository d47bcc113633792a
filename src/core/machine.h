// Facts about the machine a measurement ran on, recorded beside every experiment's figures.
#pragma once

#include <nlohmann/json.hpp>

namespace emo {

// {"cpu": "AMD EPYC ...", "cores": 2, "threads": 2, "memory_bytes": ..., "flags": "avx2 fma", "hostname":
// ...}
nlohmann::json machine_facts();

// The vector instructions this CPU can run (and the OS saves the registers of), detected once. Kernels
// compiled with target attributes for more than AVX2 are called only where these say so, so one binary
// runs on AVX2-only CPUs.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false;
  bool avx512bf16 = false;  // vdpbf16ps
  bool avx512vnni = false;  // vpdpwssd, vpdpbusd
};
const CpuFeatures& cpu_features();

// Physical memory of the machine in bytes (the limit a size read from a file is checked against).
int64_t machine_memory_bytes();

}  // namespace emo
