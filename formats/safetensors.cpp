// safetensors reader (mmap + full header validation), model-folder store, fp32 decoding and
// the atomic writer. The byte layout and the list of checks are in formats/safetensors.h.
//
// Limits beyond the spec (each documented where it is enforced):
//   - a header longer than kMaxHeaderBytes is rejected (the reference implementation uses
//     the same 100 MB cap), so a corrupt length never makes us parse a huge region;
//   - duplicate JSON keys are rejected at every depth, not only tensor names;
//   - unknown keys inside a tensor entry are ignored (the reference reader does the same);
//   - shard file names in an index must be plain names inside the model folder.
#include "formats/safetensors.h"

#include <fcntl.h>     // open
#include <sys/mman.h>  // mmap, munmap
#include <sys/stat.h>  // fstat, stat
#include <unistd.h>    // close

#include <algorithm>          // sort
#include <cerrno>             // errno
#include <cstdio>             // snprintf
#include <cstring>            // memcpy, strerror
#include <fstream>            // reading the index file
#include <limits>             // numeric_limits
#include <nlohmann/json.hpp>  // header parsing and writing
#include <optional>           // as_count result
#include <set>                // duplicate-key sets
#include <sstream>            // message formatting
#include <utility>            // move

#include "formats/sharded_safetensors.h"  // safetensors_header
#include "lib/common/error.h"    // Error, throw_input, throw_output, MPQ_ASSERT
#include "lib/numeric/codecs.h"  // fp16_to_fp32, bf16_to_fp32

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
    "mpq reads safetensors data (little-endian) in place: a little-endian host is required");
#endif

