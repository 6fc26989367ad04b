// Deterministic weighted 1-D k-means (see kmeans1d.h for the algorithm and sources).
#include "lib/quant/kmeans1d.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <string>
#include <utility>

#include "lib/common/error.h"
#include "lib/quant/quant_common.h"

namespace mpq {
namespace {

constexpr int kMaxK = 256;
/// Banded-DP refinement repeats (re-centred) while a cut lands on its window's edge, at
/// most this many rounds.
constexpr int kMaxRefineRounds = 8;
/// Interval means of at most this many points, or of less than kDirectWeightFraction of
/// the total weight, are summed directly instead of from the prefix sums (whose absolute
/// error, about 1e-16 of the totals, would dominate a light interval's mean).
constexpr int kDirectMaxLen = 8;
constexpr double kDirectWeightFraction = 1e-6;

// ---- splitmix64 (Steele, Lea & Flood 2014): the only randomness ----

using quant_detail::splitmix64_next;

/// Uniform double in [0, 1) from the top 53 bits.
double uniform01(uint64_t& state) {
  return static_cast<double>(splitmix64_next(state) >> 11) * 0x1.0p-53;
}

// ---- Sorting (value, weight) pairs ----

/// Order-preserving map of a (non-NaN) float to uint32; -0 maps to +0's key, so equal
/// values have equal keys.
uint32_t float_key(float f) {
  if (f == 0.0f) f = 0.0f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

float key_float(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Sorts a[] by its upper 32 bits (the value key); the order among equal keys is
/// irrelevant (equal values are merged). LSD radix sort, 3 passes of 11/11/10 bits.
void sort_by_key(std::vector<uint64_t>& a, std::vector<uint64_t>& tmp) {
  const std::size_t n = a.size();
  if (n < 256) {
    std::sort(a.begin(), a.end());
    return;
  }
  constexpr int kShift[3] = {32, 43, 54};
  constexpr uint32_t kMask[3] = {2047u, 2047u, 1023u};
  uint32_t hist[3][2048] = {};
  for (const uint64_t x : a)
    for (int p = 0; p < 3; ++p) ++hist[p][(x >> kShift[p]) & kMask[p]];
  tmp.resize(n);
  uint64_t* src = a.data();
  uint64_t* dst = tmp.data();
  for (int p = 0; p < 3; ++p) {
    uint32_t* h = hist[p];
    if (h[(src[0] >> kShift[p]) & kMask[p]] == n) continue;  // one bucket: nothing to do
    uint32_t sum = 0;
    for (uint32_t b = 0; b <= kMask[p]; ++b) {
      const uint32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (std::size_t i = 0; i < n; ++i) dst[h[(src[i] >> kShift[p]) & kMask[p]]++] = src[i];
    std::swap(src, dst);
  }
  if (src != a.data()) std::memcpy(a.data(), src, n * sizeof(uint64_t));
}

// ---- The sorted, merged, weighted points and their prefix sums ----

struct Points {
  int m = 0;                      // distinct values of positive weight
  std::vector<float> v;           // sorted ascending, distinct
  std::vector<double> xc;         // v - mu (centred)
  std::vector<double> wt;         // merged weights (> 0)
  std::vector<double> W, S1, S2;  // prefix sums (size m+1) of wt, wt*xc, wt*xc^2
  double mu = 0.0;                // weighted mean of the values
  double w_total = 0.0;

  /// Weighted SSE of the interval [a, b) about its mean, from the prefix sums.
  double cost(int a, int b) const {
    const double w = W[b] - W[a];
    if (b - a <= 1 || w <= 0.0) return 0.0;
    const double s = S1[b] - S1[a];
    return std::max(0.0, (S2[b] - S2[a]) - s * s / w);
  }

  /// Weighted SSE of [a, b) about the (centred) point c.
  double cost_to(int a, int b, double c) const {
    const double w = W[b] - W[a];
    const double s = S1[b] - S1[a];
    return std::max(0.0, (S2[b] - S2[a]) - 2.0 * c * s + c * c * w);
  }

  /// Weighted mean (centred) of the non-empty interval [a, b), clamped into its range.
  double mean(int a, int b) const {
    double w = W[b] - W[a];
    double s = S1[b] - S1[a];
    if (b - a <= kDirectMaxLen || w < kDirectWeightFraction * w_total) {
      w = 0.0;
      s = 0.0;
      for (int i = a; i < b; ++i) {
        w += wt[i];
        s += wt[i] * xc[i];
      }
    }
    const double c = s / w;
    return std::min(std::max(c, xc[a]), xc[b - 1]);
  }

  /// First index whose centred value is > t (the boundary of a midpoint t).
  int upper(double t) const {
    return static_cast<int>(std::upper_bound(xc.begin(), xc.end(), t) - xc.begin());
  }

  /// upper(t), searched outward from `hint` with doubling steps (Lloyd's boundaries move
  /// little per iteration, so this is O(log distance moved)).
  int upper_from(double t, int hint) const {
    const double* x = xc.data();
    int lo, hi;  // the answer lies in [lo, hi]
    if (hint < m && x[hint] <= t) {
      lo = hint + 1;  // every index < lo holds a value <= t
      hi = lo;
      for (int step = 1; hi < m && x[hi] <= t; step *= 2) {
        lo = hi + 1;
        hi = std::min(m, lo + step);
      }
    } else {
      hi = hint;  // every index >= hi holds a value > t
      lo = hi - 1;
      for (int step = 1; lo >= 0 && x[lo] > t; step *= 2) {
        hi = lo;
        lo = hi - step;
      }
      lo = std::max(lo + 1, 0);
      if (lo > hi) lo = hi;
    }
    return static_cast<int>(std::upper_bound(x + lo, x + hi, t) - x);
  }
};

/// A clustering: k+1 boundaries 0 = b[0] < b[1] < ... < b[k] = m; interval j is
/// [b[j], b[j+1]).
using Bounds = std::vector<int>;

double bounds_sse(const Points& P, const Bounds& b) {
  double s = 0.0;
  for (std::size_t j = 0; j + 1 < b.size(); ++j) s += P.cost(b[j], b[j + 1]);
  return s;
}

/// Optimal 2-split point s in (a, e) of the interval [a, e) (e - a >= 2): the s minimizing
/// cost(a, s) + cost(s, e); ties to the smallest s. *best gets that cost.
int best_split(const Points& P, int a, int e, double* best) {
  int s_best = a + 1;
  double c_best = std::numeric_limits<double>::infinity();
  for (int s = a + 1; s < e; ++s) {
    const double c = P.cost(a, s) + P.cost(s, e);
    if (c < c_best) {
      c_best = c;
      s_best = s;
    }
  }
  *best = c_best;
  return s_best;
}

/// Makes b (non-decreasing, b[0] = 0, b[k] = m) strictly increasing: drops empty intervals
/// and splits the interval of largest SSE at its optimal 2-split until there are k again.
/// Requires m >= k.
void repair_empty(const Points& P, Bounds& b) {
  const int k = static_cast<int>(b.size()) - 1;
  bool ok = true;
  for (int j = 0; j < k; ++j) ok = ok && b[j] < b[j + 1];
  if (ok) return;
  std::vector<int> cuts;  // distinct boundaries, including 0 and m
  for (int j = 0; j <= k; ++j)
    if (cuts.empty() || b[j] != cuts.back()) cuts.push_back(b[j]);
  while (static_cast<int>(cuts.size()) - 1 < k) {
    int pick = -1;
    double pick_cost = -1.0;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      if (cuts[i + 1] - cuts[i] < 2) continue;
      const double c = P.cost(cuts[i], cuts[i + 1]);
      if (c > pick_cost) {
        pick_cost = c;
        pick = static_cast<int>(i);
      }
    }
    MPQ_ASSERT(pick >= 0);  // m >= k guarantees an interval of 2+ points
    double unused;
    const int s = best_split(P, cuts[pick], cuts[pick + 1], &unused);
    cuts.insert(cuts.begin() + pick + 1, s);
  }
  b = cuts;
}

/// Lloyd's algorithm on interval boundaries until no boundary moves or max_iters
/// assignment steps; returns the number of steps.
int lloyd(const Points& P, Bounds& b, int max_iters) {
  const int k = static_cast<int>(b.size()) - 1;
  std::vector<double> c(k);
  Bounds nb(b.size());
  int it = 0;
  while (it < max_iters) {
    for (int j = 0; j < k; ++j) c[j] = P.mean(b[j], b[j + 1]);
    ++it;
    nb[0] = 0;
    nb[k] = P.m;
    for (int j = 1; j < k; ++j) nb[j] = P.upper_from(0.5 * (c[j - 1] + c[j]), b[j]);
    repair_empty(P, nb);
    if (nb == b) break;
    b.swap(nb);
  }
  return it;
}

/// Initial boundaries from weighted quantiles: k intervals of (close to) equal weight.
Bounds quantile_bounds(const Points& P, int k) {
  Bounds b(k + 1);
  b[0] = 0;
  b[k] = P.m;
  for (int j = 1; j < k; ++j) {
    const double target = P.w_total * j / k;
    int i = static_cast<int>(std::lower_bound(P.W.begin(), P.W.end(), target) - P.W.begin());
    i = std::min(i, P.m);
    if (i > 0 && target - P.W[i - 1] < P.W[i] - target) --i;  // the nearer cumulative mass
    b[j] = i;
  }
  for (int j = 1; j < k; ++j) b[j] = std::max(b[j], b[j - 1] + 1);
  for (int j = k - 1; j >= 1; --j) b[j] = std::min(b[j], b[j + 1] - 1);
  return b;
}

/// Boundaries of the nearest-centre regions of sorted distinct centred centres c.
Bounds bounds_from_centres(const Points& P, const std::vector<double>& c) {
  const int k = static_cast<int>(c.size());
  Bounds b(k + 1);
  b[0] = 0;
  b[k] = P.m;
  for (int j = 1; j < k; ++j) b[j] = P.upper(0.5 * (c[j - 1] + c[j]));
  for (int j = 1; j <= k; ++j) b[j] = std::max(b[j], b[j - 1]);
  return b;
}

/// k-means++ seeding (D^2 weighting, times the point weights) on the prefix sums: the
/// nearest-centre regions are intervals, so each region's D^2 mass is O(1) and the point
/// inside it is found by binary search on the cumulative mass. Returns k sorted centres.
std::vector<double> kmeanspp_centres(const Points& P, int k, uint64_t& rng) {
  std::vector<double> c;
  c.reserve(k);
  {
    const double u = uniform01(rng) * P.w_total;
    int i = static_cast<int>(std::upper_bound(P.W.begin() + 1, P.W.end(), u) - (P.W.begin() + 1));
    c.push_back(P.xc[std::min(i, P.m - 1)]);
  }
  std::vector<double> mass;
  while (static_cast<int>(c.size()) < k) {
    const Bounds reg = bounds_from_centres(P, c);
    const int r = static_cast<int>(c.size());
    mass.assign(r, 0.0);
    double total = 0.0;
    for (int i = 0; i < r; ++i) {
      mass[i] = P.cost_to(reg[i], reg[i + 1], c[i]);
      total += mass[i];
    }
    int pick = -1;
    if (total > 0.0) {
      double u = uniform01(rng) * total;
      int i = 0;
      while (i + 1 < r && (u >= mass[i] || reg[i] == reg[i + 1])) {
        u -= mass[i];
        ++i;
      }
      // Smallest t in [a, e) with cost_to(a, t + 1) > u.
      int lo = reg[i], hi = reg[i + 1] - 1;
      while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (P.cost_to(reg[i], mid + 1, c[i]) > u)
          hi = mid;
        else
          lo = mid + 1;
      }
      if (lo >= reg[i] && lo < reg[i + 1]) pick = lo;
    }
    if (pick < 0 || std::binary_search(c.begin(), c.end(), P.xc[pick])) {
      // Rounding left no usable mass (or hit a centre): take the point of largest
      // weighted squared distance to its nearest centre instead.
      double far = -1.0;
      for (int i = 0; i < r; ++i)
        for (int t = reg[i]; t < reg[i + 1]; ++t) {
          const double d = P.xc[t] - c[i];
          const double q = P.wt[t] * d * d;
          if (q > far && !std::binary_search(c.begin(), c.end(), P.xc[t])) {
            far = q;
            pick = t;
          }
        }
    }
    MPQ_ASSERT(pick >= 0);  // m > k: a non-centre point always exists
    c.insert(std::upper_bound(c.begin(), c.end(), P.xc[pick]), P.xc[pick]);
  }
  return c;
}

/// Optimal k-partition whose cuts lie at candidate positions, each cut in a window:
///   0 = b_0 < b_1 < ... < b_k = m,   b_l = pos[i_l],   i_l in [lo[l], hi[l]],
/// by dynamic programming over l with the divide-and-conquer optimization (the 1-D SSE
/// cost satisfies the quadrangle inequality, so the best previous cut is monotone in the
/// next one; Grønlund et al. 2017). lo and hi must be strictly increasing with lo <= hi,
/// lo[0] = hi[0] = 0 and lo[k] = hi[k] = index of m; pos strictly increasing (nullptr:
/// the identity, pos[i] = i). Cost O(sum_l |window_l| log |window_l-1|).
class WindowDp {
 public:
  WindowDp(const Points& P, const int* pos, std::vector<int> lo, std::vector<int> hi)
      : lo_(std::move(lo)), hi_(std::move(hi)) {
    const int k = static_cast<int>(lo_.size()) - 1;
    if (pos) {  // gather the prefix sums at the candidates: no indirection in the inner loop
      const int nb = hi_[k];
      cw_.resize(nb + 1);
      cs1_.resize(nb + 1);
      cs2_.resize(nb + 1);
      for (int i = 0; i <= nb; ++i) {
        cw_[i] = P.W[pos[i]];
        cs1_[i] = P.S1[pos[i]];
        cs2_[i] = P.S2[pos[i]];
      }
      pos_ = pos;
      W_ = cw_.data();
      S1_ = cs1_.data();
      S2_ = cs2_.data();
    } else {
      W_ = P.W.data();
      S1_ = P.S1.data();
      S2_ = P.S2.data();
    }
  }

  Bounds solve() {
    const int k = static_cast<int>(lo_.size()) - 1;
    off_.assign(k + 2, 0);
    for (int l = 0; l <= k; ++l) off_[l + 1] = off_[l] + (hi_[l] - lo_[l] + 1);
    d_.assign(off_[k + 1], std::numeric_limits<double>::infinity());
    arg_.assign(off_[k + 1], 0);
    d_[0] = 0.0;
    for (int l = 1; l <= k; ++l) fill(l, lo_[l], hi_[l], lo_[l - 1], hi_[l - 1]);
    Bounds b(k + 1);
    int i = hi_[k];
    for (int l = k; l >= 0; --l) {
      b[l] = pos_ ? pos_[i] : i;
      if (l > 0) i = arg_[off_[l] + (i - lo_[l])];
    }
    return b;
  }

 private:
  // Layer l at cut indices e in [e_lo, e_hi], the previous cut known to be in [a_lo, a_hi].
  void fill(int l, int e_lo, int e_hi, int a_lo, int a_hi) {
    while (e_lo <= e_hi) {
      const int e = e_lo + (e_hi - e_lo) / 2;
      const int a_first = std::max(a_lo, lo_[l - 1]);
      const int a_last = std::min({a_hi, e - 1, hi_[l - 1]});
      const double* dprev = d_.data() + off_[l - 1] - lo_[l - 1];
      const double we = W_[e], s1e = S1_[e], s2e = S2_[e];
      double best = std::numeric_limits<double>::infinity();
      int best_a = a_first;
      for (int a = a_first; a <= a_last; ++a) {
        // SSE of (a, e] about its mean; rounding may make it slightly negative (harmless).
        const double s = s1e - S1_[a];
        const double v = dprev[a] + ((s2e - S2_[a]) - s * s / (we - W_[a]));
        if (v < best) {
          best = v;
          best_a = a;
        }
      }
      d_[off_[l] + (e - lo_[l])] = best;
      arg_[off_[l] + (e - lo_[l])] = best_a;
      fill(l, e_lo, e - 1, a_lo, best_a);
      e_lo = e + 1;  // tail call: the right half
      a_lo = best_a;
    }
  }

  std::vector<int> lo_, hi_, off_, arg_;
  std::vector<double> d_, cw_, cs1_, cs2_;
  const int* pos_ = nullptr;
  const double* W_;
  const double* S1_;
  const double* S2_;
};

/// Start (c) of the file comment: the optimal k-partition, exact when m <= max_points,
/// otherwise with cuts restricted to about max_points candidate positions: the union of
/// equal-count cuts (resolution where the values are dense) and equal-value-step cuts
/// (resolution in sparse, heavy tails, where single outliers earn their own centroid).
/// *block gets the most points between consecutive candidates (1 when exact).
Bounds dp_bounds(const Points& P, int k, int max_points, int* block) {
  std::vector<int> pos;
  const int* pp = nullptr;
  int nb = P.m;  // index of the last candidate
  *block = 1;
  if (P.m > max_points) {
    const int half = std::max(max_points, 4 * k) / 2;
    pos.reserve(2 * half + 1);
    for (int i = 0; i <= half; ++i)
      pos.push_back(static_cast<int>((static_cast<int64_t>(i) * P.m + half / 2) / half));
    const double lo = P.xc.front(), hi = P.xc.back();
    for (int i = 1; i < half; ++i) pos.push_back(P.upper(lo + (hi - lo) * i / half));
    std::sort(pos.begin(), pos.end());
    pos.erase(std::unique(pos.begin(), pos.end()), pos.end());
    nb = static_cast<int>(pos.size()) - 1;
    for (int i = 0; i < nb; ++i) *block = std::max(*block, pos[i + 1] - pos[i]);
    pp = pos.data();
  }
  std::vector<int> lo(k + 1), hi(k + 1);
  for (int l = 0; l <= k; ++l) {
    lo[l] = l == k ? nb : l;
    hi[l] = l == 0 ? 0 : nb - (k - l);
  }
  return WindowDp(P, pp, std::move(lo), std::move(hi)).solve();
}

/// Step 4 of the file comment: the optimal partition with every inner cut within `radius`
/// points of its current place, repeated (re-centred) while a cut lands on the edge of
/// its window. Never raises the SSE (the current cuts are a feasible choice).
void refine_banded(const Points& P, Bounds& b, int radius) {
  const int k = static_cast<int>(b.size()) - 1;
  if (k < 2) return;
  std::vector<int> lo(k + 1), hi(k + 1);
  for (int round = 0; round < kMaxRefineRounds; ++round) {
    lo[0] = hi[0] = 0;
    lo[k] = hi[k] = P.m;
    for (int j = 1; j < k; ++j) {
      lo[j] = std::max(b[j] - radius, j);
      hi[j] = std::min(b[j] + radius, P.m - (k - j));
    }
    const double before = bounds_sse(P, b);
    Bounds nb = WindowDp(P, nullptr, lo, hi).solve();
    if (!(bounds_sse(P, nb) < before)) return;  // no gain: keep b (also guards rounding)
    bool on_edge = false;
    for (int j = 1; j < k; ++j)
      on_edge =
          on_edge || (nb[j] == lo[j] && lo[j] > j) || (nb[j] == hi[j] && hi[j] < P.m - (k - j));
    b.swap(nb);
    if (!on_edge) return;
  }
}

[[noreturn]] void throw_kmeans(const std::string& what) {
  throw Error(ExitCode::kInput, "kmeans: " + what);
}

void check_k(int k) {
  if (k < 1 || k > kMaxK)
    throw_kmeans("k = " + std::to_string(k) + " outside [1, " + std::to_string(kMaxK) + "]");
}

}  // namespace

KMeans1DResult weighted_kmeans_1d(const float* x, const float* w, int64_t n, int k,
                                  const KMeans1DOptions& opt) {
  check_k(k);
  if (n < 0) throw_kmeans("n = " + std::to_string(n) + " is negative");
  KMeans1DResult res;
  if (n == 0) {
    res.centroids.assign(k, 0.0f);
    return res;
  }
  if (n > std::numeric_limits<int>::max())
    throw_kmeans("n = " + std::to_string(n) + " is too large for one row");

  // Validate; decide whether the weights are usable (some positive) or uniform.
  bool any_positive = false;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]))
      throw_kmeans(std::string("x[") + std::to_string(i) + "] is " +
                   (std::isnan(x[i]) ? "NaN" : "Inf"));
    if (w) {
      if (!std::isfinite(w[i]) || w[i] < 0.0f)
        throw_kmeans("weight w[" + std::to_string(i) + "] = " + std::to_string(w[i]) +
                     " (weights must be finite and >= 0)");
      any_positive = any_positive || w[i] > 0.0f;
    }
  }
  const float* wu = any_positive ? w : nullptr;

  // Sort (value key, weight bits) pairs once, then merge equal values.
  std::vector<uint64_t> keys(static_cast<std::size_t>(n)), tmp;
  for (int64_t i = 0; i < n; ++i) {
    const float wi = wu ? wu[i] : 1.0f;
    uint32_t wbits;
    std::memcpy(&wbits, &wi, 4);
    keys[i] = (static_cast<uint64_t>(float_key(x[i])) << 32) | wbits;
  }
  sort_by_key(keys, tmp);

  Points P;
  P.v.reserve(n);
  P.wt.reserve(n);
  for (std::size_t i = 0; i < keys.size();) {
    const uint32_t key = static_cast<uint32_t>(keys[i] >> 32);
    double wsum = 0.0;
    for (; i < keys.size() && static_cast<uint32_t>(keys[i] >> 32) == key; ++i) {
      float wi;
      const uint32_t wbits = static_cast<uint32_t>(keys[i]);
      std::memcpy(&wi, &wbits, 4);
      wsum += wi;
    }
    if (wsum > 0.0) {
      P.v.push_back(key_float(key));
      P.wt.push_back(wsum);
    }
  }
  P.m = static_cast<int>(P.v.size());
  MPQ_ASSERT(P.m >= 1);

  if (P.m <= k) {
    // Exact: every distinct weighted value is a centroid; pad with the largest.
    res.centroids.assign(P.v.begin(), P.v.end());
    res.centroids.resize(k, P.v.back());
  } else {
    double wt = 0.0, wx = 0.0;
    for (int i = 0; i < P.m; ++i) {
      wt += P.wt[i];
      wx += P.wt[i] * static_cast<double>(P.v[i]);
    }
    P.w_total = wt;
    P.mu = wx / wt;
    P.xc.resize(P.m);
    for (int i = 0; i < P.m; ++i) P.xc[i] = static_cast<double>(P.v[i]) - P.mu;
    // Centring can merge distinct values when the row spans more than ~2^29 in magnitude
    // (tiny values beside a huge mean); then work uncentred, where floats stay distinct.
    for (int i = 1; i < P.m; ++i) {
      if (!(P.xc[i - 1] < P.xc[i])) {
        P.mu = 0.0;
        for (int j = 0; j < P.m; ++j) P.xc[j] = P.v[j];
        break;
      }
    }
    P.W.assign(P.m + 1, 0.0);
    P.S1.assign(P.m + 1, 0.0);
    P.S2.assign(P.m + 1, 0.0);
    for (int i = 0; i < P.m; ++i) {
      const double xi = P.xc[i];
      P.W[i + 1] = P.W[i] + P.wt[i];
      P.S1[i + 1] = P.S1[i] + P.wt[i] * xi;
      P.S2[i + 1] = P.S2[i] + P.wt[i] * xi * xi;
    }
    const int max_iters = std::max(1, opt.max_iters);

    // Candidates: quantile Lloyd, k-means++ Lloyd restarts, DP; the least SSE wins (the
    // first on ties). The winner gets the banded refinement unless it is the DP candidate
    // (exact, or refined already).
    Bounds best = quantile_bounds(P, k);
    int best_iters = lloyd(P, best, max_iters);
    double best_sse = bounds_sse(P, best);
    bool best_is_dp = false;
    auto consider = [&](Bounds& b, int it, bool is_dp) {
      const double s = bounds_sse(P, b);
      if (s < best_sse) {
        best_sse = s;
        best.swap(b);
        best_iters = it;
        best_is_dp = is_dp;
      }
    };
    if (k > 1) {
      uint64_t rng = opt.seed;
      for (int r = 0; r < opt.restarts; ++r) {
        Bounds b = bounds_from_centres(P, kmeanspp_centres(P, k, rng));
        repair_empty(P, b);
        const int it = lloyd(P, b, max_iters);
        consider(b, it, false);
      }
      const int radius = std::max(0, opt.refine_radius);
      if (opt.dp_max_points > 0) {
        int block = 1;
        Bounds b = dp_bounds(P, k, opt.dp_max_points, &block);
        if (block > 1) refine_banded(P, b, std::max(block, radius));  // block 1: exact
        consider(b, 0, true);
      }
      if (!best_is_dp && radius > 0) refine_banded(P, best, radius);
    }
    res.iterations = best_iters;

    res.centroids.resize(k);
    for (int j = 0; j < k; ++j)
      res.centroids[j] = static_cast<float>(P.mu + P.mean(best[j], best[j + 1]));
    // Rounding is monotone, so the float centroids stay sorted; make sure regardless.
    std::sort(res.centroids.begin(), res.centroids.end());
  }

  res.assignment = assign_to_lut(x, n, res.centroids.data(), k);
  double sse = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - res.centroids[res.assignment[i]];
    sse += (wu ? static_cast<double>(wu[i]) : 1.0) * d * d;
  }
  res.weighted_sse = sse;
  return res;
}

