#include "infer/resident.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <unordered_set>

#include "core/error.h"
#include "core/log.h"

namespace emo {
namespace {

uintptr_t page_size() {
  static const uintptr_t size = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

// Present bits of the pages [first, first + count) (page numbers) from /proc/self/pagemap; empty when
// unreadable.
std::vector<uint8_t> pagemap_present(uintptr_t first, size_t count) {
  std::vector<uint8_t> present;
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return present;
  std::vector<uint64_t> entries(count);
  const ssize_t want = static_cast<ssize_t>(count * sizeof(uint64_t));
  ssize_t got = ::pread(fd, entries.data(), static_cast<size_t>(want), static_cast<off_t>(first * 8));
  ::close(fd);
  if (got != want) return present;
  present.resize(count);
  for (size_t i = 0; i < count; ++i) present[i] = (entries[i] >> 63) & 1u;
  return present;
}

std::vector<uint8_t> mincore_present(uintptr_t first, size_t count) {
  std::vector<uint8_t> present(count, 0);
  if (count == 0) return present;
  std::vector<unsigned char> vec(count);
  if (::mincore(reinterpret_cast<void*>(first * page_size()), count * page_size(), vec.data()) != 0)
    return present;
  for (size_t i = 0; i < count; ++i) present[i] = vec[i] & 1u;
  return present;
}

// Page numbers [first, last] covering a byte range.
std::pair<uintptr_t, uintptr_t> page_span(const void* begin, int64_t bytes) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(begin);
  return {b / page_size(), (b + static_cast<uintptr_t>(bytes) - 1) / page_size()};
}

std::vector<uint8_t> present_pages(const void* begin, int64_t bytes, bool mapped) {
  auto [first, last] = page_span(begin, bytes);
  const size_t count = last - first + 1;
  std::vector<uint8_t> present;
  if (mapped) present = pagemap_present(first, count);
  if (present.empty()) present = mincore_present(first, count);
  return present;
}

int64_t count_present(const void* begin, int64_t bytes, bool mapped) {
  if (bytes <= 0 || begin == nullptr) return 0;
  int64_t pages = 0;
  for (uint8_t p : present_pages(begin, bytes, mapped)) pages += p;
  return pages * static_cast<int64_t>(page_size());
}

int64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size())) * 1024;
  return 0;
}

}  // namespace

int64_t mapped_resident_bytes(const void* begin, int64_t bytes) {
  return count_present(begin, bytes, true);
}

int64_t cached_resident_bytes(const void* begin, int64_t bytes) {
  return count_present(begin, bytes, false);
}

int64_t current_rss_bytes() {
  return status_kib("VmRSS");
}

int64_t peak_rss_bytes() {
  return status_kib("VmHWM");
}

ResidentReport resident_report(const std::vector<MemoryRange>& ranges) {
  ResidentReport report;
  std::unordered_set<uintptr_t> counted;  // pages already attributed to a component
  for (const MemoryRange& r : ranges) {
    if (r.bytes <= 0 || r.begin == nullptr) continue;
    auto it = std::find_if(report.components.begin(), report.components.end(),
                           [&](const ComponentMemory& c) { return c.component == r.component; });
    if (it == report.components.end()) {
      report.components.push_back({r.component, 0, 0});
      it = report.components.end() - 1;
    }
    it->bytes += r.bytes;
    const uintptr_t first = page_span(r.begin, r.bytes).first;
    const std::vector<uint8_t> present = present_pages(r.begin, r.bytes, true);
    for (size_t i = 0; i < present.size(); ++i)
      if (present[i] && counted.insert(first + i).second) it->resident += static_cast<int64_t>(page_size());
  }
  report.rss = current_rss_bytes();
  report.peak_rss = peak_rss_bytes();
  return report;
}

int64_t ResidentReport::total_bytes() const {
  int64_t total = 0;
  for (const auto& c : components) total += c.component == "experts_not_loaded" ? 0 : c.bytes;
  return total;
}

int64_t ResidentReport::total_resident() const {
  int64_t total = 0;
  for (const auto& c : components) total += c.component == "experts_not_loaded" ? 0 : c.resident;
  return total;
}

std::string ResidentReport::table() const {
  std::string out = "component              size         resident\n";
  char line[160];
  auto row = [&](const std::string& name, double bytes, double resident) {
    std::snprintf(line, sizeof line, "%-20s %12s %12s\n", name.c_str(), human_bytes(bytes).c_str(),
                  human_bytes(resident).c_str());
    out += line;
  };
  for (const auto& c : components)
    row(c.component, static_cast<double>(c.bytes), static_cast<double>(c.resident));
  row("total", static_cast<double>(total_bytes()), static_cast<double>(total_resident()));
  std::snprintf(line, sizeof line, "process RSS %s, peak %s\n", human_bytes(static_cast<double>(rss)).c_str(),
                human_bytes(static_cast<double>(peak_rss)).c_str());
  return out + line;
}

nlohmann::json ResidentReport::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& c : components) j[c.component] = {{"bytes", c.bytes}, {"resident", c.resident}};
  j["total"] = {{"bytes", total_bytes()}, {"resident", total_resident()}};
  j["rss"] = rss;
  j["peak_rss"] = peak_rss;
  return j;
}

}  // namespace emo
