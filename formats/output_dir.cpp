// Atomic output folders and files; the protocol is in formats/output_dir.h.
#include "formats/output_dir.h"

#include <fcntl.h>      // open, AT_FDCWD
#include <signal.h>     // kill
#include <stdio.h>      // renameat2, RENAME_EXCHANGE, RENAME_NOREPLACE (glibc >= 2.28)
#include <sys/stat.h>   // lstat
#include <unistd.h>     // write, fsync, close, unlink, getpid

#include <cerrno>       // errno
#include <cstring>      // strerror
#include <filesystem>   // directory listing, remove_all
#include <string>       // std::string
#include <system_error> // std::error_code

#include "lib/common/error.h"  // throw_output

namespace mpq {
namespace {

namespace fs = std::filesystem;

int default_rename(const char* from, const char* to, unsigned flags) {
  return ::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags);
}

OutputDir::RenameFn g_rename = default_rename;

/// `path` without trailing slashes ("/" stays "/"); Error(kOutput) when empty.
std::string strip_trailing_slashes(const std::string& path) {
  if (path.empty()) throw_output("(empty path)", "no output path given");
  std::string s = path;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

/// The folder part of `path` ("." when it has none).
std::string parent_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

/// The last component of `path` (no trailing slash).
std::string name_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// Throws Error(kOutput) unless `folder` is an existing folder.
void require_folder(const std::string& target, const std::string& folder) {
  struct stat st {};
  if (::stat(folder.c_str(), &st) != 0)
    throw_output(target, "parent folder '" + folder + "': " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) throw_output(target, "parent '" + folder + "' is not a folder");
}

/// The pid of "<prefix><digits>" entries, or -1 when `entry` is not one.
long staging_pid(const std::string& entry, const std::string& prefix) {
  if (entry.size() <= prefix.size() || entry.compare(0, prefix.size(), prefix) != 0) return -1;
  const std::string digits = entry.substr(prefix.size());
  if (digits.size() > 9) return -1;  // pid_max is at most 2^22 on Linux
  long pid = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    pid = pid * 10 + (c - '0');
  }
  return pid > 0 ? pid : -1;
}

/// Calls fn(entry path, pid) for each entry of `folder` named "<prefix><pid>" whose pid is
/// dead (never our own). Listing errors are ignored: cleanup is best effort.
template <typename Fn>
void for_each_stale(const std::string& folder, const std::string& prefix, Fn fn) {
  std::error_code ec;
  fs::directory_iterator it(folder, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string entry = it->path().filename().string();
    const long pid = staging_pid(entry, prefix);
    if (pid <= 0 || pid == static_cast<long>(::getpid()) || process_alive(pid)) continue;
    fn(it->path().string());
  }
}

bool exists_nofollow(const std::string& path, struct stat* st) { return ::lstat(path.c_str(), st) == 0; }

/// Best-effort fsync of a folder, so a rename in it is durable.
void sync_folder(const std::string& folder) {
  const int dfd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

bool exchange_unsupported(int err) { return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP; }

}  // namespace

bool process_alive(long pid) {
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

// --- OutputDir -------------------------------------------------------------------------

void OutputDir::set_rename_for_testing(RenameFn fn) { g_rename = fn ? fn : default_rename; }

OutputDir::OutputDir(const std::string& out, bool force) {
  target_ = strip_trailing_slashes(out);
  const std::string parent = parent_of(target_), name = name_of(target_);
  if (name == "." || name == "..") throw_output(out, "not a folder name (give the output folder's own name)");
  require_folder(out, parent);

  // Stale staging of dead runs. A missing target with an ".old-<pid>" beside it is a run
  // killed inside the fallback's two renames: put the old output back first.
  struct stat st {};
  for_each_stale(parent, name + ".old-", [&](const std::string& old) {
    if (!exists_nofollow(target_, &st) && ::rename(old.c_str(), target_.c_str()) == 0) {
      std::fprintf(stderr, "note: restored %s from %s (left by a killed run)\n", target_.c_str(), old.c_str());
      return;
    }
    std::error_code ec;
    fs::remove_all(old, ec);
  });
  for_each_stale(parent, name + ".partial-", [](const std::string& stale) {
    std::error_code ec;
    fs::remove_all(stale, ec);
  });

  if (exists_nofollow(target_, &st)) {
    if (S_ISDIR(st.st_mode)) {
      std::error_code ec;
      const bool empty = fs::is_empty(target_, ec);
      if (ec) throw_output(out, "cannot read the existing folder: " + ec.message());
      if (!empty && !force) throw_output(out, "exists and is not empty (use --force to replace it)");
    } else if (!force) {
      throw_output(out, "exists and is not a folder (use --force to replace it)");
    }
  }

  staging_ = parent + "/" + name + ".partial-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(staging_, ec);  // a stale one of an earlier run that had our pid
  if (::mkdir(staging_.c_str(), 0777) != 0) throw_output(staging_, std::string("cannot create: ") + std::strerror(errno));
}

OutputDir::~OutputDir() {
  if (published_ || staging_.empty()) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void OutputDir::publish() {
  MPQ_ASSERT(!published_);
  const std::string parent = parent_of(target_), name = name_of(target_);
  struct stat st {};
  bool exchange = exists_nofollow(target_, &st);
  if (!exchange) {
    if (g_rename(staging_.c_str(), target_.c_str(), RENAME_NOREPLACE) == 0 ||
        (exchange_unsupported(errno) && g_rename(staging_.c_str(), target_.c_str(), 0) == 0)) {
      published_ = true;
      sync_folder(parent);
      return;
    }
    if (errno != EEXIST && errno != ENOTEMPTY)
      throw_output(target_, std::string("cannot rename the staged folder into place: ") + std::strerror(errno));
    exchange = true;  // created meanwhile: replace it like an existing one
  }
  // One atomic swap: the target is the old or the new output at every instant.
  if (g_rename(staging_.c_str(), target_.c_str(), RENAME_EXCHANGE) == 0) {
    published_ = true;
    sync_folder(parent);
    std::error_code ec;
    fs::remove_all(staging_, ec);  // now the old output; a failure leaves a stale folder a later run removes
    return;
  }
  if (!exchange_unsupported(errno))
    throw_output(target_, std::string("cannot exchange the staged folder with the existing one: ") + std::strerror(errno));

  // Fallback without RENAME_EXCHANGE: two renames; a kill between them leaves the old
  // output at ".old-<pid>", which the next run puts back (see the constructor).
  const std::string old = parent + "/" + name + ".old-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(old, ec);
  if (g_rename(target_.c_str(), old.c_str(), 0) != 0)
    throw_output(target_, std::string("cannot move the existing output aside: ") + std::strerror(errno));
  if (g_rename(staging_.c_str(), target_.c_str(), 0) != 0) {
    const int err = errno;
    if (g_rename(old.c_str(), target_.c_str(), 0) != 0)
      throw_output(target_, std::string("cannot rename the staged folder into place (") + std::strerror(err) +
                                ") nor put the previous output back (" + std::strerror(errno) + "): it is at " + old);
    throw_output(target_, std::string("cannot rename the staged folder into place: ") + std::strerror(err));
  }
  published_ = true;
  sync_folder(parent);
  fs::remove_all(old, ec);
}

// --- OutputFile ------------------------------------------------------------------------

OutputFile::OutputFile(const std::string& path) : path_(path) {
  if (path.empty()) throw_output("(empty path)", "no output path given");
  if (path.back() == '/') throw_output(path, "ends with '/': expected a file name, not a folder");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw_output(path, "is a folder: expected a file name");
  const std::string folder = parent_of(path);
  require_folder(path, folder);
  for_each_stale(folder, name_of(path) + ".tmp.", [](const std::string& stale) { ::unlink(stale.c_str()); });

  tmp_ = path + ".tmp." + std::to_string(::getpid());
  // O_TRUNC replaces a stale temp left by a crashed run with the same pid; O_NOFOLLOW
  // refuses to write through a symlink planted at the temp name.
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (fd_ < 0) throw_output(path, "cannot create '" + tmp_ + "': " + std::strerror(errno));
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void OutputFile::write(const void* bytes, std::size_t size) {
  MPQ_ASSERT(fd_ >= 0 && !committed_);
  const auto* p = static_cast<const uint8_t*>(bytes);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      ::unlink(tmp_.c_str());  // a full disk gets its space back at once
      throw_output(path_, std::string("write: ") + std::strerror(err));
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void OutputFile::commit() {
  MPQ_ASSERT(fd_ >= 0 && !committed_);
  // Removes the temporary, then throws with the saved errno.
  const auto fail = [this](const char* step, int err) {
    ::unlink(tmp_.c_str());
    throw_output(path_, std::string(step) + ": " + std::strerror(err));
  };
  if (::fsync(fd_) != 0) fail("fsync", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close", errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail("rename", errno);
  committed_ = true;
  sync_folder(parent_of(path_));
}

void write_file_atomic(const std::string& path, const void* bytes, std::size_t size) {
  OutputFile f(path);
  f.write(bytes, size);
  f.commit();
}

}  // namespace mpq
