// Calibration windows: N windows of L tokens from a tokenized calibration text.
#pragma once

#include <cstdint>
#include <vector>

namespace mpq {

/// Start offsets of N windows of L tokens inside `n_tokens` ids. Sampled: uniform starts in
/// [0, n_tokens - L] from a splitmix64 stream seeded with `seed` (the same seed gives the
/// same windows on every platform). Sequential: starts 0, L, 2L, ... (non-overlapping).
/// Throws Error(kInput) when n_tokens < L, when sampled windows outnumber the distinct starts
/// (N > n_tokens - L + 1; checked before allocating N starts, so a huge --samples is an
/// input error, not an out-of-memory), or when sequential windows do not fit (N * L >
/// n_tokens, overflow-checked).
std::vector<int64_t> calibration_window_starts(int64_t n_tokens, int64_t n_windows, int64_t length,
                                               uint64_t seed, bool sequential);

}  // namespace mpq