std::vector<uint8_t> assign_to_lut(const float* x, int64_t n, const float* lut, int k) {
  check_k(k);
  if (n < 0) throw_kmeans("n = " + std::to_string(n) + " is negative");
  bool sorted = true;
  for (int j = 0; j < k; ++j) {
    if (!std::isfinite(lut[j]))
      throw_kmeans("lut[" + std::to_string(j) + "] is " + (std::isnan(lut[j]) ? "NaN" : "Inf"));
    if (j > 0 && lut[j] < lut[j - 1]) sorted = false;
  }
  std::vector<uint8_t> out(static_cast<std::size_t>(n));
  if (sorted) {
    // For a sorted lut, x belongs to index #{j >= 1 : x > (lut[j-1] + lut[j]) / 2}, mapped
    // to the lowest index holding that value (duplicates: ties go to the lower index);
    // exactly at a midpoint stays below. The midpoint m (exact in double) becomes the float
    // threshold t = the largest float <= m, and for float x: x > m <=> x > t, so the
    // counting is float compares that vectorize.
    uint8_t lowest[kMaxK];
    float thr[kMaxK];
    for (int j = 0; j < k; ++j)
      lowest[j] = static_cast<uint8_t>((j > 0 && lut[j] == lut[j - 1]) ? lowest[j - 1] : j);
    for (int j = 1; j < k; ++j) {
      const double mid = 0.5 * (static_cast<double>(lut[j - 1]) + lut[j]);
      float t = static_cast<float>(mid);
      if (static_cast<double>(t) > mid)
        t = std::nextafter(t, -std::numeric_limits<float>::infinity());
      thr[j - 1] = t;
    }
    constexpr int64_t kChunk = 256;
    int32_t cnt[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t len = std::min(kChunk, n - i0);
      const float* xc = x + i0;
      bool has_nan = false;
      for (int64_t i = 0; i < len; ++i) has_nan |= std::isnan(xc[i]);
      if (has_nan)
        for (int64_t i = 0; i < len; ++i)
          if (std::isnan(xc[i])) throw_kmeans("x[" + std::to_string(i0 + i) + "] is NaN");
      if (k <= 32) {
        for (int64_t i = 0; i < len; ++i) cnt[i] = 0;
        for (int j = 0; j + 1 < k; ++j) {
          const float t = thr[j];
          for (int64_t i = 0; i < len; ++i) cnt[i] += xc[i] > t ? 1 : 0;
        }
      } else {
        for (int64_t i = 0; i < len; ++i) {  // branchless lower_bound over k-1 thresholds
          const float xi = xc[i];
          const float* base = thr;
          for (int m = k - 1; m > 1;) {
            const int half = m / 2;
            base = base[half] < xi ? base + half : base;
            m -= half;
          }
          cnt[i] = static_cast<int32_t>(base - thr) + (*base < xi ? 1 : 0);
        }
      }
      for (int64_t i = 0; i < len; ++i) out[i0 + i] = lowest[cnt[i]];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const double xi = x[i];
      if (std::isnan(xi)) throw_kmeans("x[" + std::to_string(i) + "] is NaN");
      int best = 0;
      double bd = std::fabs(xi - lut[0]);
      for (int j = 1; j < k; ++j) {
        const double d = std::fabs(xi - lut[j]);
        if (d < bd) {
          bd = d;
          best = j;
        }
      }
      out[i] = static_cast<uint8_t>(best);
    }
  }
  return out;
}

