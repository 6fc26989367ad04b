// A temporary file for data too large to keep in memory (e.g. FGMP block scores of a 7B
// model, 3.2 GB): written sequentially, read back with pread.
#pragma once

#include <cstdint>
#include <string>

namespace mpq {

/// Created in `folder` and unlinked at once (O_TMPFILE where the file system has it), so
/// nothing is left behind, also after a crash. Not copyable. Errors are Error(kOutput)
/// naming the folder.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& folder);
  ~ScratchFile();
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  /// Appends n bytes.
  void append(const void* p, std::size_t n);
  /// Reads n bytes at `offset` (< size()); Error(kOutput) on a short read.
  void read(uint64_t offset, void* p, std::size_t n) const;
  /// Bytes appended so far.
  uint64_t size() const { return size_; }

 private:
  std::string folder_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace mpq
