// Tests for formats/dtype and formats/safetensors: writer/reader round trips, sharded model
// folders, one test per hostile header (files built byte by byte, independent of the writer)
// and the atomic-write guarantees.
#include <gtest/gtest.h>
#include <sys/stat.h>  // mkdir, stat
#include <unistd.h>    // getpid

#include <cstdint>
#include <cstdlib>     // mkdtemp
#include <cstring>     // memcpy
#include <filesystem>  // remove_all, directory_iterator
#include <fstream>
#include <initializer_list>
#include <iterator>  // istreambuf_iterator
#include <map>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"

namespace mpq {
namespace {

const DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2,
                            DType::U8,  DType::I8,  DType::I16,  DType::I32,     DType::I64};

/// Each test gets its own mkdtemp folder under /tmp, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mpq_safetensors_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
};

void write_raw(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<uint8_t> read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

/// A safetensors file by hand: u64 LE `header_len` (default: the JSON's size), the JSON
/// text, then `data_bytes` zero bytes.
std::vector<uint8_t> raw_file(const std::string& header_json, std::size_t data_bytes,
                              uint64_t header_len = UINT64_MAX) {
  if (header_len == UINT64_MAX) header_len = header_json.size();
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<uint8_t>(header_len >> (8 * i));
  out.insert(out.end(), header_json.begin(), header_json.end());
  out.insert(out.end(), data_bytes, 0);
  return out;
}

/// Expects `fn` to throw mpq::Error with `code` and a message containing every string in `parts`.
template <typename Fn>
void expect_error(Fn fn, ExitCode code, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no mpq::Error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

/// Writes a hand-built file called `name` and expects SafetensorsFile::open to reject it with
/// kInput, naming the file and each of `parts`.
void expect_bad_file(const std::string& dir, const std::string& name,
                     const std::vector<uint8_t>& bytes, std::initializer_list<std::string> parts) {
  const std::string p = dir + "/" + name;
  write_raw(p, bytes);
  expect_error([&] { SafetensorsFile::open(p); }, ExitCode::kInput, {name});
  expect_error([&] { SafetensorsFile::open(p); }, ExitCode::kInput, parts);
}

std::vector<uint8_t> pattern_bytes(std::size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + 31 * i + (i >> 8));
  return b;
}

uint64_t header_length(const std::vector<uint8_t>& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[static_cast<std::size_t>(i)];
  return n;
}

// --- dtype -------------------------------------------------------------------

TEST(DTypeTest, NamesAndSizes) {
  for (DType t : kAllDTypes) {
    const auto back = parse_dtype(dtype_name(t));
    ASSERT_TRUE(back.has_value()) << dtype_name(t);
    EXPECT_EQ(*back, t);
  }
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::F8_E5M2), 1u);
  EXPECT_EQ(dtype_size(DType::U8), 1u);
  EXPECT_EQ(dtype_size(DType::I8), 1u);
  EXPECT_EQ(dtype_size(DType::I16), 2u);
  EXPECT_EQ(dtype_size(DType::I32), 4u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_STREQ(dtype_name(DType::F8_E4M3), "F8_E4M3");
  EXPECT_FALSE(parse_dtype("F128").has_value());
  EXPECT_FALSE(parse_dtype("f32").has_value());
  EXPECT_FALSE(parse_dtype("").has_value());
}

