// Shared test helpers: the real-data folder, scratch folders, tiny random Llama models.
#pragma once

#include <gtest/gtest.h>

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

/// Folder where the tool binaries were built (mpq-eval, mpq-pack, mpq-inspect).
std::string tools_dir();

/// Runs a shell command; returns its exit status (0-255) and captures stdout+stderr.
int run_command(const std::string& cmd, std::string* output = nullptr);

/// Reads a whole file as bytes.
std::vector<uint8_t> read_bytes(const std::string& path);
/// Writes bytes to a file (not atomically; tests only).
void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes);
void write_text(const std::string& path, const std::string& text);

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
};

/// Writes config.json and model.safetensors (F32, HF names) of a random Llama to `dir`.
/// No tokenizer: tests feed token ids.
void write_tiny_llama(const std::string& dir, const TinyLlamaSpec& spec);

}  // namespace mpq::test