namespace mpq {

namespace {

using json = nlohmann::json;

/// Largest header accepted, in bytes (the reference implementation's MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
/// Key of the optional string -> string metadata object in the header.
constexpr const char* kMetadataKey = "__metadata__";

/// `s` in single quotes with control characters escaped, so a hostile name cannot break
/// the one-line error message.
std::string quote_name(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

/// The "tensor 'name': " prefix of per-tensor error messages.
std::string tensor_ctx(const std::string& name) { return "tensor " + quote_name(name) + ": "; }

/// A JSON value in compact form for error messages (long values are cut).
std::string brief(const json& v) {
  std::string s = v.dump(-1, ' ', true, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

/// nlohmann's exception text without its "[json.exception....] " prefix and on one line.
std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  const std::size_t p = s.find("] ");
  if (!s.empty() && s[0] == '[' && p != std::string::npos) s = s.substr(p + 2);
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

/// Parses [begin, end) as JSON, rejecting syntax errors and duplicate object keys (nlohmann
/// would silently keep the last one). Errors name `file`; `what` is the text's role in the
/// file ("header", "index") and `top_level_key` what its top-level keys are ("tensor name").
json parse_json_unique(const char* begin, const char* end, const std::string& file,
                       const char* what, const char* top_level_key) {
  // seen[d] holds the keys of the innermost object opened at depth d; keys arrive at depth
  // d + 1. A new object at depth d replaces the set, so sibling objects do not mix.
  std::vector<std::set<std::string>> seen;
  std::string top;  // the current top-level key, for nested-duplicate messages
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      const auto d = static_cast<std::size_t>(depth);
      if (seen.size() <= d) seen.resize(d + 1);
      seen[d].clear();
    } else if (event == json::parse_event_t::key) {
      const auto d = static_cast<std::size_t>(depth);
      MPQ_ASSERT(d >= 1 && d <= seen.size());
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen[d - 1].insert(key).second) {
        if (d == 1)
          throw_input(file, std::string("duplicate ") + top_level_key + " " + quote_name(key));
        throw_input(file, "duplicate key " + quote_name(key) + " inside " + quote_name(top));
      }
      if (d == 1) top = key;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    throw_input(file, std::string(what) + " is not valid JSON: " + json_error_text(e));
  }
}

/// a * b, or false when it does not fit in uint64_t.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

/// A JSON value as a non-negative integer that fits `max`; std::nullopt otherwise (floats,
/// negatives, strings, values past `max`).
std::optional<uint64_t> as_count(const json& v, uint64_t max) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u <= max) return u;
    return std::nullopt;
  }
  if (v.is_number_integer()) {  // signed: only negatives reach here in practice
    const int64_t i = v.get<int64_t>();
    if (i >= 0 && static_cast<uint64_t>(i) <= max) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

/// Validates one header entry and returns its view (data pointer relative to `data`).
/// `data_bytes` is the size of the data region.
TensorView parse_entry(const std::string& file, const std::string& name, const json& entry,
                       const uint8_t* data, uint64_t data_bytes) {
  const std::string ctx = tensor_ctx(name);
  if (name.empty()) throw_input(file, "empty tensor name");
  if (!entry.is_object()) throw_input(file, ctx + "entry is not an object: " + brief(entry));

  TensorView t;
  t.name = name;
  t.file = file;

  // dtype
  const auto dt = entry.find("dtype");
  if (dt == entry.end()) throw_input(file, ctx + "missing field 'dtype'");
  if (!dt->is_string()) throw_input(file, ctx + "dtype is not a string: " + brief(*dt));
  const auto parsed = parse_dtype(dt->get<std::string>());
  if (!parsed) throw_input(file, ctx + "unknown dtype " + quote_name(dt->get<std::string>()));
  t.dtype = *parsed;

  // shape: non-negative integers whose product (and byte size) fits 64 bits
  const auto sh = entry.find("shape");
  if (sh == entry.end()) throw_input(file, ctx + "missing field 'shape'");
  if (!sh->is_array()) throw_input(file, ctx + "shape is not an array: " + brief(*sh));
  constexpr auto kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t numel = 1;
  for (const json& d : *sh) {
    const auto dim = as_count(d, kInt64Max);
    if (!dim)
      throw_input(file, ctx + "shape " + brief(*sh) + " has a bad entry " + brief(d) +
                            " (want a non-negative integer)");
    if (!checked_mul(numel, *dim, &numel) || numel > kInt64Max)
      throw_input(file, ctx + "shape " + brief(*sh) + " element count overflows 64 bits");
    t.shape.push_back(static_cast<int64_t>(*dim));
  }
  uint64_t nbytes = 0;
  if (!checked_mul(numel, dtype_size(t.dtype), &nbytes))
    throw_input(file, ctx + "shape " + brief(*sh) + " byte size overflows 64 bits");

  // data_offsets: [begin, end) inside the data region, exactly nbytes long
  const auto off = entry.find("data_offsets");
  if (off == entry.end()) throw_input(file, ctx + "missing field 'data_offsets'");
  if (!off->is_array() || off->size() != 2)
    throw_input(file, ctx + "data_offsets is not a pair [begin, end]: " + brief(*off));
  const auto begin = as_count((*off)[0], std::numeric_limits<uint64_t>::max());
  const auto end = as_count((*off)[1], std::numeric_limits<uint64_t>::max());
  if (!begin || !end)
    throw_input(file, ctx + "data_offsets " + brief(*off) + " are not non-negative integers");
  const std::string range =
      "data_offsets [" + std::to_string(*begin) + ", " + std::to_string(*end) + ")";
  if (*begin > *end) throw_input(file, ctx + range + " begin after end");
  if (*end > data_bytes)
    throw_input(file,
                ctx + range + " end past data region (" + std::to_string(data_bytes) + " bytes)");
  if (*end - *begin != nbytes)
    throw_input(file, ctx + range + " holds " + std::to_string(*end - *begin) +
                          " bytes but dtype " + dtype_name(t.dtype) + " x shape " + brief(*sh) +
                          " needs " + std::to_string(nbytes));
  t.data = data + *begin;
  t.nbytes = static_cast<std::size_t>(nbytes);
  return t;
}

/// Reads a whole (small) text file; Error(kInput) naming it when it cannot be read.
std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, std::string("cannot open: ") + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_input(path, "read failed");
  return ss.str();
}

/// stat() wrapper: true and `*st` filled when `path` exists.
bool stat_path(const std::string& path, struct stat* st) { return ::stat(path.c_str(), st) == 0; }

/// Little-endian u64 from 8 bytes.
uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

bool write_all(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// --- TensorView -----------------------------------------------------------

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// --- SafetensorsFile --------------------------------------------------------

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_input(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_input(path, std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_input(path, "not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw_input(
        path, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file referenced
  if (map == MAP_FAILED) throw_input(path, std::string("cannot mmap: ") + std::strerror(map_err));
  f->map_ = map;  // from here the destructor unmaps, also when validation throws
  f->size_ = static_cast<std::size_t>(size);

  // Header length: compared against size - 8 (no overflow: size >= 8) and the cap.
  const auto* bytes = static_cast<const uint8_t*>(map);
  const uint64_t n = load_le64(bytes);
  if (n > size - 8)
    throw_input(path, "header length " + std::to_string(n) + " past end of file (" +
                          std::to_string(size) + " bytes)");
  if (n > kMaxHeaderBytes)
    throw_input(path, "header length " + std::to_string(n) + " exceeds the " +
                          std::to_string(kMaxHeaderBytes) + "-byte limit");

  const char* text = reinterpret_cast<const char*>(bytes + 8);
  const json header = parse_json_unique(text, text + n, path, "header", "tensor name");
  if (!header.is_object()) throw_input(path, "header is not a JSON object: " + brief(header));

  const uint8_t* data = bytes + 8 + n;
  const uint64_t data_bytes = size - 8 - n;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object())
        throw_input(path, std::string(kMetadataKey) + " is not an object: " + brief(value));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          throw_input(path, std::string(kMetadataKey) + " value of " + quote_name(mk) +
                                " is not a string: " + brief(mv));
        f->metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    f->tensors_.emplace(key, parse_entry(path, key, value, data, data_bytes));
  }

  // Overlap: sort non-empty ranges by begin; each must start at or after the furthest end
  // seen so far. Zero-byte tensors occupy no bytes and cannot overlap anything.
  std::vector<const TensorView*> by_offset;
  for (const auto& kv : f->tensors_) {
    if (kv.second.nbytes > 0) by_offset.push_back(&kv.second);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorView* a, const TensorView* b) {
    return a->data != b->data ? a->data < b->data : a->name < b->name;
  });
  // "[begin, end)" of a view, relative to the data region, for messages.
  const auto range = [data](const TensorView* v) {
    const auto begin = static_cast<uint64_t>(v->data - data);
    return "[" + std::to_string(begin) + ", " + std::to_string(begin + v->nbytes) + ")";
  };
  const TensorView* furthest = nullptr;  // the range reaching furthest so far
  for (const TensorView* t : by_offset) {
    if (furthest && t->data < furthest->data + furthest->nbytes)
      throw_input(path, tensor_ctx(t->name) + "data_offsets " + range(t) + " overlap tensor " +
                            quote_name(furthest->name) + " " + range(furthest));
    if (!furthest || t->data + t->nbytes > furthest->data + furthest->nbytes) furthest = t;
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw_input(path_, "missing tensor " + quote_name(name));
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<const TensorView*> views;
  for (const auto& kv : tensors_) views.push_back(&kv.second);
  std::sort(views.begin(), views.end(), [](const TensorView* a, const TensorView* b) {
    return a->data != b->data ? a->data < b->data : a->name < b->name;
  });
  std::vector<std::string> out;
  out.reserve(views.size());
  for (const TensorView* v : views) out.push_back(v->name);
  return out;
}

// --- TensorStore --------------------------------------------------------------

TensorStore TensorStore::open(const std::string& folder_or_file) {
  TensorStore store;
  store.path_ = folder_or_file;
  struct stat st {};
  if (!stat_path(folder_or_file, &st))
    throw_input(folder_or_file, std::string("cannot open: ") + std::strerror(errno));

  // Adds every tensor of `file` to the index; a name already indexed is a duplicate.
  const auto add_file = [&store](std::unique_ptr<SafetensorsFile> file) {
    for (const std::string& name : file->names()) {
      const TensorView& view = file->get(name);
      const auto [it, inserted] = store.index_.emplace(name, &view);
      if (!inserted)
        throw_input(file->path(), tensor_ctx(name) + "also present in " + it->second->file);
    }
    store.files_.push_back(std::move(file));
  };

  if (!S_ISDIR(st.st_mode)) {
    add_file(SafetensorsFile::open(folder_or_file));
    return store;
  }

  const std::string single = folder_or_file + "/model.safetensors";
  const std::string index_path = folder_or_file + "/model.safetensors.index.json";
  struct stat ignored {};
  // A single model.safetensors wins when both exist (transformers looks for it first).
  if (stat_path(single, &ignored)) {
    add_file(SafetensorsFile::open(single));
    return store;
  }
  if (!stat_path(index_path, &ignored))
    throw_input(folder_or_file, "no model.safetensors or model.safetensors.index.json in folder");

  // Sharded model: weight_map names each tensor's shard. Every tensor of every listed shard
  // is indexed, also one the map does not mention; a name in two shards is an error.
  const std::string text = read_text_file(index_path);
  const json index =
      parse_json_unique(text.data(), text.data() + text.size(), index_path, "index", "key");
  if (!index.is_object()) throw_input(index_path, "not a JSON object");
  const auto wm = index.find("weight_map");
  if (wm == index.end()) throw_input(index_path, "missing field 'weight_map'");
  if (!wm->is_object() || wm->empty())
    throw_input(index_path, "weight_map is not a non-empty object: " + brief(*wm));

  std::map<std::string, std::size_t> shard_of_file;         // shard file name -> files_ position
  std::vector<std::pair<std::string, std::string>> listed;  // (tensor, shard)
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string())
      throw_input(index_path,
                  "weight_map " + tensor_ctx(tensor) + "shard is not a string: " + brief(shard));
    const std::string name = shard.get<std::string>();
    // Shards must live in the model folder: a plain file name, no path.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
      throw_input(index_path, "weight_map " + tensor_ctx(tensor) + "shard " + quote_name(name) +
                                  " is not a plain file name");
    listed.emplace_back(tensor, name);
    if (shard_of_file.count(name)) continue;
    const std::string shard_path = folder_or_file + "/" + name;
    if (!stat_path(shard_path, &ignored))
      throw_input(index_path, "weight_map " + tensor_ctx(tensor) + "shard " + quote_name(name) +
                                  " does not exist (" + shard_path + ")");
    shard_of_file[name] = store.files_.size();
    add_file(SafetensorsFile::open(shard_path));
  }
  for (const auto& [tensor, shard] : listed) {
    const SafetensorsFile& file = *store.files_[shard_of_file.at(shard)];
    if (!file.has(tensor))
      throw_input(file.path(),
                  "missing tensor " + quote_name(tensor) + " (listed in " + index_path + ")");
  }
  return store;
}

