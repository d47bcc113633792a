// Facts about the machine a measurement ran on, recorded beside every experiment's figures.
#pragma once

#include <nlohmann/json.hpp>

namespace emo {

// {"cpu": "AMD EPYC ...", "cores": 2, "threads": 2, "memory_bytes": ..., "flags": "avx2 fma", "hostname":
// ...}
nlohmann::json machine_facts();

}  // namespace emo
