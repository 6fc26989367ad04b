// Deterministic weighted 1-D k-means: the core of SqueezeLLM's non-uniform quantizer
// (Kim et al. 2023, "SqueezeLLM: Dense-and-Sparse Quantization"), which fits, per output
// row, a k-entry lookup table minimizing the sensitivity-weighted error
//   sum_i w_i (x_i - c[a_i])^2          (w_i: Fisher information / squared gradients).
//
// Algorithm (weighted_kmeans_1d):
//  1. Sort the (value, weight) pairs once, merge equal values (summing their weights) and
//     drop values of zero total weight; m = number of distinct weighted values. When
//     m <= k the answer is exact: the centroids are those values, padded with copies of
//     the largest one.
//  2. Prefix sums of w, w*x and w*x^2 in double (x centred on its weighted mean to limit
//     cancellation, unless centring would merge distinct values). In 1-D every locally optimal clustering is a set of contiguous
//     intervals of the sorted values, so a clustering is k+1 boundaries and any interval's
//     weight, mean and SSE cost O(1). A Lloyd iteration (Lloyd 1982) is O(k log m): the
//     boundaries are the midpoints between consecutive centroids (binary search), each
//     centroid is the weighted mean of its interval. An interval left empty is refilled
//     by splitting the interval of largest SSE at its optimal 2-means point.
//  3. Candidate solutions, the least SSE wins:
//     (a) Lloyd from weighted quantiles (the means of k intervals of equal weight mass),
//         run to convergence (no boundary moves) or opt.max_iters;
//     (b) opt.restarts k-means++ seedings (Arthur & Vassilvitskii 2007) drawn from a
//         splitmix64 stream seeded by opt.seed, each followed by Lloyd; the D^2 sampling
//         also runs on the prefix sums, O(k^2 log m) per seeding;
//     (c) the optimal k-partition by dynamic programming (Wu 1991; Grønlund et al. 2017)
//         with the divide-and-conquer optimization (the 1-D SSE cost satisfies the
//         quadrangle inequality, so the best previous cut is monotone), O(k B log B):
//         exact over all m points when m <= opt.dp_max_points (B = m); otherwise over
//         B ~ opt.dp_max_points candidate cuts (half at equal counts, for the dense bulk,
//         half at equal value steps, for sparse heavy tails whose outliers earn their own
//         centroid), then refined by the banded DP of step 4.
//  4. Banded DP refinement (all but the exact DP candidate): the optimal partition with
//     every cut within opt.refine_radius points of its current place, O(k R log R),
//     re-centred and repeated while a cut lands on its window's edge. This is a local
//     search far stronger than Lloyd (it moves all cuts jointly and exactly), and it
//     never raises the SSE.
//  5. The centroids are rounded to float (ascending) and every input element is assigned
//     to its nearest float centroid by assign_to_lut(); weighted_sse is computed exactly
//     (double) from those float centroids and that assignment.
// Quality (tests/test_kmeans.cpp): never worse than Lloyd + k-means++ + 50 iterations
// (SqueezeLLM's bar), exact on small inputs; on 4096-long rows with k = 16 the result is
// the exact optimum for most rows and within ~1e-3 relative SSE for the rest.
// Everything is deterministic for a given input, k and options (no global RNG, no
// unordered containers, one thread per row).
#pragma once

#include <cstdint>
#include <vector>

namespace mpq {

/// Tuning knobs of weighted_kmeans_1d(); the defaults are what the quantizer uses.
struct KMeans1DOptions {
  /// Lloyd iterations per start (each start stops earlier once no boundary moves).
  int max_iters = 100;
  /// Extra k-means++ seeded Lloyd starts (0 = only the quantile and DP candidates).
  int restarts = 2;
  /// Seed of the splitmix64 stream that draws the k-means++ seeds.
  uint64_t seed = 0x5eed;
  /// Exact DP over all distinct values when there are at most this many; otherwise DP over
  /// about this many candidate cuts, then banded refinement. 0 disables the DP candidate.
  int dp_max_points = 256;
  /// Radius (points) of the banded DP refinement; larger finds the optimum more often,
  /// cost O(k R log R) per round. 0 skips the refinement of Lloyd results (the coarse DP
  /// candidate is still refined, over its block size).
  int refine_radius = 128;
};

/// Result of weighted_kmeans_1d().
struct KMeans1DResult {
  /// k centroids, sorted ascending (float, as stored in the lookup table).
  std::vector<float> centroids;
  /// Per input element: index into centroids of its nearest centroid (ties to the lower
  /// index), exactly what assign_to_lut(x, n, centroids, k) returns.
  std::vector<uint8_t> assignment;
  /// sum_i w_i (x_i - centroids[assignment[i]])^2 in double (uniform weights: w_i = 1).
  double weighted_sse = 0.0;
  /// Lloyd iterations run by the winning candidate (0 when the DP candidate won or the
  /// answer was exact without iterating).
  int iterations = 0;
};

/// Weighted 1-D k-means of x[0..n) with weights w[0..n) (w == nullptr: all 1; all-zero
/// weights also fall back to all 1). Minimizes sum_i w_i (x_i - c[a_i])^2 over k
/// centroids c and assignments a (see the file comment for the algorithm). n == 0 gives k
/// zero centroids. Throws Error(kInput) when k is outside [1, 256], n < 0, an x_i is NaN
/// or Inf, or a w_i is negative, NaN or Inf (the message names the index).
KMeans1DResult weighted_kmeans_1d(const float* x, const float* w, int64_t n, int k,
                                  const KMeans1DOptions& opt = {});

/// Nearest entry of lut[0..k) for each of x[0..n): out[i] = argmin_j |x_i - lut[j]|, ties
/// (a point exactly at a midpoint, or duplicate entries) to the lower index. Used at encode
/// time with the fp16-rounded centroids. A sorted (non-decreasing) lut takes a fast path:
/// float compares against the midpoints, exact for every float x (the midpoint of two
/// floats is exact in double unless their exponents differ by more than 29, where the
/// answer is not in doubt); an unsorted lut is searched in O(k) with distances in double.
/// Throws Error(kInput) when k is outside [1, 256], n < 0, an x_i is NaN, or a lut entry
/// is NaN or Inf.
std::vector<uint8_t> assign_to_lut(const float* x, int64_t n, const float* lut, int k);

/// Per-row k-means of a rows x cols row-major matrix w (what SqueezeLLM does per output
/// channel), parallel over rows with OpenMP; deterministic (the output does not depend on
/// the thread count). For row r:
///   weighted_kmeans_1d(w + r*cols, sens ? sens + r*cols : nullptr, cols, k, opt_r)
/// where opt_r is opt with seed = the first output of a splitmix64 generator whose state
/// is opt.seed + r. Outputs:
///   centroids  rows * k floats (row r's sorted lookup table at centroids + r*k)
///   codes      rows * cols bytes (row r's assignment at codes + r*cols)
///   row_sse    rows doubles, or nullptr (each row's weighted_sse)
/// num_threads <= 0 uses OpenMP's default. Errors are weighted_kmeans_1d's, for the
/// lowest failing row, prefixed with "row r: ".
void kmeans_rows(const float* w, const float* sens, int64_t rows, int64_t cols, int k,
                 float* centroids, uint8_t* codes, double* row_sse, const KMeans1DOptions& opt = {},
                 int num_threads = 0);

}  // namespace mpq
