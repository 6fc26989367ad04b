// lib/common/huge_pages.h: the huge-page allocator behind the CPU runtime's weight buffers.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "lib/common/huge_pages.h"

namespace mpq {
namespace {

// The smaps block of the mapping that holds `p`, or "" when none does.
std::string smaps_entry(const void* p) {
  std::ifstream f("/proc/self/smaps");
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::string line, block;
  bool in = false;
  while (std::getline(f, line)) {
    unsigned long lo = 0, hi = 0;
    const bool header = std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ');
    if (header) {
      if (in) return block;
      in = a >= lo && a < hi;
      block.clear();
    }
    if (in) block += line + "\n";
  }
  return in ? block : "";
}

// The value of field `key` ("THPeligible") in an smaps block, -1 when absent.
long smaps_field(const std::string& block, const std::string& key) {
  const std::size_t at = block.find("\n" + key + ":");
  if (at == std::string::npos) return -1;
  return std::stol(block.substr(at + key.size() + 2));
}

std::string thp_mode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s;
  std::getline(f, s);
  return s;
}

TEST(HugePages, LargeBuffersAreAlignedZeroedAndAdvised) {
  if (!huge_pages_enabled()) GTEST_SKIP() << "MPQ_HUGE_PAGES=0 or no madvise on this platform";
  for (std::size_t n : {kHugePageBytes, kHugePageBytes + 1, 3 * kHugePageBytes + 4097}) {
    HugeVector<uint8_t> v(n);
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(v.data()) % kHugePageBytes, 0u) << n;
    std::size_t nonzero = 0;
    for (uint8_t b : v) nonzero += b != 0;
    EXPECT_EQ(nonzero, 0u) << n;
    v[n - 1] = 7;  // the last byte is writable
    EXPECT_EQ(v[n - 1], 7);
    const std::string e = smaps_entry(v.data());
    ASSERT_FALSE(e.empty()) << "no /proc/self/smaps entry for the buffer";
    // The buffer is its own mapping (huge_alloc trims the alignment slack) ...
    EXPECT_NE(e.find("Size:"), std::string::npos);
    // ... advised MADV_HUGEPAGE ("hg" in VmFlags), so THP-eligible unless THP is off.
    EXPECT_NE(e.find(" hg"), std::string::npos) << e;
    if (thp_mode().find("[never]") == std::string::npos) {
      EXPECT_EQ(smaps_field(e, "THPeligible"), 1) << e;
    }
  }
}

TEST(HugePages, SmallBuffersAndCopiesBehaveLikeStdVector) {
  HugeVector<float> a(1000, 1.5f);  // below kHugePageBytes: operator new
  HugeVector<float> b = a;
  b.push_back(2.0f);
  EXPECT_EQ(a.size(), 1000u);
  EXPECT_EQ(b.size(), 1001u);
  EXPECT_EQ(b[999], 1.5f);
  EXPECT_EQ(b[1000], 2.0f);
  HugeVector<float> big(kHugePageBytes / sizeof(float) + 3, 0.25f);  // mmap
  HugeVector<float> moved = std::move(big);
  EXPECT_EQ(moved.back(), 0.25f);
  moved.resize(10);  // shrinking keeps the mapping; freeing it later must use the capacity
  moved.shrink_to_fit();
  EXPECT_EQ(moved.size(), 10u);
  EXPECT_EQ(moved[9], 0.25f);
}

}  // namespace
}  // namespace mpq
