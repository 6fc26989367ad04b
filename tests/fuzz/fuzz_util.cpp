// Helpers of the fuzz targets (see fuzz_util.h).
#include "tests/fuzz/fuzz_util.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "formats/safetensors.h"
#include "lib/model/llama.h"

namespace mpq::fuzz {
namespace fs = std::filesystem;

namespace {
struct Scratch {
  std::string path;
  Scratch() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/mpq-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    path = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

const std::string& scratch() {
  static Scratch s;
  return s.path;
}

std::string write_file(const std::string& name, const uint8_t* data, std::size_t size) {
  const std::string p = scratch() + "/" + name;
  fs::create_directories(fs::path(p).parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) std::abort();
  return p;
}

std::string write_file(const std::string& name, const std::vector<uint8_t>& bytes) {
  return write_file(name, bytes.data(), bytes.size());
}

std::string data_dir() {
  std::string d = MPQ_DEFAULT_DATA_DIR;
  if (const char* env = std::getenv("MPQ_DATA")) d = env;
  return fs::exists(fs::path(d) / "models" / "stories260K-hf" / "config.json") ? d : "";
}

std::vector<uint8_t> safetensors_from_header(const uint8_t* data, std::size_t size) {
  constexpr std::size_t kMaxData = std::size_t{4} << 20;
  std::size_t data_bytes = 0;
  for (std::size_t i = 0; i < 3 && i < size; ++i) data_bytes |= static_cast<std::size_t>(data[i]) << (8 * i);
  data_bytes = std::min(data_bytes, kMaxData);
  const std::size_t n = size > 3 ? size - 3 : 0;
  std::vector<uint8_t> out(8 + n + data_bytes);
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<uint8_t>(static_cast<uint64_t>(n) >> (8 * i));
  for (std::size_t i = 0; i < n; ++i) out[8 + i] = data[3 + i];
  // Small finite fp32/fp16 values, valid E4M3 codes and CSR-like small integers alike.
  for (std::size_t i = 0; i < data_bytes; ++i) out[8 + n + i] = static_cast<uint8_t>((i * 7) % 61);
  return out;
}

LlamaConfig stories_config() {
  LlamaConfig c = llama_config(64, 172, 5, 8, 4, 512);
  c.tie_word_embeddings = true;
  c.max_position_embeddings = 512;
  return c;
}

std::string stories_shaped_model(const std::string& name) {
  const std::string dir = scratch() + "/" + name;
  if (fs::exists(dir + "/model.safetensors")) return dir;
  fs::create_directories(dir);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  SafetensorsWriter w;
  for (const auto& [tensor, shape] : llama_tensor_shapes(stories_config())) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = tensor.find("norm") != std::string::npos ? 1.0f : normal(rng);
    w.add_f32(tensor, shape, v);
  }
  w.write(dir + "/model.safetensors");
  return dir;
}

}  // namespace mpq::fuzz