// --- round trips ---------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripEveryDType) {
  SafetensorsWriter w;
  struct Want {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Want> want;
  uint8_t seed = 1;
  for (DType t : kAllDTypes) {
    const std::vector<int64_t> shape = {3, 5};
    want.push_back(
        {std::string("t.") + dtype_name(t), t, shape, pattern_bytes(15 * dtype_size(t), seed++)});
  }
  want.push_back({"scalar", DType::I32, {}, pattern_bytes(4, 9)});
  want.push_back({"empty", DType::F16, {0, 7}, {}});
  for (const Want& x : want) w.add(x.name, x.dtype, x.shape, x.bytes);
  w.set_metadata("format", "pt");
  w.set_metadata("mpq.note", "round trip");
  std::size_t total = 0;
  for (const Want& x : want) total += x.bytes.size();
  EXPECT_EQ(w.data_bytes(), total);

  const std::string p = path("all.safetensors");
  w.write(p);

  // Data starts at an 8-byte-aligned file offset; metadata comes first in the header.
  const std::vector<uint8_t> raw = read_raw(p);
  const uint64_t n = header_length(raw);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + total);
  const std::string header(raw.begin() + 8, raw.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  EXPECT_EQ(header.rfind("{\"__metadata__\"", 0), 0u) << header;

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  EXPECT_EQ(f->file_bytes(), raw.size());
  EXPECT_EQ(f->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"mpq.note", "round trip"}}));
  const uint8_t* first = nullptr;
  for (const Want& x : want) {
    ASSERT_TRUE(f->has(x.name)) << x.name;
    const TensorView& v = f->get(x.name);
    EXPECT_EQ(v.name, x.name);
    EXPECT_EQ(v.dtype, x.dtype) << x.name;
    EXPECT_EQ(v.shape, x.shape) << x.name;
    EXPECT_EQ(v.nbytes, x.bytes.size()) << x.name;
    EXPECT_EQ(v.file, p);
    EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.nbytes), x.bytes) << x.name;
    if (!first) first = v.data;
  }
  EXPECT_EQ(f->get("scalar").numel(), 1);
  EXPECT_EQ(f->get("empty").numel(), 0);
  EXPECT_EQ(f->get("t.F32").numel(), 15);
  // The first tensor begins the data region, which is 8-aligned within the mapping.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 8, 0u);

  // names() follows data order, which is insertion order for our writer ("empty" has 0
  // bytes at the very end, tied with nothing).
  std::vector<std::string> names;
  for (const Want& x : want) names.push_back(x.name);
  EXPECT_EQ(f->names(), names);
}

TEST_F(SafetensorsTest, RoundTripNoMetadataNoTensors) {
  SafetensorsWriter w;
  w.write(path("empty.safetensors"));
  auto f = SafetensorsFile::open(path("empty.safetensors"));
  EXPECT_TRUE(f->names().empty());
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_EQ(f->file_bytes() % 8, 0u);
}

TEST_F(SafetensorsTest, ToF32DecodesFloatTypesAtUnalignedOffsets) {
  SafetensorsWriter w;
  // 3 x F16 = 6 bytes, so every later tensor starts at an unaligned offset.
  const uint16_t f16[3] = {0x3C00, 0xC000, 0x3800};  // 1, -2, 0.5
  std::vector<uint8_t> b16(6);
  std::memcpy(b16.data(), f16, 6);
  w.add("h", DType::F16, {3}, b16);
  w.add_f32("f", {2, 2}, {1.5f, -3.25f, 0.0f, 1e-3f});
  const uint16_t bf[2] = {0x3F80, 0xC040};  // 1, -3
  std::vector<uint8_t> bbf(4);
  std::memcpy(bbf.data(), bf, 4);
  w.add("b", DType::BF16, {2}, bbf);
  w.add("i", DType::I32, {1}, {1, 0, 0, 0});
  w.write(path("f.safetensors"));

  auto f = SafetensorsFile::open(path("f.safetensors"));
  EXPECT_NE(reinterpret_cast<uintptr_t>(f->get("f").data) % 4, 0u);
  EXPECT_EQ(to_f32(f->get("h")), (std::vector<float>{1.0f, -2.0f, 0.5f}));
  EXPECT_EQ(to_f32(f->get("f")), (std::vector<float>{1.5f, -3.25f, 0.0f, 1e-3f}));
  EXPECT_EQ(to_f32(f->get("b")), (std::vector<float>{1.0f, -3.0f}));
  expect_error([&] { to_f32(f->get("i")); }, ExitCode::kInput, {"f.safetensors", "'i'", "I32"});
}

