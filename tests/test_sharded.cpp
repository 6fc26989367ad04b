// Sharded safetensors output (formats/sharded_safetensors.h): shard sizes parsed as
// transformers reads them, huggingface_hub's split rule (its documented example), the
// index as Python's json.dumps(indent=2, sort_keys=True) writes it (checked against
// python3 itself), planned and streamed writes giving the same bytes, read-back through
// TensorStore, and no files left behind by an unfinished writer.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "formats/safetensors.h"
#include "formats/sharded_safetensors.h"
#include "lib/common/error.h"
#include "lib/common/layer_range.h"
#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(ShardSize, ParsedAsTransformersReadsMaxShardSize) {
  // transformers' convert_file_size_to_int docstring and code: decimal KB/MB/GB, binary
  // KiB/MiB/GiB, a lower-case final "b" meaning bits.
  EXPECT_EQ(parse_shard_size("5GB"), 5'000'000'000ULL);
  EXPECT_EQ(parse_shard_size("1MiB"), 1'048'576ULL);
  EXPECT_EQ(parse_shard_size("2GiB"), 2ULL << 30);
  EXPECT_EQ(parse_shard_size("10KB"), 10'000ULL);
  EXPECT_EQ(parse_shard_size("5Gb"), 625'000'000ULL);
  EXPECT_EQ(parse_shard_size("400mb"), 50'000'000ULL);
  EXPECT_EQ(parse_shard_size("1TB"), 1'000'000'000'000ULL);
  EXPECT_EQ(parse_shard_size("123"), 123ULL);
  EXPECT_EQ(parse_shard_size("1.5GB"), 1'500'000'000ULL);  // huggingface_hub's float values
  for (const char* bad : {"", "GB", "5XB", "-5GB", "1.2.3GB", "0", "0.1", "5 GB", "5G"}) {
    try {
      parse_shard_size(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage) << bad;
      EXPECT_NE(std::string(e.what()).find("--max-shard-size"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(shard_file_name(1, 1), "model.safetensors");
  EXPECT_EQ(shard_file_name(2, 12), "model-00002-of-00012.safetensors");
}

TEST(LayerRangeText, ParsedAndResolved) {
  EXPECT_EQ(parse_layer_range("2:5"), (LayerRange{2, 5}));
  EXPECT_EQ(parse_layer_range(":"), (LayerRange{0, -1}));
  EXPECT_EQ(parse_layer_range("3:"), (LayerRange{3, -1}));
  EXPECT_EQ(parse_layer_range(":4"), (LayerRange{0, 4}));
  EXPECT_EQ(resolve_layer_range({3, -1}, 8, "c.json"), (LayerRange{3, 8}));
  for (const char* bad : {"3", "a:b", "-1:2", "1:2:3", "1;2"}) EXPECT_THROW(parse_layer_range(bad), Error) << bad;
  try {
    resolve_layer_range({6, 9}, 8, "m/config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("m/config.json has num_hidden_layers 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_layer_range({4, 4}, 8, "c"), Error);
  EXPECT_EQ(layer_of_tensor("model.layers.12.mlp.up_proj.weight"), 12);
  EXPECT_EQ(layer_of_tensor("model.layers.x.mlp"), -1);
  EXPECT_EQ(layer_of_tensor("model.layers.3"), -1);
  EXPECT_EQ(layer_of_tensor("lm_head.weight"), -1);
}

// Writes tensors t0..t5 of the given byte sizes (U8 [n], byte value = tensor index) into
// `dir` with limit `max`, planned or streamed.
ShardedWriteResult write_sizes(const std::string& dir, const std::vector<int64_t>& sizes, uint64_t max, bool planned) {
  fs::create_directories(dir);
  ShardedSafetensorsWriter w(dir, max, {{"format", "pt"}});
  if (planned) {
    std::vector<TensorSpec> plan;
    for (std::size_t i = 0; i < sizes.size(); ++i) plan.push_back({"t" + std::to_string(i), DType::U8, {sizes[i]}, 0});
    w.plan(plan);
  }
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::vector<uint8_t> b(static_cast<std::size_t>(sizes[i]), static_cast<uint8_t>(i));
    w.begin("t" + std::to_string(i), DType::U8, {sizes[i]});
    // In two pieces, as a streaming producer would write it.
    w.write(b.data(), b.size() / 2);
    w.write(b.data() + b.size() / 2, b.size() - b.size() / 2);
    w.end();
  }
  return w.finish();
}

TEST(ShardedWriter, HuggingFaceSplitRuleAndIndex) {
  // huggingface_hub's docstring example: limit 10, sizes [6, 6, 2, 6, 2, 2] -> [6], [6+2], [6+2+2].
  const std::string dir = test::scratch_dir("shard-split");
  const ShardedWriteResult r = write_sizes(dir, {6, 6, 2, 6, 2, 2}, 10, false);
  ASSERT_EQ(r.files.size(), 3u);
  EXPECT_TRUE(r.indexed);
  EXPECT_EQ(r.total_bytes, 24u);
  const TensorStore store = TensorStore::open(dir);
  const std::vector<std::vector<std::string>> want = {{"t0"}, {"t1", "t2"}, {"t3", "t4", "t5"}};
  for (std::size_t k = 0; k < 3; ++k) {
    const auto f = SafetensorsFile::open(dir + "/" + shard_file_name(static_cast<int64_t>(k + 1), 3));
    EXPECT_EQ(f->names(), want[k]) << k;
    EXPECT_EQ(f->metadata().at("format"), "pt");
  }
  for (int i = 0; i < 6; ++i) {
    const TensorView& t = store.get("t" + std::to_string(i));
    for (std::size_t j = 0; j < t.nbytes; ++j) ASSERT_EQ(t.data[j], i);
  }
  EXPECT_EQ(names_in_write_order(store), (std::vector<std::string>{"t0", "t1", "t2", "t3", "t4", "t5"}));

  // The index, byte for byte as Python writes it from the same weight map.
  const std::string py = dir + "/index.py";
  test::write_text(py,
                   "import json, sys\n"
                   "wm = {'t0': 'model-00001-of-00003.safetensors', 't1': 'model-00002-of-00003.safetensors',\n"
                   "      't2': 'model-00002-of-00003.safetensors', 't3': 'model-00003-of-00003.safetensors',\n"
                   "      't4': 'model-00003-of-00003.safetensors', 't5': 'model-00003-of-00003.safetensors'}\n"
                   "sys.stdout.write(json.dumps({'weight_map': wm, 'metadata': {'total_size': 24}}, indent=2,"
                   " sort_keys=True) + '\\n')\n");
  std::string expected;
  if (test::run_command("python3 " + py + " 2>/dev/null", &expected) != 0) GTEST_SKIP() << "python3 not available";
  EXPECT_EQ(slurp(dir + "/model.safetensors.index.json"), expected);
}

TEST(ShardedWriter, OversizedTensorAloneInWriteOrderAndOneShardIsPlain) {
  // A tensor over the limit gets a shard of its own, numbered where it arrives.
  const std::string dir = test::scratch_dir("shard-big");
  const ShardedWriteResult r = write_sizes(dir, {3, 3, 25, 4, 4}, 10, false);
  ASSERT_EQ(r.files.size(), 3u);
  const std::vector<std::vector<std::string>> want = {{"t0", "t1"}, {"t2"}, {"t3", "t4"}};
  for (std::size_t k = 0; k < 3; ++k)
    EXPECT_EQ(SafetensorsFile::open(dir + "/" + r.files[k])->names(), want[k]) << k;
  // Everything within the limit: one plain model.safetensors, no index.
  const std::string one = test::scratch_dir("shard-one");
  const ShardedWriteResult r1 = write_sizes(one, {3, 3, 4}, 10, false);
  EXPECT_EQ(r1.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(r1.indexed);
  EXPECT_FALSE(fs::exists(one + "/model.safetensors.index.json"));
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(one)) files.push_back(e.path().filename().string());
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});  // no temporaries left
}

TEST(ShardedWriter, PlannedWriteGivesTheStreamedBytes) {
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{6, 6, 2, 6, 2, 2}, {3, 3, 25, 4, 4}, {1}, {11, 11}}) {
    const std::string a = test::scratch_dir("shard-stream"), b = test::scratch_dir("shard-plan");
    const ShardedWriteResult ra = write_sizes(a, sizes, 10, false), rb = write_sizes(b, sizes, 10, true);
    ASSERT_EQ(ra.files, rb.files);
    for (const std::string& f : ra.files) EXPECT_EQ(slurp(a + "/" + f), slurp(b + "/" + f)) << f;
    if (ra.indexed) {
      EXPECT_EQ(slurp(a + "/model.safetensors.index.json"), slurp(b + "/model.safetensors.index.json"));
    }
  }
  // The single-file writer and the sharded one agree on a single shard.
  const std::string s = test::scratch_dir("shard-single");
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (int i = 0; i < 3; ++i) w.add("t" + std::to_string(i), DType::U8, {3}, std::vector<uint8_t>(3, static_cast<uint8_t>(i)));
  w.write(s + "/single.safetensors");
  const std::string m = test::scratch_dir("shard-multi");
  write_sizes(m, {3, 3, 3}, 100, false);
  EXPECT_EQ(slurp(s + "/single.safetensors"), slurp(m + "/model.safetensors"));
}

TEST(ShardedWriter, UnfinishedWriterLeavesNothingAndMisuseIsAnInternalError) {
  const std::string dir = test::scratch_dir("shard-abort");
  {
    ShardedSafetensorsWriter w(dir, 10, {});
    const uint8_t b[8] = {};
    w.add("a", DType::U8, {8}, b, 8);
    w.add("b", DType::U8, {8}, b, 8);  // closes the first shard
    w.begin("c", DType::U8, {4});
    w.write(b, 2);
    EXPECT_THROW(w.write(b, 4), Error);  // past the tensor's size
    EXPECT_THROW(w.end(), Error);        // short
  }
  EXPECT_TRUE(fs::is_empty(dir));
  ShardedSafetensorsWriter w(dir, 10, {});
  const uint8_t b[4] = {};
  w.add("a", DType::U8, {4}, b, 4);
  EXPECT_THROW(w.add("a", DType::U8, {4}, b, 4), Error);  // duplicate
  EXPECT_THROW(w.add("__metadata__", DType::U8, {4}, b, 4), Error);
  ShardedSafetensorsWriter p(test::scratch_dir("shard-plan-bad"), 10, {});
  p.plan({{"x", DType::U8, {4}, 0}});
  EXPECT_THROW(p.add("y", DType::U8, {4}, b, 4), Error);  // not the planned tensor
}

}  // namespace
}  // namespace mpq