void kmeans_rows(const float* w, const float* sens, int64_t rows, int64_t cols, int k,
                 float* centroids, uint8_t* codes, double* row_sse, const KMeans1DOptions& opt,
                 int num_threads) {
  quant_detail::check_shape("kmeans", rows, cols);
  check_k(k);
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  int64_t bad_row = rows;
  std::exception_ptr bad;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    try {
      KMeans1DOptions o = opt;
      uint64_t s = opt.seed + static_cast<uint64_t>(r);
      o.seed = splitmix64_next(s);
      const KMeans1DResult res =
          weighted_kmeans_1d(w + r * cols, sens ? sens + r * cols : nullptr, cols, k, o);
      std::copy(res.centroids.begin(), res.centroids.end(), centroids + r * k);
      std::copy(res.assignment.begin(), res.assignment.end(), codes + r * cols);
      if (row_sse) row_sse[r] = res.weighted_sse;
    } catch (...) {
#pragma omp critical(mpq_kmeans_rows_error)
      if (r < bad_row) {
        bad_row = r;
        bad = std::current_exception();
      }
    }
  }
  if (!bad) return;
  try {
    std::rethrow_exception(bad);
  } catch (const Error& e) {
    throw Error(e.code(), "row " + std::to_string(bad_row) + ": " + e.what());
  }
}

}  // namespace mpq
