#include "formats/staged_folder.h"

#include <unistd.h>  // getpid

#include <filesystem>
#include <system_error>

#include "lib/common/error.h"

namespace mpq {
namespace fs = std::filesystem;

StagedFolder::StagedFolder(const std::string& out, bool force) : out_(out), force_(force) {
  std::string trimmed = out;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  out_ = trimmed;
  const fs::path target(out_);
  std::error_code ec;
  const fs::path parent = fs::absolute(target, ec).parent_path();
  if (ec || !fs::is_directory(parent)) throw_output(out, "parent folder does not exist");
  if (fs::exists(target, ec)) {
    if (!fs::is_directory(target, ec)) {
      if (!force) throw_output(out, "exists and is not a folder (use --force to replace it)");
    } else if (!fs::is_empty(target, ec) && !force) {
      throw_output(out, "exists and is not empty (use --force to replace it)");
    }
  }
  stage_ = (parent / (target.filename().string() + ".partial-" + std::to_string(::getpid()))).string();
  fs::remove_all(stage_, ec);
  if (!fs::create_directory(stage_, ec)) throw_output(stage_, "cannot create: " + ec.message());
}

StagedFolder::~StagedFolder() {
  if (published_) return;
  std::error_code ec;
  fs::remove_all(stage_, ec);
}

void StagedFolder::publish() {
  std::error_code ec;
  const fs::path target(out_);
  fs::path old;
  if (fs::exists(target, ec)) {
    old = fs::path(stage_ + ".old");
    fs::remove_all(old, ec);
    fs::rename(target, old, ec);
    if (ec) throw_output(out_, "cannot move the existing output aside: " + ec.message());
  }
  fs::rename(stage_, target, ec);
  if (ec) {
    std::error_code ec2;
    if (!old.empty()) fs::rename(old, target, ec2);
    throw_output(out_, "cannot rename the staged folder into place: " + ec.message());
  }
  published_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace mpq
