#include "lib/common/scratch_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "lib/common/error.h"

namespace mpq {

ScratchFile::ScratchFile(const std::string& folder) : folder_(folder) {
#ifdef O_TMPFILE
  fd_ = ::open(folder.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
  if (fd_ < 0) {  // no O_TMPFILE here: a named file, unlinked at once
    std::string templ = folder + "/.mpq-scratch-XXXXXX";
    std::vector<char> name(templ.begin(), templ.end());
    name.push_back('\0');
    fd_ = ::mkstemp(name.data());
    if (fd_ < 0) throw_output(folder, std::string("cannot create a scratch file: ") + std::strerror(errno));
    ::unlink(name.data());
  }
}

ScratchFile::~ScratchFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ScratchFile::append(const void* p, std::size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t k = ::pwrite(fd_, b, n, static_cast<off_t>(size_));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) throw_output(folder_, std::string("scratch file write: ") + std::strerror(errno));
    b += k;
    n -= static_cast<std::size_t>(k);
    size_ += static_cast<uint64_t>(k);
  }
}

void ScratchFile::read(uint64_t offset, void* p, std::size_t n) const {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    const ssize_t k = ::pread(fd_, b, n, static_cast<off_t>(offset));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) throw_output(folder_, std::string("scratch file read: ") + (k == 0 ? "short read" : std::strerror(errno)));
    b += k;
    n -= static_cast<std::size_t>(k);
    offset += static_cast<uint64_t>(k);
  }
}

}  // namespace mpq
