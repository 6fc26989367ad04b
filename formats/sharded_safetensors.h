// Streaming, sharded safetensors output as Hugging Face writes it, and shard-size parsing.
//
// Layout of a model folder written here (transformers' save_pretrained with
// safe_serialization, huggingface_hub's split_state_dict_into_shards_factory):
//   one shard          model.safetensors
//   N > 1 shards       model-00001-of-0000N.safetensors ... model-0000N-of-0000N.safetensors
//                      plus model.safetensors.index.json:
//                        {"metadata": {"total_size": <payload bytes of all tensors>},
//                         "weight_map": {<tensor>: <shard file>, ...}}
//                      keys sorted, 2-space indent, ASCII escapes, newline at the end
//                      (json.dumps(index, indent=2, sort_keys=True) + "\n").
// Split rule (huggingface_hub's): tensors are taken in the order they are added; a tensor
// that would take the current shard past max_shard_bytes starts a new shard; a tensor
// larger than max_shard_bytes gets a shard of its own. One deviation, so that shard order
// is always write order (which merges rely on): that shard is numbered where the tensor
// arrives (the open shard is closed first), where huggingface_hub numbers it before the
// shard it interrupted. Each shard is an ordinary safetensors file (formats/safetensors.h:
// tensors in insertion order, data 8-byte aligned, header space-padded) with the same
// __metadata__.
//
// Memory: one tensor is never held. Bytes go to disk as they are written; without a plan
// (sizes unknown in advance, e.g. mpq-pack) a shard's data is streamed into a temporary
// file and copied behind its header when the shard closes (copy_file_range, in-kernel);
// with a plan (every tensor's dtype and shape given up front, e.g. a random model or a
// merge) headers are written first and data lands in place. Both give the same bytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/safetensors.h"

namespace mpq {

/// Default shard limit, as transformers' save_pretrained and huggingface_hub: "5GB" = 5e9.
constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ULL;

/// Parses a shard size the way transformers' convert_file_size_to_int reads
/// save_pretrained(max_shard_size=...): a plain byte count ("1000000"); a number with a
/// binary unit KiB/MiB/GiB/TiB (case-insensitive, x 2^10 ...); or with a decimal unit
/// KB/MB/GB/TB (case-insensitive, x 10^3 ...), where a lower-case final "b" means bits
/// ("5Gb" = 625e6 bytes) as in transformers. The number may have a fraction ("1.5GB", as
/// huggingface_hub's parse_size_to_int allows); the result is rounded down to bytes.
/// Throws Error(kUsage) "--max-shard-size '<s>': ..." for anything else or a size below 1.
uint64_t parse_shard_size(const std::string& s);

/// "model.safetensors" when n == 1, else "model-<k:05d>-of-<n:05d>.safetensors" (k from 1).
std::string shard_file_name(int64_t k, int64_t n);

/// One tensor of a safetensors header: name, element type, shape and payload bytes
/// (dtype_size x product of shape).
struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
};

/// The bytes that precede a safetensors file's data: u64 little-endian header length, the
/// JSON header (metadata first, then tensors in the given order with consecutive
/// data_offsets) padded with spaces to a multiple of 8 bytes, and to at least
/// `min_json_bytes` (a reserved header length). `path` names errors: Error(kOutput) when a
/// name is not valid UTF-8. Shared by every safetensors writer.
std::string safetensors_header(const std::vector<TensorSpec>& tensors,
                               const std::map<std::string, std::string>& metadata,
                               const std::string& path, std::size_t min_json_bytes = 0);

/// What ShardedSafetensorsWriter::finish() wrote.
struct ShardedWriteResult {
  std::vector<std::string> files;   ///< shard file names, in order
  uint64_t total_bytes = 0;         ///< payload bytes of every tensor ("total_size")
  bool indexed = false;             ///< model.safetensors.index.json written
};

/// Writes tensors one at a time into `folder` as HF sharded safetensors (see the file
/// comment). The folder must exist and should be a staging folder: files appear under
/// temporary names ".mpq-shard-*" and get their final names only in finish(). Not
/// thread-safe. On destruction without finish() every file it created is removed.
class ShardedSafetensorsWriter {
 public:
  /// `max_shard_bytes` >= 1; `metadata` goes into every shard's __metadata__.
  ShardedSafetensorsWriter(std::string folder, uint64_t max_shard_bytes,
                           std::map<std::string, std::string> metadata);
  ~ShardedSafetensorsWriter();
  ShardedSafetensorsWriter(const ShardedSafetensorsWriter&) = delete;
  ShardedSafetensorsWriter& operator=(const ShardedSafetensorsWriter&) = delete;

  /// Optional, before the first tensor: every tensor that will be added, in order. Headers
  /// are then written up front and data goes straight into place (no copy). The tensors
  /// added afterwards must match the plan exactly (Error(kInternal) otherwise).
  void plan(const std::vector<TensorSpec>& tensors);

  /// Starts tensor `name` (new, not "__metadata__"); its dtype_size x product(shape) bytes
  /// follow through write() calls, then end(). Error(kInternal) for a bad name, a
  /// duplicate or a bad shape; Error(kOutput) naming the file for I/O failures.
  void begin(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  /// Appends bytes of the current tensor.
  void write(const void* data, std::size_t n);
  /// Ends the current tensor; Error(kInternal) when the bytes written differ from its size.
  void end();
  /// begin() + write() + end().
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
           const void* data, std::size_t n);

  /// Closes the last shard, renames the shards to their final names and writes the index
  /// when there is more than one shard (with no tensor at all: one empty model.safetensors).
  ShardedWriteResult finish();

  /// Payload bytes added so far.
  uint64_t data_bytes() const { return total_bytes_; }

 private:
  struct Shard;
  void open_shard();
  void close_shard();
  std::string folder_;
  uint64_t max_bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<Shard>> shards_;  // closed and open shards
  Shard* open_ = nullptr;
  std::vector<TensorSpec> plan_;                 // empty without a plan
  std::vector<std::size_t> plan_shard_of_;       // plan index -> shard number
  std::size_t next_ = 0;                         // tensors begun so far
  bool in_tensor_ = false;
  bool alone_ = false;                           // current tensor has a shard of its own
  uint64_t tensor_left_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
  std::map<std::string, int> names_;             // every tensor name seen -> 0
};

/// Tensor names of a store in the order they were written: shard files sorted by name
/// (model-00001-of-... first), each in data-offset order.
std::vector<std::string> names_in_write_order(const TensorStore& store);

}  // namespace mpq
