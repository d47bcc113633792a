// What of a process's memory is resident, by component: the pages of given byte ranges that are mapped in
// this process (/proc/self/pagemap "present" bit; mincore when pagemap is unreadable), the page-cache state
// of file-backed ranges (mincore), and the process's current and peak resident set (/proc/self/status).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "infer/weights.h"

namespace emo {

// Bytes of [begin, begin + bytes) in pages that are present in this process's page tables (whole pages:
// a range sharing a page with a neighbour counts that page).
int64_t mapped_resident_bytes(const void* begin, int64_t bytes);
// Bytes of the range in pages that are in memory (the page cache for a file mapping, even if this process
// never touched them): mincore.
int64_t cached_resident_bytes(const void* begin, int64_t bytes);

// VmRSS and VmHWM (peak) of this process, in bytes; 0 when /proc is unavailable.
int64_t current_rss_bytes();
int64_t peak_rss_bytes();

struct ComponentMemory {
  std::string component;
  int64_t bytes = 0;     // size of its ranges
  int64_t resident = 0;  // mapped in this process
};

struct ResidentReport {
  std::vector<ComponentMemory> components;  // in first-seen order of the ranges
  int64_t rss = 0, peak_rss = 0;

  // Sum of the components' sizes / resident bytes, excluding "experts_not_loaded".
  int64_t total_bytes() const;
  int64_t total_resident() const;
  std::string table() const;
  nlohmann::json to_json() const;
};

// Resident bytes per component of the ranges (pages shared by two ranges are counted once, for the first).
ResidentReport resident_report(const std::vector<MemoryRange>& ranges);

}  // namespace emo
