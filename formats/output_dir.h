// Atomic publication of a tool's output: a folder (mpq-pack --out) or one file (safetensors,
// JSON, CSV). Every mpq writer goes through this module, so the rules below hold everywhere.
//
// Folder output (OutputDir), for target T = "<parent>/<name>":
//   1. Checks before any work (Error kOutput, exit 4): T given with a trailing '/' is the
//      folder T; the parent folder must exist; T must not exist, or be an empty folder,
//      unless `force`; a T that is not a folder (a regular file, even an empty one) also
//      needs `force`.
//   2. Stale staging of dead runs is cleaned: "<parent>/<name>.partial-<pid>" and
//      "<parent>/<name>.old-<pid>" whose <pid> is not a running process (kill(pid, 0) fails
//      with ESRCH) are removed; an ".old-<pid>" left while T is missing (a run killed in the
//      middle of the non-atomic fallback below) is renamed back to T instead, so nothing
//      the user had is lost. Entries of live pids (another run) are left alone.
//   3. The output is built in "<parent>/<name>.partial-<pid>" (created fresh).
//   4. publish(): T missing -> renameat2(RENAME_NOREPLACE) (rename(2) where the file system
//      lacks the flag). T present (force, or an empty folder) -> renameat2(RENAME_EXCHANGE)
//      swaps the staged folder and T in one step, so T is the old or the new output at
//      every instant, also when the process is killed; the old output, now at the staging
//      name, is then removed. Where RENAME_EXCHANGE is not supported (EINVAL / ENOSYS /
//      EOPNOTSUPP: some network and FUSE file systems) the fallback is two renames,
//      T -> "<name>.old-<pid>" then staging -> T; a failing second rename is rolled back,
//      and a failing rollback is Error(kOutput) naming where the old output now is.
//   The destructor removes the staging folder unless publish() succeeded.
//
// File output (OutputFile, write_file_atomic), for target F:
//   a trailing '/' or an existing folder at F is Error(kOutput); the parent must exist; bytes
//   go to "F.tmp.<pid>" (O_NOFOLLOW), are fsync'ed, then rename(2)d over F (atomic for
//   files); stale "F.tmp.<pid>" of dead pids are removed first. An existing F is replaced
//   (JSON and safetensors outputs are overwritten without --force, as before).
//
// Limits: the pid test is local to this machine and pid namespace (a staging folder of a
// live run on another NFS client looks dead); a pid reused by an unrelated live process keeps
// its stale folder until that process exits. Sources: rename(2), renameat2(2), kill(2).
#pragma once

#include <cstddef>
#include <string>

namespace mpq {

/// A staged output folder published atomically (see the file comment).
class OutputDir {
 public:
  /// Validates `out` and creates the staging folder. Throws Error(kOutput) naming `out` when
  /// it exists and is not an empty folder without `force`, when its parent folder is
  /// missing, or when the staging folder cannot be created.
  OutputDir(const std::string& out, bool force);
  /// Removes the staging folder unless publish() succeeded.
  ~OutputDir();
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;

  /// The normalised target (no trailing '/').
  const std::string& path() const { return target_; }
  /// The folder to write into ("<target>.partial-<pid>").
  const std::string& staging() const { return staging_; }
  /// Moves the staged folder to path() atomically. Throws Error(kOutput) when it cannot;
  /// the previous output is then still at path() (or, if even the rollback of the fallback
  /// failed, at the ".old-<pid>" path the message names).
  void publish();

  /// Test seam: the renameat2 used by publish(), (old, new, flags) -> 0 or -1 with errno.
  using RenameFn = int (*)(const char* from, const char* to, unsigned flags);
  /// Replaces the rename function (nullptr restores renameat2(AT_FDCWD, ...)). Tests only.
  static void set_rename_for_testing(RenameFn fn);

 private:
  std::string target_, staging_;
  bool published_ = false;
};

/// A file written through a temporary and renamed over its target on commit() (see the
/// file comment). Not copyable.
class OutputFile {
 public:
  /// Checks `path` and creates "<path>.tmp.<pid>". Throws Error(kOutput) naming `path`.
  explicit OutputFile(const std::string& path);
  /// Closes and removes the temporary unless commit() succeeded.
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  /// Appends `size` bytes (short writes and EINTR retried). Throws Error(kOutput).
  void write(const void* bytes, std::size_t size);
  /// fsync, close, rename over the target, fsync its folder (best effort). Throws
  /// Error(kOutput); the temporary is removed on failure.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Writes `bytes` to `path` atomically through OutputFile. Throws Error(kOutput) naming the
/// path. Shared by every writer in mpq.
void write_file_atomic(const std::string& path, const void* bytes, std::size_t size);

/// True unless `pid` is certainly not running (kill(pid, 0) fails with ESRCH). Used for
/// stale staging cleanup; exposed for tests.
bool process_alive(long pid);

}  // namespace mpq
