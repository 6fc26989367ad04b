// Shared test helpers: the real-data folder, scratch folders, tiny random Llama models.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace mpq::test {

/// ../shared/data (or $MPQ_DATA); empty string when absent.
std::string data_dir();

/// Skips the current test with a clear message when the real data is absent.
#define MPQ_REQUIRE_DATA()                                                          \
  do {                                                                              \
    if (::mpq::test::data_dir().empty())                                            \
      GTEST_SKIP() << "real data not found: set MPQ_DATA or put ../shared/data beside " \
                      "the checkout (see ../shared/data/SOURCES.md)";               \
  } while (0)

/// A fresh empty folder under the system temp dir, removed at process exit.
std::string scratch_dir(const std::string& tag);

/// True when mpq was built with CUDA and a CUDA device is visible.
bool gpu_visible();
/// Why GPU tests skip here ("mpq built without CUDA ..." or "no CUDA device visible").
std::string gpu_skip_reason();

/// Skips the current test unless a CUDA device can run it.
#define MPQ_REQUIRE_GPU()                                                       \
  do {                                                                          \
    if (!::mpq::test::gpu_visible()) GTEST_SKIP() << ::mpq::test::gpu_skip_reason(); \
  } while (0)

/// Folder where the tool binaries were built (mpq-eval, mpq-pack, mpq-inspect).
std::string tools_dir();

/// Runs a shell command; returns its exit status (0-255) and captures stdout+stderr.
int run_command(const std::string& cmd, std::string* output = nullptr);

/// A tool run: exit status (0-255) and stdout+stderr.
struct ToolRun {
  int rc;
  std::string out;
};

/// Runs a shell command line (run_command) and returns its status and output.
ToolRun run_tool(const std::string& cmd);

/// Path of a built tool binary: tools_dir() + "/" + name.
std::string tool_path(const std::string& name);

/// The lines of `out` that report an error (contain "error").
std::vector<std::string> error_lines(const std::string& out);

/// Elementwise |got[i] - want[i]| <= rel * |want[i]| + l1_rel * l1[i] + abs_tol, where l1[i]
/// is sum_j |w_ij x_j| of output i (the scale of a dot product's rounding error); reports at
/// most 5 failures, each naming `what` and the index.
template <typename A, typename B>
void expect_close_l1(const std::vector<A>& got, const std::vector<B>& want, const std::vector<double>& l1,
                     const std::string& what, double abs_tol, double rel = 1e-5, double l1_rel = 4e-6) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double tol = rel * std::fabs(static_cast<double>(want[i])) + l1_rel * l1[i] + abs_tol;
    if (!(std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])) <= tol)) {
      ADD_FAILURE() << what << " at " << i << ": got " << got[i] << ", want " << want[i] << " (tol " << tol << ")";
      ++bad;
    }
  }
}

/// Reads a whole file as bytes.
std::vector<uint8_t> read_bytes(const std::string& path);
/// Writes bytes to a file (not atomically; tests only).
void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes);
void write_text(const std::string& path, const std::string& text);

/// n floats from N(0, std^2), deterministic in `seed`.
std::vector<float> random_normal(int64_t n, uint64_t seed, float std = 1.0f);

/// n token ids uniform in [0, vocab), deterministic in `seed`.
std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed);

/// Shape of a tiny random Llama for unit tests.
struct TinyLlamaSpec {
  int hidden = 64;
  int intermediate = 96;
  int layers = 2;
  int heads = 8;
  int kv_heads = 4;
  int vocab = 128;
  bool tie_embeddings = false;
  bool qkv_bias = false;  ///< Qwen2ForCausalLM when true
  float rope_theta = 10000.0f;
  uint64_t seed = 1;
  float weight_std = 0.08f;
  bool bf16 = false;  ///< store every tensor as BF16 (the fp32 draw rounded) instead of F32
};

/// Writes config.json and model.safetensors (F32, or BF16 with spec.bf16; HF names) of a
/// random Llama to `dir`.
/// No tokenizer: tests feed token ids.
void write_tiny_llama(const std::string& dir, const TinyLlamaSpec& spec);

}  // namespace mpq::test