TEST_F(SafetensorsTest, ShardedFolderRoundTrip) {
  SafetensorsWriter a;
  a.add_f32("model.embed.weight", {2, 3}, {1, 2, 3, 4, 5, 6});
  a.add_f32("model.layers.0.w", {2}, {7, 8});
  a.write(path("model-00001-of-00002.safetensors"));
  SafetensorsWriter b;
  b.add("model.layers.1.w", DType::I8, {4}, {1, 2, 3, 4});
  b.write(path("model-00002-of-00002.safetensors"));
  write_raw(path("model.safetensors.index.json"), [] {
    const std::string j = R"({"metadata": {"total_size": 36}, "weight_map": {
                "model.embed.weight": "model-00001-of-00002.safetensors",
                "model.layers.0.w": "model-00001-of-00002.safetensors",
                "model.layers.1.w": "model-00002-of-00002.safetensors"}})";
    return std::vector<uint8_t>(j.begin(), j.end());
  }());

  const TensorStore s = TensorStore::open(dir_);
  EXPECT_EQ(s.path(), dir_);
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"model.embed.weight", "model.layers.0.w",
                                                 "model.layers.1.w"}));
  EXPECT_TRUE(s.has("model.layers.1.w"));
  EXPECT_FALSE(s.has("lm_head.weight"));
  EXPECT_EQ(to_f32(s.get("model.embed.weight")), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(s.get("model.embed.weight").shape, (std::vector<int64_t>{2, 3}));
  const TensorView& w1 = s.get("model.layers.1.w");
  EXPECT_EQ(w1.dtype, DType::I8);
  EXPECT_EQ(std::vector<uint8_t>(w1.data, w1.data + w1.nbytes), (std::vector<uint8_t>{1, 2, 3, 4}));
  EXPECT_EQ(w1.file, path("model-00002-of-00002.safetensors"));
}

TEST_F(SafetensorsTest, SingleFileFolderAndDirectPath) {
  SafetensorsWriter w;
  w.add_f32("x", {1}, {42.0f});
  w.write(path("model.safetensors"));
  const TensorStore folder = TensorStore::open(dir_);
  EXPECT_EQ(folder.names(), std::vector<std::string>{"x"});
  EXPECT_EQ(to_f32(folder.get("x")), std::vector<float>{42.0f});
  const TensorStore file = TensorStore::open(path("model.safetensors"));
  EXPECT_EQ(file.files().size(), 1u);
  EXPECT_EQ(to_f32(file.get("x")), std::vector<float>{42.0f});
}

// --- hostile files: one test per check ----------------------------------------------

TEST_F(SafetensorsTest, RejectsFileShorterThan8Bytes) {
  expect_bad_file(dir_, "short.safetensors", {1, 0, 0, 0, 0}, {"5 bytes", "header length"});
  expect_bad_file(dir_, "zero.safetensors", {}, {"0 bytes", "header length"});
}

TEST_F(SafetensorsTest, RejectsHeaderLengthPastEndOfFile) {
  expect_bad_file(dir_, "len.safetensors", raw_file("{}", 0, 1000),
                  {"header length 1000", "past end"});
  // An absurd length must not overflow 8 + N.
  expect_bad_file(dir_, "huge.safetensors", raw_file("{}", 0, UINT64_MAX - 3),
                  {"header length", "past end"});
}

TEST_F(SafetensorsTest, RejectsMalformedJson) {
  expect_bad_file(dir_, "json.safetensors", raw_file(R"({"a": {"dtype": "F32",)", 0), {"JSON"});
  // Bytes after the JSON value that are not whitespace are malformed too.
  expect_bad_file(dir_, "trail.safetensors", raw_file("{} x", 0), {"JSON"});
}

TEST_F(SafetensorsTest, RejectsHeaderNotAnObject) {
  expect_bad_file(dir_, "arr.safetensors", raw_file("[1, 2]", 0), {"header", "not a JSON object"});
}

TEST_F(SafetensorsTest, RejectsUnknownDType) {
  expect_bad_file(
      dir_, "dtype.safetensors",
      raw_file(R"({"w.weight": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}})", 16),
      {"'w.weight'", "dtype", "F128"});
}

TEST_F(SafetensorsTest, RejectsNegativeShapeEntry) {
  expect_bad_file(
      dir_, "shape.safetensors",
      raw_file(R"({"w.weight": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}})", 8),
      {"'w.weight'", "shape", "-1"});
}

