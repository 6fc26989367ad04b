#include "calibration/windows.h"

#include <string>

#include "lib/common/error.h"

namespace mpq {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): a fixed, portable stream.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<int64_t> calibration_window_starts(int64_t n_tokens, int64_t n_windows, int64_t length,
                                               uint64_t seed, bool sequential) {
  if (length < 2) throw Error(ExitCode::kUsage, "--seq-len must be at least 2");
  if (n_windows < 1) throw Error(ExitCode::kUsage, "--samples must be at least 1");
  if (n_tokens < length)
    throw Error(ExitCode::kInput, "calibration text has " + std::to_string(n_tokens) +
                                      " tokens, fewer than --seq-len " + std::to_string(length));
  // Bounded by the text before allocating: at most n_tokens - L + 1 distinct sampled starts
  // (more could only repeat windows), at most n_tokens / L sequential ones (no overflow).
  if (!sequential && n_windows > n_tokens - length + 1)
    throw Error(ExitCode::kInput, "calibration text has " + std::to_string(n_tokens) + " tokens: at most " +
                                      std::to_string(n_tokens - length + 1) + " distinct windows of --seq-len " +
                                      std::to_string(length) + ", fewer than --samples " + std::to_string(n_windows));
  if (sequential && n_windows > n_tokens / length)
    throw Error(ExitCode::kInput, "calibration text has " + std::to_string(n_tokens) + " tokens, fewer than " +
                                      std::to_string(n_windows) + " sequential windows of " + std::to_string(length));
  std::vector<int64_t> starts(static_cast<std::size_t>(n_windows));
  if (sequential) {
    if (n_windows * length > n_tokens)
      throw Error(ExitCode::kInput, "calibration text has " + std::to_string(n_tokens) + " tokens, fewer than " +
                                        std::to_string(n_windows) + " sequential windows of " +
                                        std::to_string(length));
    for (int64_t i = 0; i < n_windows; ++i) starts[static_cast<std::size_t>(i)] = i * length;
    return starts;
  }
  uint64_t state = seed;
  const uint64_t range = static_cast<uint64_t>(n_tokens - length + 1);
  for (auto& s : starts) s = static_cast<int64_t>(splitmix64(state) % range);
  return starts;
}

}  // namespace mpq
