// An output folder written under a staging name and published with one rename, so a
// reader never sees a half-written folder and a failed run leaves nothing at the target.
// (The same discipline as mpq-pack's output; docs/formats.md "Output folders".)
#pragma once

#include <string>

namespace mpq {

/// Stages `<out>.partial-<pid>` beside `out`; publish() renames it to `out`. Without
/// publish() (an exception, a failed step) the destructor removes the staging folder.
class StagedFolder {
 public:
  /// Checks the target before any work: Error(kOutput) naming `out` when its parent folder
  /// does not exist, when `out` exists and is not an empty folder and `force` is false, or
  /// when the staging folder cannot be created.
  StagedFolder(const std::string& out, bool force);
  ~StagedFolder();
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;

  /// The staging folder to write into.
  const std::string& path() const { return stage_; }
  /// Moves the staged folder to the target (replacing it when `force` allowed that).
  /// Error(kOutput) when the rename fails; the staging folder is then removed.
  void publish();

 private:
  std::string out_, stage_;
  bool force_ = false, published_ = false;
};

}  // namespace mpq