TEST_F(SafetensorsTest, RejectsDataOffsetsPastDataRegion) {
  expect_bad_file(
      dir_, "end.safetensors",
      raw_file(R"({"a.weight": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}})", 392),
      {"'a.weight'", "data_offsets [0, 400)", "past data region (392 bytes)"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  expect_bad_file(dir_, "overlap.safetensors",
                  raw_file(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
                           20),
                  {"'a'", "'b'", "overlap"});
}

TEST_F(SafetensorsTest, RejectsByteLengthNotMatchingShape) {
  expect_bad_file(
      dir_, "len.safetensors",
      raw_file(R"({"w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 20]}})", 24),
      {"'w'", "data_offsets [0, 20)", "BF16", "needs 24"});
}

TEST_F(SafetensorsTest, RejectsDuplicateTensorNames) {
  expect_bad_file(dir_, "dup.safetensors",
                  raw_file(R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                               "w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                           8),
                  {"duplicate tensor name", "'w'"});
}

TEST_F(SafetensorsTest, RejectsMetadataValueNotString) {
  expect_bad_file(dir_, "meta.safetensors",
                  raw_file(R"({"__metadata__": {"format": "pt", "step": 3}})", 0),
                  {"__metadata__", "'step'", "not a string"});
  expect_bad_file(dir_, "meta2.safetensors", raw_file(R"({"__metadata__": ["pt"]})", 0),
                  {"__metadata__", "not an object"});
}

TEST_F(SafetensorsTest, RejectsShapeProductOverflow) {
  // 2^40 x 2^40 = 2^80 elements.
  expect_bad_file(dir_, "ovf.safetensors",
                  raw_file(R"({"big": {"dtype": "F32", "shape": [1099511627776, 1099511627776],
                                       "data_offsets": [0, 0]}})",
                           0),
                  {"'big'", "shape", "overflow"});
  // 2^62 elements fit int64 but 2^62 x 4 bytes do not.
  expect_bad_file(
      dir_, "ovf2.safetensors",
      raw_file(
          R"({"big": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})",
          0),
      {"'big'", "shape", "overflow"});
}

TEST_F(SafetensorsTest, RejectsOtherBadEntries) {
  const auto bad = [&](const std::string& file, const std::string& entry,
                       std::initializer_list<std::string> parts) {
    expect_bad_file(dir_, file, raw_file(R"({"t.w": )" + entry + "}", 8), parts);
  };
  bad("nodtype.safetensors", R"({"shape": [2], "data_offsets": [0, 8]})", {"'t.w'", "dtype"});
  bad("noshape.safetensors", R"({"dtype": "F32", "data_offsets": [0, 8]})", {"'t.w'", "shape"});
  bad("nooffs.safetensors", R"({"dtype": "F32", "shape": [2]})", {"'t.w'", "data_offsets"});
  bad("notobj.safetensors", R"([1, 2])", {"'t.w'", "not an object"});
  bad("floatdim.safetensors", R"({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]})",
      {"'t.w'", "shape"});
  bad("strdim.safetensors", R"({"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]})",
      {"'t.w'", "shape"});
  bad("threeoffs.safetensors", R"({"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]})",
      {"'t.w'", "data_offsets"});
  bad("negoff.safetensors", R"({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]})",
      {"'t.w'", "data_offsets"});
  bad("reversed.safetensors", R"({"dtype": "U8", "shape": [0], "data_offsets": [8, 0]})",
      {"'t.w'", "data_offsets [8, 0)", "begin after end"});
  bad("dupfield.safetensors",
      R"({"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]})",
      {"'t.w'", "duplicate key 'dtype'"});
  bad("dtypenum.safetensors", R"({"dtype": 7, "shape": [2], "data_offsets": [0, 8]})",
      {"'t.w'", "dtype"});
}

TEST_F(SafetensorsTest, ControlCharactersInNamesStayOnOneLine) {
  expect_bad_file(dir_, "ctl.safetensors",
                  raw_file(R"({"a\nb": {"dtype": "X", "shape": [], "data_offsets": [0, 0]}})", 0),
                  {"'a\\x0Ab'", "'X'"});
}