const TensorView& TensorStore::get(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw_input(path_, "missing tensor " + quote_name(name));
  return *it->second;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& kv : index_) out.push_back(kv.first);  // std::map: already sorted
  return out;
}

// --- Decoding -------------------------------------------------------------------

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  to_f32_into(t, out.data());
  return out;
}

void to_f32_into(const TensorView& t, float* out, int64_t first, int64_t count) {
  const int64_t numel = t.numel();
  MPQ_ASSERT(t.nbytes == static_cast<std::size_t>(numel) * dtype_size(t.dtype));
  if (count < 0) count = numel - first;
  if (first < 0 || count < 0 || first + count > numel)
    throw Error(ExitCode::kInternal, "to_f32_into: range past tensor '" + t.name + "'");
  // The data may sit at any byte offset: read through memcpy, never through a cast pointer.
  switch (t.dtype) {
    case DType::F32:
      if (count > 0) std::memcpy(out, t.data + 4 * first, static_cast<std::size_t>(count) * sizeof(float));
      break;
    case DType::F16:
    case DType::BF16: {
      const bool half = t.dtype == DType::F16;
      const uint8_t* src = t.data + 2 * first;
#pragma omp parallel for schedule(static) if (count >= (int64_t{1} << 20))
      for (int64_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, sizeof bits);
        out[i] = half ? fp16_to_fp32(bits) : bf16_to_fp32(bits);
      }
      break;
    }
    default:
      throw_input(t.file, tensor_ctx(t.name) + "dtype " + dtype_name(t.dtype) +
                              " cannot be read as floats (want F32, F16 or BF16)");
  }
}

