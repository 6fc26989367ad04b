// Weight buffers backed by transparent huge pages (2 MiB).
//
// A decode step streams every weight of the model once, and on a few cores the read rate
// depends on the page size (likely because with 4 KiB pages the prefetchers stop at each page
// boundary and every 4 KiB costs a TLB miss). Measured on this project's 2-vCPU machine
// (docs/results.md section 11, "Huge pages"): two threads reading one stream each
// (BM_ReadBandwidth/streams:1) got 21.1 GB/s from 4 KiB pages and 25.8 GB/s from 2 MiB pages;
// the streaming GEMV kernels gain 10-30 %.
// Linux's default THP mode ("madvise") gives huge pages only to ranges that ask for them,
// before their first touch, which the standard allocator never does. HugePageAllocator does:
// an allocation of at least kHugePageBytes is its own mmap, aligned to 2 MiB, with
// madvise(MADV_HUGEPAGE); smaller ones use operator new. The tail of a buffer past its last
// 2 MiB boundary keeps 4 KiB pages, and when the page cache fills memory (after reading a
// 7B checkpoint) the page fault gets 4 KiB pages for part of the rest (measured: 3.4 of
// 5.9 GB huge; MADV_COLLAPSE after the fault raised that to 4.5 GB but no decode gain
// showed in two A/B pairs, so it is not done). A mapped safetensors file gets whatever folios its page cache holds (mostly
// 4 KiB here): decode copies dense matrices into this memory (LoadOptions::copy_dense).
//
// MPQ_HUGE_PAGES=0 in the environment turns it off (plain 4 KiB pages, for A/B measurements).
// Source: Linux Documentation/admin-guide/mm/transhuge.rst (madvise mode, MADV_HUGEPAGE).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace mpq {

/// Size of a transparent huge page on x86-64 and the threshold of HugePageAllocator (bytes).
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

/// True unless MPQ_HUGE_PAGES=0 is set (read once) or the platform has no madvise.
bool huge_pages_enabled();

/// `bytes` of zero-filled memory, 2 MiB aligned and advised MADV_HUGEPAGE when bytes >=
/// kHugePageBytes and huge_pages_enabled(), else from operator new (not zeroed). Throws
/// std::bad_alloc when neither can allocate. Release with huge_free(p, bytes).
void* huge_alloc(std::size_t bytes);
/// Releases huge_alloc(bytes)'s result (same bytes).
void huge_free(void* p, std::size_t bytes) noexcept;

/// std::allocator replacement over huge_alloc / huge_free (stateless; all instances equal).
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() noexcept = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(huge_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { huge_free(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const HugePageAllocator<U>&) const noexcept { return false; }
};

/// A std::vector whose large buffers live in transparent huge pages (file comment).
template <typename T>
using HugeVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace mpq
