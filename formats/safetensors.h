// safetensors reader (mmap, every header field checked) and atomic writer.
//
// Layout (safetensors spec, huggingface/safetensors README "Format"):
//   bytes [0, 8)          u64 little-endian N = header length in bytes
//   bytes [8, 8+N)        UTF-8 JSON object: name -> {"dtype", "shape", "data_offsets": [begin, end)}
//                         plus optional "__metadata__": {string: string}
//   bytes [8+N, EOF)      data region; offsets are relative to its start
// Checks done on open (each failure throws mpq::Error kInput naming the file and field):
//   header length within the file, JSON well formed and an object, every entry has a known
//   dtype / non-negative integer shape / two offsets, begin <= end <= data size, tensors do
//   not overlap, end - begin == dtype size x shape product (overflow-checked), no duplicate
//   names, metadata values are strings.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/output_dir.h"  // write_file_atomic, OutputFile (the writer publishes through them)

namespace mpq {

/// A read-only view of one tensor inside a mapped safetensors file.
/// `data` points at `nbytes` bytes, little-endian, row-major (C order) over `shape`.
/// Valid while the owning SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  std::size_t nbytes = 0;
  std::string file;  ///< path of the file holding it, for error messages

  /// Product of the shape (1 for a scalar, shape []).
  int64_t numel() const;
};

/// One safetensors file mapped with mmap. Not copyable; movable through unique_ptr.
class SafetensorsFile {
 public:
  /// Opens and validates `path`. Throws Error(kInput) on a missing file or any bad header field.
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  /// The tensor called `name`; throws Error(kInput) "<file>: missing tensor '<name>'".
  const TensorView& get(const std::string& name) const;
  /// Tensor names in the order of their data offsets.
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Size of the file in bytes.
  std::size_t file_bytes() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  std::size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// All tensors of a Hugging Face model folder: `model.safetensors`, or the shards listed
/// in `model.safetensors.index.json` ("weight_map": tensor -> shard file). A folder with
/// neither, a shard listed but absent, or a tensor the index names but the shard lacks
/// throws Error(kInput). A single-file path is accepted too.
class TensorStore {
 public:
  /// Opens a model folder (or one .safetensors file).
  static TensorStore open(const std::string& folder_or_file);
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  /// Throws Error(kInput) "<folder>: missing tensor '<name>'".
  const TensorView& get(const std::string& name) const;
  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  /// The files opened (one, or every shard).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

/// Decodes a F32, F16 or BF16 tensor to fp32 (row-major, numel() floats).
/// Throws Error(kInput) naming file and tensor for any other dtype.
std::vector<float> to_f32(const TensorView& t);

/// Decodes elements [first, first + count) of a F32, F16 or BF16 tensor (flat row-major
/// index; count -1 = to the end) to fp32 into out[0..count), straight from the mapping, so
/// nothing but the output is allocated. Threads over large ranges. Errors as to_f32();
/// a range past numel() is Error(kInternal).
void to_f32_into(const TensorView& t, float* out, int64_t first = 0, int64_t count = -1);

/// Builds a safetensors file in memory and writes it atomically: the bytes go to a
/// temporary file in the target folder ("<path>.tmp.<pid>"), are flushed (fsync), then
/// renamed over `path`; on any failure the temporary is removed and Error(kOutput) thrown.
/// Tensors are written in insertion order, data 8-byte aligned (header space-padded).
class SafetensorsWriter {
 public:
  /// Adds a tensor; `bytes.size()` must equal dtype_size(dtype) x product(shape), and the
  /// name must be new (both checked: Error(kInternal) otherwise).
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
           std::vector<uint8_t> bytes);
  /// Convenience: an F32 tensor from floats.
  void add_f32(const std::string& name, const std::vector<int64_t>& shape,
               const std::vector<float>& values);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  /// Writes atomically (see class comment).
  void write(const std::string& path) const;
  /// Total payload bytes added so far.
  std::size_t data_bytes() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Writes all `size` bytes to the open file `fd`, retrying on EINTR and short writes; false
/// with errno set on failure. Shared by the safetensors writers.
bool write_all(int fd, const void* data, std::size_t size);

}  // namespace mpq
