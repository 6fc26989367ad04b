#include "tests/test_util.h"

#ifdef MPQ_HAVE_CUDA
#include "kernels/cuda/dequant.h"  // device_count()
#endif

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "lib/numeric/codecs.h"  // fp32_to_bf16

namespace mpq::test {
namespace fs = std::filesystem;

std::string data_dir() {
  std::string d;
  if (const char* env = std::getenv("MPQ_DATA")) d = env;
  else d = MPQ_DEFAULT_DATA_DIR;
  return fs::exists(fs::path(d) / "models" / "stories260K-hf" / "model.safetensors") ? d : "";
}

namespace {
struct ScratchRoot {
  std::string path;
  ScratchRoot() {
    std::string tmpl = (fs::temp_directory_path() / "mpq-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) std::abort();
    path = tmpl;
  }
  ~ScratchRoot() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

std::string scratch_dir(const std::string& tag) {
  static ScratchRoot root;
  static int counter = 0;
  const fs::path p = fs::path(root.path) / (tag + "-" + std::to_string(counter++));
  fs::create_directories(p);
  return p.string();
}

std::string tools_dir() { return MPQ_TOOLS_DIR; }

int run_command(const std::string& cmd, std::string* output) {
  const std::string full = cmd + " 2>&1";
  FILE* f = popen(full.c_str(), "r");
  if (!f) return -1;
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int status = pclose(f);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = u(rng);
  return t;
}

void write_tiny_llama(const std::string& dir, const TinyLlamaSpec& s) {
  fs::create_directories(dir);
  const int hd = s.hidden / s.heads;
  nlohmann::json c = {
      {"architectures", {s.qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", s.qkv_bias ? "qwen2" : "llama"},
      {"hidden_size", s.hidden},
      {"intermediate_size", s.intermediate},
      {"num_hidden_layers", s.layers},
      {"num_attention_heads", s.heads},
      {"num_key_value_heads", s.kv_heads},
      {"head_dim", hd},
      {"vocab_size", s.vocab},
      {"max_position_embeddings", 256},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", s.rope_theta},
      {"tie_word_embeddings", s.tie_embeddings},
      {"hidden_act", "silu"},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"torch_dtype", s.bf16 ? "bfloat16" : "float32"}};
  write_text((fs::path(dir) / "config.json").string(), c.dump(2));

  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, s.weight_std);
  SafetensorsWriter w;
  auto rand_tensor = [&](const std::string& name, std::vector<int64_t> shape, float mean = 0.0f) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = mean + normal(rng);
    if (!s.bf16) return w.add_f32(name, shape, v);
    std::vector<uint8_t> b(v.size() * 2);
    for (std::size_t i = 0; i < v.size(); ++i) {
      const uint16_t h = fp32_to_bf16(v[i]);
      b[2 * i] = static_cast<uint8_t>(h & 0xFF);
      b[2 * i + 1] = static_cast<uint8_t>(h >> 8);
    }
    w.add(name, DType::BF16, shape, std::move(b));
  };
  const int64_t H = s.hidden, I = s.intermediate, q = s.heads * hd, kv = s.kv_heads * hd;
  rand_tensor("model.embed_tokens.weight", {s.vocab, H});
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    rand_tensor(p + "input_layernorm.weight", {H}, 1.0f);
    rand_tensor(p + "post_attention_layernorm.weight", {H}, 1.0f);
    rand_tensor(p + "self_attn.q_proj.weight", {q, H});
    rand_tensor(p + "self_attn.k_proj.weight", {kv, H});
    rand_tensor(p + "self_attn.v_proj.weight", {kv, H});
    rand_tensor(p + "self_attn.o_proj.weight", {H, q});
    if (s.qkv_bias) {
      rand_tensor(p + "self_attn.q_proj.bias", {q});
      rand_tensor(p + "self_attn.k_proj.bias", {kv});
      rand_tensor(p + "self_attn.v_proj.bias", {kv});
    }
    rand_tensor(p + "mlp.gate_proj.weight", {I, H});
    rand_tensor(p + "mlp.up_proj.weight", {I, H});
    rand_tensor(p + "mlp.down_proj.weight", {H, I});
  }
  rand_tensor("model.norm.weight", {H}, 1.0f);
  if (!s.tie_embeddings) rand_tensor("lm_head.weight", {s.vocab, H});
  w.write((fs::path(dir) / "model.safetensors").string());
}

std::vector<float> random_normal(int64_t n, uint64_t seed, float std) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, std);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x) v = nd(g);
  return x;
}

bool gpu_visible() {
#ifdef MPQ_HAVE_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

std::string gpu_skip_reason() {
#ifdef MPQ_HAVE_CUDA
  return "no CUDA device visible";
#else
  return "mpq built without CUDA (MPQ_CUDA=OFF or no nvcc)";
#endif
}

ToolRun run_tool(const std::string& cmd) {
  ToolRun r;
  r.rc = run_command(cmd, &r.out);
  return r;
}

std::string tool_path(const std::string& name) { return tools_dir() + "/" + name; }

std::vector<std::string> error_lines(const std::string& out) {
  std::vector<std::string> lines;
  std::stringstream ss(out);
  for (std::string l; std::getline(ss, l);)
    if (l.find("error") != std::string::npos) lines.push_back(l);
  return lines;
}

}  // namespace mpq::test
