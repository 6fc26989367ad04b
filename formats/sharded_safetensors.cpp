// Sharded, streaming safetensors writer and shard-size parsing (formats/sharded_safetensors.h).
#include "formats/sharded_safetensors.h"

#include <fcntl.h>     // open
#include <unistd.h>    // write, pread, fsync, close, unlink, getpid, copy_file_range

#include <algorithm>          // sort
#include <cctype>             // toupper, isdigit
#include <cerrno>             // errno
#include <cmath>              // floor
#include <cstdio>             // rename
#include <cstring>            // strerror
#include <filesystem>         // path joining
#include <nlohmann/json.hpp>  // header and index
#include <vector>             // shards, buffers

#include "lib/common/error.h"  // Error, throw_output

namespace mpq {

namespace {

/// Appends `n` bytes of `in` (from offset 0) to `out`: copy_file_range (in-kernel, no user
/// buffer) where the file system allows it, else pread/write through a 1 MiB buffer.
/// False with errno set on failure.
bool copy_fd(int in, int out, uint64_t n) {
  loff_t off = 0;
  while (static_cast<uint64_t>(off) < n) {
    const auto left = static_cast<std::size_t>(std::min<uint64_t>(n - static_cast<uint64_t>(off), 1ULL << 30));
    const ssize_t k = ::copy_file_range(in, &off, out, nullptr, left, 0);
    if (k > 0) continue;
    if (k == 0) {
      errno = EIO;  // the data file is shorter than what was written to it
      return false;
    }
    if (errno == EINTR) continue;
    if (errno != ENOSYS && errno != EXDEV && errno != EINVAL && errno != EOPNOTSUPP) return false;
    std::vector<uint8_t> buf(1 << 20);
    while (static_cast<uint64_t>(off) < n) {
      const auto want = static_cast<std::size_t>(std::min<uint64_t>(n - static_cast<uint64_t>(off), buf.size()));
      const ssize_t r = ::pread(in, buf.data(), want, off);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        if (r == 0) errno = EIO;
        return false;
      }
      if (!write_all(out, buf.data(), static_cast<std::size_t>(r))) return false;
      off += r;
    }
  }
  return true;
}

/// dtype_size x product(shape), or Error(kInternal) naming the tensor for a negative or
/// overflowing shape.
uint64_t spec_bytes(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0 || (d != 0 && n > UINT64_MAX / static_cast<uint64_t>(d)))
      throw Error(ExitCode::kInternal, "safetensors writer: tensor '" + name + "': bad shape dimension " +
                                           std::to_string(d));
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

/// Where a tensor of `size` bytes goes, given the open shard's bytes and tensor count.
enum class Placement { kAppend, kNewShard, kAlone };
Placement place(uint64_t open_bytes, std::size_t open_count, uint64_t size, uint64_t max) {
  if (size > max) return Placement::kAlone;
  if (open_count > 0 && open_bytes + size > max) return Placement::kNewShard;
  return Placement::kAppend;
}

}  // namespace

uint64_t parse_shard_size(const std::string& s) {
  const auto bad = [&s](const std::string& why) -> uint64_t {
    throw Error(ExitCode::kUsage, "--max-shard-size '" + s + "': " + why +
                                      " (want bytes, or a number with KB/MB/GB/TB or KiB/MiB/GiB/TiB, e.g. 5GB)");
  };
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string num = s.substr(0, i), unit = s.substr(i);
  if (num.empty() || num == "." || std::count(num.begin(), num.end(), '.') > 1) return bad("no number");
  double value = 0;
  try {
    value = std::stod(num);
  } catch (const std::exception&) {
    return bad("no number");
  }
  std::string up;
  for (char c : unit) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 0;
  if (up.empty()) mult = 1;
  else if (up == "KIB") mult = 1024.0;
  else if (up == "MIB") mult = 1024.0 * 1024;
  else if (up == "GIB") mult = 1024.0 * 1024 * 1024;
  else if (up == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (up == "KB") mult = 1e3;
  else if (up == "MB") mult = 1e6;
  else if (up == "GB") mult = 1e9;
  else if (up == "TB") mult = 1e12;
  else return bad("unknown unit '" + unit + "'");
  if (up.size() == 2 && unit.back() == 'b') mult /= 8;  // transformers: "5Gb" is gigabits
  const double bytes = std::floor(value * mult);
  if (!(bytes >= 1)) return bad("below one byte");
  if (bytes >= 1.8e19) return bad("too large");
  return static_cast<uint64_t>(bytes);
}

std::string shard_file_name(int64_t k, int64_t n) {
  if (n == 1) return "model.safetensors";
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05lld-of-%05lld.safetensors", static_cast<long long>(k),
                static_cast<long long>(n));
  return buf;
}

