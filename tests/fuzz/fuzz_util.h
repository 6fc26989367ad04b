// Shared by the libFuzzer targets in tests/fuzz (scripts/fuzz.sh runs them; docs/results.md
// §8 has their numbers): a private scratch folder, input files, the rule that decides what is
// a bug, and the stories260K-shaped random model some targets read.
//
// The rule: hostile input must end in mpq::Error with the exit code a tool would return for
// it (3, input error; 2 where the harness passes values a user gives as flags). Any other
// exception (nlohmann type_error, std::bad_alloc, std::out_of_range, Error with code 1) is
// what a user sees as "internal error" (exit 1): the harness prints it and aborts, and
// libFuzzer records the input as a crash. AddressSanitizer / UBSan reports, leaks, timeouts
// and allocations above -malloc_limit_mb are crashes too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

#include "formats/hf_config.h"
#include "lib/common/error.h"

namespace mpq::fuzz {

/// A per-process scratch folder (mkdtemp under $TMPDIR or /tmp), removed at exit.
const std::string& scratch();

/// Writes `size` bytes to scratch()/name (replacing it) and returns the path.
std::string write_file(const std::string& name, const uint8_t* data, std::size_t size);
std::string write_file(const std::string& name, const std::vector<uint8_t>& bytes);

/// ../shared/data beside the checkout, or $MPQ_DATA; "" when absent.
std::string data_dir();

/// Header-only input form of the safetensors-based targets: bytes [0, 3) are the data-region
/// size (little-endian, capped at 4 MiB), the rest the header JSON. Returns the whole file:
/// u64 header length, header, data region (a fixed byte pattern). This lets the fuzzer
/// mutate the JSON without having to keep the length prefix and the data size consistent.
std::vector<uint8_t> safetensors_from_header(const uint8_t* data, std::size_t size);

/// The stories260K-hf architecture (hidden 64, intermediate 172, 5 layers, 8 heads, 4 KV
/// heads, head_dim 8, vocab 512, tied embeddings), so its real config.json matches.
LlamaConfig stories_config();

/// Writes a random model of stories_config() (model.safetensors, F32, no config.json) into
/// scratch()/`name` once and returns the folder.
std::string stories_shaped_model(const std::string& name);

/// Runs `fn`; an mpq::Error whose code is in `allowed` is expected, anything else aborts.
template <typename F>
void expect_clean(F&& fn, std::initializer_list<ExitCode> allowed = {ExitCode::kInput}) {
  try {
    fn();
  } catch (const Error& e) {
    for (ExitCode c : allowed)
      if (e.code() == c) return;
    std::fprintf(stderr, "fuzz: mpq::Error with exit code %d (not allowed here): %s\n", static_cast<int>(e.code()),
                 e.what());
    std::abort();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: internal error (a tool would exit 1): %s\n", e.what());
    std::abort();
  }
}

}  // namespace mpq::fuzz