// --- Writer -----------------------------------------------------------------------

void SafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            std::vector<uint8_t> bytes) {
  if (name.empty() || name == kMetadataKey)
    throw Error(ExitCode::kInternal, "SafetensorsWriter: bad tensor name " + quote_name(name));
  for (const Entry& e : entries_) {
    if (e.name == name)
      throw Error(ExitCode::kInternal, "SafetensorsWriter: duplicate tensor " + quote_name(name));
  }
  uint64_t want = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0 || !checked_mul(want, static_cast<uint64_t>(d), &want))
      throw Error(ExitCode::kInternal, "SafetensorsWriter: " + tensor_ctx(name) +
                                           "bad shape dimension " + std::to_string(d));
  }
  if (bytes.size() != want)
    throw Error(ExitCode::kInternal, "SafetensorsWriter: " + tensor_ctx(name) + "got " +
                                         std::to_string(bytes.size()) + " bytes, shape needs " +
                                         std::to_string(want));
  entries_.push_back(Entry{name, dtype, shape, std::move(bytes)});
}

void SafetensorsWriter::add_f32(const std::string& name, const std::vector<int64_t>& shape,
                                const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  add(name, DType::F32, shape, std::move(bytes));
}

std::size_t SafetensorsWriter::data_bytes() const {
  std::size_t total = 0;
  for (const Entry& e : entries_) total += e.bytes.size();
  return total;
}

void SafetensorsWriter::write(const std::string& path) const {
  std::vector<TensorSpec> specs;
  std::size_t offset = 0;
  for (const Entry& e : entries_) {
    specs.push_back(TensorSpec{e.name, e.dtype, e.shape, e.bytes.size()});
    offset += e.bytes.size();
  }
  const std::string head = safetensors_header(specs, metadata_, path);
  std::vector<uint8_t> buf(head.size() + offset);
  std::memcpy(buf.data(), head.data(), head.size());
  uint8_t* out = buf.data() + head.size();
  for (const Entry& e : entries_) {
    if (!e.bytes.empty()) std::memcpy(out, e.bytes.data(), e.bytes.size());
    out += e.bytes.size();
  }
  write_file_atomic(path, buf.data(), buf.size());
}

}  // namespace mpq