TEST_F(SafetensorsTest, AcceptsGapsZeroSizeTensorsAndAnyOrder) {
  // Offsets out of name order, a gap, a zero-byte tensor at a shared offset, padded header.
  const std::string p = path("ok.safetensors");
  write_raw(p, raw_file(R"({"z": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                             "a": {"dtype": "I16", "shape": [1, 2], "data_offsets": [4, 8]},
                             "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}}   )",
                        8));
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->names(), (std::vector<std::string>{"z", "a", "e"}));
  EXPECT_EQ(f->get("a").nbytes, 4u);
}

TEST_F(SafetensorsTest, RejectsMissingFileAndFolder) {
  expect_error([&] { SafetensorsFile::open(path("nope.safetensors")); }, ExitCode::kInput,
               {"nope.safetensors", "No such file"});
  expect_error([&] { SafetensorsFile::open(dir_); }, ExitCode::kInput,
               {dir_, "not a regular file"});
}

TEST_F(SafetensorsTest, GetMissingTensor) {
  SafetensorsWriter w;
  w.add_f32("x", {1}, {1.0f});
  w.write(path("model.safetensors"));
  auto f = SafetensorsFile::open(path("model.safetensors"));
  expect_error([&] { f->get("y"); }, ExitCode::kInput, {"model.safetensors", "missing tensor 'y'"});
  const TensorStore s = TensorStore::open(dir_);
  expect_error([&] { s.get("lm_head.weight"); }, ExitCode::kInput,
               {dir_, "missing tensor 'lm_head.weight'"});
}

// --- TensorStore errors -------------------------------------------------------------

TEST_F(SafetensorsTest, StoreRejectsMissingFolderOrFile) {
  expect_error([&] { TensorStore::open(path("no_such_model")); }, ExitCode::kInput,
               {"no_such_model"});
  // An existing folder with neither model.safetensors nor an index.
  ASSERT_EQ(::mkdir(path("emptymodel").c_str(), 0755), 0);
  expect_error([&] { TensorStore::open(path("emptymodel")); }, ExitCode::kInput,
               {"emptymodel", "model.safetensors.index.json"});
}

/// Writes shard "s1.safetensors" holding tensor "a" and an index with `weight_map_json`.
void write_one_shard_model(const std::string& dir, const std::string& weight_map_json) {
  SafetensorsWriter w;
  w.add_f32("a", {1}, {1.0f});
  w.write(dir + "/s1.safetensors");
  const std::string j = R"({"weight_map": )" + weight_map_json + "}";
  write_raw(dir + "/model.safetensors.index.json", std::vector<uint8_t>(j.begin(), j.end()));
}

TEST_F(SafetensorsTest, StoreRejectsIndexPointingAtMissingShard) {
  write_one_shard_model(dir_, R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"model.safetensors.index.json", "'b'", "s2.safetensors", "does not exist"});
}

TEST_F(SafetensorsTest, StoreRejectsIndexTensorMissingFromShard) {
  write_one_shard_model(dir_, R"({"a": "s1.safetensors", "ghost": "s1.safetensors"})");
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"s1.safetensors", "missing tensor 'ghost'"});
}

TEST_F(SafetensorsTest, StoreRejectsDuplicateAcrossShards) {
  SafetensorsWriter w;
  w.add_f32("a", {1}, {1.0f});
  w.write(path("s1.safetensors"));
  w.write(path("s2.safetensors"));
  const std::string j = R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})";
  write_raw(path("model.safetensors.index.json"), std::vector<uint8_t>(j.begin(), j.end()));
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"s2.safetensors", "'a'", "also present"});
}

TEST_F(SafetensorsTest, StoreRejectsBadIndex) {
  write_one_shard_model(dir_, R"({"a": "s1.safetensors", "a": "s1.safetensors"})");
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"model.safetensors.index.json", "duplicate key 'a'"});
  write_one_shard_model(dir_, R"({"a": "../s1.safetensors"})");
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"model.safetensors.index.json", "not a plain file name"});
  write_one_shard_model(dir_, R"({"a": 3})");
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"model.safetensors.index.json", "'a'"});
  write_one_shard_model(dir_, R"({"a": "s1.safetensors",)");
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"model.safetensors.index.json", "JSON"});
  const std::string j = R"({"metadata": {}})";
  write_raw(path("model.safetensors.index.json"), std::vector<uint8_t>(j.begin(), j.end()));
  expect_error([&] { TensorStore::open(dir_); }, ExitCode::kInput,
               {"model.safetensors.index.json", "weight_map"});
}