std::string safetensors_header(const std::vector<TensorSpec>& tensors,
                               const std::map<std::string, std::string>& metadata, const std::string& path,
                               std::size_t min_json_bytes) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.nbytes};
    header[t.name] = std::move(entry);
    offset += t.nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    std::string msg = e.what();
    const std::size_t p = msg.find("] ");
    if (p != std::string::npos) msg = msg.substr(p + 2);
    throw_output(path, "cannot encode header: " + msg);
  }
  // Pad with spaces (valid JSON whitespace) so 8 + N is a multiple of 8.
  if (text.size() < min_json_bytes) text.append(min_json_bytes - text.size(), ' ');
  while ((8 + text.size()) % 8 != 0) text += ' ';
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + text;
}

// --- ShardedSafetensorsWriter ---------------------------------------------------------

struct ShardedSafetensorsWriter::Shard {
  std::string tmp_path;   // header + data, under a temporary name until finish()
  std::string data_path;  // without a plan: the data, copied behind the header on close
  int fd = -1;            // where data is being written (data_path, or tmp_path with a plan)
  std::vector<TensorSpec> tensors;
  uint64_t bytes = 0;
  bool planned = false;
};

ShardedSafetensorsWriter::ShardedSafetensorsWriter(std::string folder, uint64_t max_shard_bytes,
                                                   std::map<std::string, std::string> metadata)
    : folder_(std::move(folder)), max_bytes_(max_shard_bytes), metadata_(std::move(metadata)) {
  MPQ_ASSERT(max_bytes_ >= 1);
}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() {
  if (finished_) return;
  for (auto& s : shards_) {
    if (s->fd >= 0) ::close(s->fd);
    if (!s->data_path.empty()) ::unlink(s->data_path.c_str());
    ::unlink(s->tmp_path.c_str());
  }
}

void ShardedSafetensorsWriter::plan(const std::vector<TensorSpec>& tensors) {
  if (next_ != 0 || !plan_.empty() || finished_)
    throw Error(ExitCode::kInternal, "ShardedSafetensorsWriter::plan after the first tensor");
  plan_ = tensors;
  plan_shard_of_.clear();
  uint64_t open_bytes = 0;
  std::size_t open_count = 0, shard = 0;
  for (TensorSpec& t : plan_) {
    t.nbytes = spec_bytes(t.name, t.dtype, t.shape);
    const Placement p = place(open_bytes, open_count, t.nbytes, max_bytes_);
    if (p == Placement::kAlone) {
      if (open_count > 0) ++shard;
      plan_shard_of_.push_back(shard++);
      open_bytes = 0;
      open_count = 0;
      continue;
    }
    if (p == Placement::kNewShard) {
      ++shard;
      open_bytes = 0;
      open_count = 0;
    }
    plan_shard_of_.push_back(shard);
    open_bytes += t.nbytes;
    ++open_count;
  }
}

