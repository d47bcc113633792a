// Facts about the machine a measurement ran on, recorded beside every experiment's figures.
#pragma once

#include <nlohmann/json.hpp>

namespace emo {

// {"cpu": "AMD EPYC ...", "cores": 2, "threads": 2, "memory_bytes": ..., "flags": "avx2 fma", "hostname":
// ...}
nlohmann::json machine_facts();

// Physical memory of the machine in bytes (the limit a size read from a file is checked against).
int64_t machine_memory_bytes();

}  // namespace emo