// --- writer ----------------------------------------------------------------------------

/// Names in `dir` containing ".tmp.".
std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp.") != std::string::npos) out.push_back(name);
  }
  return out;
}

TEST_F(SafetensorsTest, AtomicWriteLeavesNoTempAndReplacesDestination) {
  const std::string p = path("out.safetensors");
  write_raw(p, {'o', 'l', 'd'});
  SafetensorsWriter w;
  w.add_f32("x", {2}, {1.0f, 2.0f});
  w.write(p);
  EXPECT_TRUE(temp_files(dir_).empty());
  EXPECT_EQ(to_f32(SafetensorsFile::open(p)->get("x")), (std::vector<float>{1.0f, 2.0f}));

  const std::vector<uint8_t> bytes = {1, 2, 3};
  write_file_atomic(path("plain.bin"), bytes.data(), bytes.size());
  EXPECT_EQ(read_raw(path("plain.bin")), bytes);
  EXPECT_TRUE(temp_files(dir_).empty());
}

TEST_F(SafetensorsTest, AtomicWriteToMissingFolderFailsAndCreatesNothing) {
  SafetensorsWriter w;
  w.add_f32("x", {1}, {1.0f});
  const std::string p = path("missing/out.safetensors");
  expect_error([&] { w.write(p); }, ExitCode::kOutput, {p});
  EXPECT_FALSE(exists(path("missing")));
  EXPECT_TRUE(temp_files(dir_).empty());
}

TEST_F(SafetensorsTest, ExistingDestinationSurvivesFailedWrite) {
  // Block the temp file name with a folder: creating the temp fails, the old file stays.
  const std::string p = path("keep.safetensors");
  const std::vector<uint8_t> old = {'o', 'l', 'd'};
  write_raw(p, old);
  const std::string tmp = p + ".tmp." + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(tmp.c_str(), 0755), 0);
  SafetensorsWriter w;
  w.add_f32("x", {1}, {1.0f});
  expect_error([&] { w.write(p); }, ExitCode::kOutput, {"keep.safetensors"});
  EXPECT_EQ(read_raw(p), old);
}

TEST_F(SafetensorsTest, FailedRenameRemovesTemp) {
  // The destination is a non-empty folder: refused before a temp is written (a rename that
  // fails after writing is covered in test_reliability.cpp, OutputFile).
  const std::string p = path("dest");
  ASSERT_EQ(::mkdir(p.c_str(), 0755), 0);
  write_raw(p + "/inside", {1});
  const std::vector<uint8_t> bytes = {1, 2, 3, 4};
  expect_error([&] { write_file_atomic(p, bytes.data(), bytes.size()); }, ExitCode::kOutput,
               {p, "folder"});
  EXPECT_TRUE(temp_files(dir_).empty());
  EXPECT_EQ(read_raw(p + "/inside"), std::vector<uint8_t>{1});
}

TEST_F(SafetensorsTest, WriterRejectsBadTensors) {
  SafetensorsWriter w;
  expect_error([&] { w.add("x", DType::F32, {2}, std::vector<uint8_t>(7)); }, ExitCode::kInternal,
               {"'x'"});
  expect_error([&] { w.add("x", DType::F32, {-1}, {}); }, ExitCode::kInternal, {"'x'"});
  w.add("x", DType::U8, {2}, {1, 2});
  expect_error([&] { w.add("x", DType::U8, {1}, {1}); }, ExitCode::kInternal, {"duplicate", "'x'"});
  expect_error([&] { w.add("__metadata__", DType::U8, {1}, {1}); }, ExitCode::kInternal,
               {"__metadata__"});
  EXPECT_EQ(w.data_bytes(), 2u);
}

}  // namespace
}  // namespace mpq