void ShardedSafetensorsWriter::open_shard() {
  auto s = std::make_unique<Shard>();
  const std::string tag = std::to_string(shards_.size()) + "." + std::to_string(::getpid());
  s->tmp_path = (std::filesystem::path(folder_) / (".mpq-shard-" + tag + ".safetensors")).string();
  if (!plan_.empty()) {
    // With a plan the header is known: write it, then data goes straight behind it.
    s->planned = true;
    const std::size_t number = shards_.size();
    for (std::size_t i = 0; i < plan_.size(); ++i)
      if (plan_shard_of_[i] == number) s->tensors.push_back(plan_[i]);
    s->fd = ::open(s->tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (s->fd < 0) throw_output(s->tmp_path, std::string("cannot create: ") + std::strerror(errno));
    shards_.push_back(std::move(s));
    Shard& sh = *shards_.back();
    const std::string head = safetensors_header(sh.tensors, metadata_, sh.tmp_path);
    if (!write_all(sh.fd, head.data(), head.size()))
      throw_output(sh.tmp_path, std::string("write: ") + std::strerror(errno));
    sh.tensors.clear();  // refilled as tensors arrive, then compared with the plan
  } else {
    s->data_path = (std::filesystem::path(folder_) / (".mpq-shard-" + tag + ".data")).string();
    s->fd = ::open(s->data_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (s->fd < 0) throw_output(s->data_path, std::string("cannot create: ") + std::strerror(errno));
    shards_.push_back(std::move(s));
  }
  open_ = shards_.back().get();
}

void ShardedSafetensorsWriter::close_shard() {
  Shard& s = *open_;
  open_ = nullptr;
  if (s.planned) {
    if (::fsync(s.fd) != 0) throw_output(s.tmp_path, std::string("fsync: ") + std::strerror(errno));
    if (::close(s.fd) != 0) {
      s.fd = -1;
      throw_output(s.tmp_path, std::string("close: ") + std::strerror(errno));
    }
    s.fd = -1;
    return;
  }
  if (::close(s.fd) != 0) {
    s.fd = -1;
    throw_output(s.data_path, std::string("close: ") + std::strerror(errno));
  }
  s.fd = -1;
  const int in = ::open(s.data_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw_output(s.data_path, std::string("cannot reopen: ") + std::strerror(errno));
  const int out = ::open(s.tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    throw_output(s.tmp_path, std::string("cannot create: ") + std::strerror(err));
  }
  const std::string head = safetensors_header(s.tensors, metadata_, s.tmp_path);
  const bool ok = write_all(out, head.data(), head.size()) && copy_fd(in, out, s.bytes) && ::fsync(out) == 0;
  const int err = errno;
  ::close(in);
  const bool closed = ::close(out) == 0;
  if (!ok || !closed) throw_output(s.tmp_path, std::string("write: ") + std::strerror(ok ? errno : err));
  ::unlink(s.data_path.c_str());
  s.data_path.clear();
}

void ShardedSafetensorsWriter::begin(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  if (finished_ || in_tensor_) throw Error(ExitCode::kInternal, "ShardedSafetensorsWriter::begin out of order");
  if (name.empty() || name == "__metadata__")
    throw Error(ExitCode::kInternal, "safetensors writer: bad tensor name '" + name + "'");
  if (!names_.emplace(name, 0).second)
    throw Error(ExitCode::kInternal, "safetensors writer: duplicate tensor '" + name + "'");
  const uint64_t size = spec_bytes(name, dtype, shape);
  if (!plan_.empty()) {
    if (next_ >= plan_.size() || plan_[next_].name != name || plan_[next_].dtype != dtype ||
        plan_[next_].shape != shape)
      throw Error(ExitCode::kInternal, "safetensors writer: tensor '" + name + "' is not the planned next one");
    const std::size_t shard = plan_shard_of_[next_];
    if (!open_ || shard != shards_.size() - 1) {
      if (open_) close_shard();
      MPQ_ASSERT(shard == shards_.size());
      open_shard();
    }
    alone_ = size > max_bytes_;
  } else {
    const Placement p = open_ ? place(open_->bytes, open_->tensors.size(), size, max_bytes_)
                              : (size > max_bytes_ ? Placement::kAlone : Placement::kNewShard);
    if (p != Placement::kAppend) {
      if (open_) close_shard();
      open_shard();
    }
    alone_ = p == Placement::kAlone;
  }
  open_->tensors.push_back(TensorSpec{name, dtype, shape, size});
  open_->bytes += size;
  total_bytes_ += size;
  tensor_left_ = size;
  in_tensor_ = true;
  ++next_;
}

void ShardedSafetensorsWriter::write(const void* data, std::size_t n) {
  if (!in_tensor_ || n > tensor_left_)
    throw Error(ExitCode::kInternal, "safetensors writer: more bytes than the tensor's shape holds");
  const std::string& file = open_->planned ? open_->tmp_path : open_->data_path;
  if (n > 0 && !write_all(open_->fd, data, n)) throw_output(file, std::string("write: ") + std::strerror(errno));
  tensor_left_ -= n;
}

void ShardedSafetensorsWriter::end() {
  if (!in_tensor_ || tensor_left_ != 0)
    throw Error(ExitCode::kInternal, "safetensors writer: tensor '" + open_->tensors.back().name + "' got " +
                                         std::to_string(open_->tensors.back().nbytes - tensor_left_) +
                                         " bytes, its shape needs " + std::to_string(open_->tensors.back().nbytes));
  in_tensor_ = false;
  if (alone_) close_shard();  // a tensor larger than the limit: nothing joins its shard
  alone_ = false;
}

void ShardedSafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                   const void* data, std::size_t n) {
  begin(name, dtype, shape);
  write(data, n);
  end();
}

ShardedWriteResult ShardedSafetensorsWriter::finish() {
  if (finished_ || in_tensor_) throw Error(ExitCode::kInternal, "ShardedSafetensorsWriter::finish out of order");
  if (!plan_.empty() && next_ != plan_.size())
    throw Error(ExitCode::kInternal, "safetensors writer: " + std::to_string(plan_.size() - next_) +
                                         " planned tensors were never added");
  if (open_) close_shard();
  if (shards_.empty()) {  // no tensor: one empty model.safetensors
    open_shard();
    close_shard();
  }
  ShardedWriteResult res;
  const auto n = static_cast<int64_t>(shards_.size());
  nlohmann::json weight_map = nlohmann::json::object();
  for (int64_t k = 0; k < n; ++k) {
    Shard& s = *shards_[static_cast<std::size_t>(k)];
    const std::string name = shard_file_name(k + 1, n);
    const std::string final_path = (std::filesystem::path(folder_) / name).string();
    if (std::rename(s.tmp_path.c_str(), final_path.c_str()) != 0)
      throw_output(final_path, std::string("cannot rename from ") + s.tmp_path + ": " + std::strerror(errno));
    s.tmp_path = final_path;  // removed by the destructor if a later step fails
    res.files.push_back(name);
    for (const TensorSpec& t : s.tensors) weight_map[t.name] = name;
  }
  res.total_bytes = total_bytes_;
  if (n > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2, ' ', true) + "\n";
    write_file_atomic((std::filesystem::path(folder_) / "model.safetensors.index.json").string(), text.data(),
                      text.size());
    res.indexed = true;
  }
  finished_ = true;
  return res;
}

std::vector<std::string> names_in_write_order(const TensorStore& store) {
  std::vector<const SafetensorsFile*> files;
  for (const auto& f : store.files()) files.push_back(f.get());
  std::sort(files.begin(), files.end(), [](const SafetensorsFile* a, const SafetensorsFile* b) {
    return std::filesystem::path(a->path()).filename() < std::filesystem::path(b->path()).filename();
  });
  std::vector<std::string> out;
  for (const SafetensorsFile* f : files)
    for (const std::string& n : f->names()) out.push_back(n);
  return out;
}

}  // namespace mpq
