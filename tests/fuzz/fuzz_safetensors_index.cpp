// libFuzzer target: the sharded-model index reader (TensorStore::open on a folder with
// model.safetensors.index.json). Input: the index JSON. The folder holds two small valid
// shards, a.safetensors (embed, norm) and b.safetensors (two layer tensors).
#include <cstdint>
#include <filesystem>

#include "formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
std::string shard_folder() {
  using namespace mpq;
  static const std::string dir = [] {
    const std::string d = fuzz::scratch() + "/sharded";
    std::filesystem::create_directories(d);
    SafetensorsWriter a, b;
    a.add_f32("model.embed_tokens.weight", {4, 2}, std::vector<float>(8, 0.5f));
    a.add_f32("model.norm.weight", {2}, {1.0f, 1.0f});
    b.add_f32("model.layers.0.input_layernorm.weight", {2}, {1.0f, 1.0f});
    b.add("model.layers.0.self_attn.q_proj.weight", DType::BF16, {2, 2}, std::vector<uint8_t>(8, 0x3f));
    a.write(d + "/a.safetensors");
    b.write(d + "/b.safetensors");
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace mpq;
  const std::string dir = shard_folder();
  fuzz::write_file("sharded/model.safetensors.index.json", data, size);
  fuzz::expect_clean([&] {
    const TensorStore store = TensorStore::open(dir);
    for (const std::string& name : store.names())
      if (store.get(name).name != name) std::abort();
  });
  return 0;
}
