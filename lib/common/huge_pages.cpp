// Huge-page-backed allocations (lib/common/huge_pages.h).
#include "lib/common/huge_pages.h"

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace mpq {
namespace {

constexpr std::size_t kSmallPage = 4096;

std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

bool use_mmap(std::size_t bytes) { return bytes >= kHugePageBytes && huge_pages_enabled(); }

}  // namespace

bool huge_pages_enabled() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool on = [] {
    const char* v = std::getenv("MPQ_HUGE_PAGES");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
#else
  return false;
#endif
}

void* huge_alloc(std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (use_mmap(bytes)) {
    const std::size_t len = round_up(bytes, kSmallPage);
    if (len > static_cast<std::size_t>(-1) - kHugePageBytes) throw std::bad_alloc();
    // Map len + 2 MiB, keep the 2 MiB-aligned len bytes inside, unmap the rest.
    const std::size_t span = len + kHugePageBytes;
    void* m = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    const auto base = reinterpret_cast<std::uintptr_t>(m);
    const std::uintptr_t start = (base + kHugePageBytes - 1) & ~(std::uintptr_t{kHugePageBytes} - 1);
    if (start > base) munmap(m, start - base);
    const std::uintptr_t end = start + len, span_end = base + span;
    if (span_end > end) munmap(reinterpret_cast<void*>(end), span_end - end);
    madvise(reinterpret_cast<void*>(start), len, MADV_HUGEPAGE);  // advice: no huge pages is not an error
    return reinterpret_cast<void*>(start);
  }
#endif
  return ::operator new(bytes == 0 ? 1 : bytes);
}

void huge_free(void* p, std::size_t bytes) noexcept {
  if (!p) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (use_mmap(bytes)) {
    munmap(p, round_up(bytes, kSmallPage));
    return;
  }
#endif
  ::operator delete(p);
}

}  // namespace mpq
