// Tests of lib/quant/kmeans1d: weighted 1-D k-means against (a) a plain reference —
// weighted Lloyd with k-means++ seeding and exactly 50 iterations, SqueezeLLM's bar — on
// many random rows, (b) the brute-force optimal contiguous partition on small inputs,
// plus determinism, degenerate inputs, errors and assign_to_lut's nearest/tie rule.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lib/common/error.h"
#include "lib/quant/kmeans1d.h"

namespace mpq {
namespace {

// ---- Reference: weighted Lloyd + k-means++, exactly 50 iterations, O(n k) each ----

/// Weighted SSE of x against centres c with nearest assignment (ties to the lower index).
double sse_nearest(const std::vector<float>& x, const std::vector<double>& w,
                   const std::vector<double>& c) {
  double s = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    double bd = std::numeric_limits<double>::infinity();
    for (const double cj : c) bd = std::min(bd, (x[i] - cj) * (x[i] - cj));
    s += w[i] * bd;
  }
  return s;
}

/// Reference weighted k-means on unsorted data: k-means++ seeding (first centre drawn in
/// proportion to w, then to w * D^2) and 50 Lloyd iterations (an empty cluster keeps its
/// centre). Returns the weighted SSE of the final centres.
double reference_sse(const std::vector<float>& x, const std::vector<double>& w, int k,
                     uint64_t seed) {
  const std::size_t n = x.size();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  auto draw = [&](const std::vector<double>& mass) {
    double total = 0.0;
    for (const double m : mass) total += m;
    double u = u01(rng) * total;
    for (std::size_t i = 0; i < n; ++i) {
      if (u < mass[i]) return i;
      u -= mass[i];
    }
    std::size_t last = n - 1;
    while (last > 0 && mass[last] == 0.0) --last;
    return last;
  };
  std::vector<double> c;
  c.push_back(x[draw(w)]);
  std::vector<double> d2(n), mass(n);
  while (static_cast<int>(c.size()) < k) {
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double bd = std::numeric_limits<double>::infinity();
      for (const double cj : c) bd = std::min(bd, (x[i] - cj) * (x[i] - cj));
      mass[i] = w[i] * bd;
      total += mass[i];
    }
    if (total <= 0.0) {  // fewer distinct weighted values than k
      c.push_back(c.back());
      continue;
    }
    c.push_back(x[draw(mass)]);
  }
  std::vector<double> sw(k), swx(k);
  for (int it = 0; it < 50; ++it) {
    std::fill(sw.begin(), sw.end(), 0.0);
    std::fill(swx.begin(), swx.end(), 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      int best = 0;
      double bd = std::fabs(x[i] - c[0]);
      for (int j = 1; j < k; ++j) {
        const double d = std::fabs(x[i] - c[j]);
        if (d < bd) {
          bd = d;
          best = j;
        }
      }
      sw[best] += w[i];
      swx[best] += w[i] * x[i];
    }
    for (int j = 0; j < k; ++j)
      if (sw[j] > 0.0) c[j] = swx[j] / sw[j];
  }
  return sse_nearest(x, w, c);
}

/// Weighted SSE of a result's partition about each cluster's exact (double) weighted mean:
/// what the result scores before its centroids are rounded to float.
double partition_sse(const std::vector<float>& x, const std::vector<double>& w,
                     const KMeans1DResult& r) {
  const std::size_t k = r.centroids.size();
  std::vector<double> sw(k, 0.0), swx(k, 0.0);
  for (std::size_t i = 0; i < x.size(); ++i) {
    sw[r.assignment[i]] += w[i];
    swx[r.assignment[i]] += w[i] * x[i];
  }
  double s = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t j = r.assignment[i];
    if (sw[j] <= 0.0) continue;
    const double d = x[i] - swx[j] / sw[j];
    s += w[i] * d * d;
  }
  return s;
}

/// Weighted SSE of a result recomputed here from its float centroids and assignment.
double result_sse(const std::vector<float>& x, const std::vector<double>& w,
                  const KMeans1DResult& r) {
  double s = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - r.centroids[r.assignment[i]];
    s += w[i] * d * d;
  }
  return s;
}

// ---- Random rows ----

enum class Values { kGaussian, kStudentT };
enum class Weights { kUniform, kExponential, kSquaredGrad };

struct Row {
  std::vector<float> x;
  std::vector<float> w;  // empty: uniform (pass nullptr)
  std::vector<double> wd;
};

Row random_row(std::mt19937_64& rng, int64_t n, Values vk, Weights wk) {
  Row r;
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::student_t_distribution<double> t3(3.0);
  std::exponential_distribution<double> expo(1.0);
  std::student_t_distribution<double> t2(2.0);
  r.x.resize(n);
  for (auto& v : r.x)
    v = static_cast<float>(0.02 * (vk == Values::kGaussian ? gauss(rng) : t3(rng)));
  if (wk != Weights::kUniform) {
    r.w.resize(n);
    for (auto& v : r.w) {
      if (wk == Weights::kExponential) {
        v = static_cast<float>(expo(rng));
      } else {
        const double g = 1e-3 * t2(rng);  // squared gradients: very heavy tailed
        v = static_cast<float>(g * g);
      }
    }
  }
  r.wd.resize(n);
  for (int64_t i = 0; i < n; ++i) r.wd[i] = r.w.empty() ? 1.0 : r.w[i];
  return r;
}

const char* values_name(Values v) { return v == Values::kGaussian ? "gauss" : "t3"; }
const char* weights_name(Weights w) {
  return w == Weights::kUniform ? "uniform" : w == Weights::kExponential ? "exp" : "grad2";
}

// ---- The SqueezeLLM bar: never worse than Lloyd + k-means++ + 50 iterations ----

TEST(KMeans1D, NeverWorseThanReferenceLloyd) {
  const int64_t ns[] = {16, 100, 172, 4096};
  const int ks[] = {4, 8, 16};
  const Values vs[] = {Values::kGaussian, Values::kStudentT};
  const Weights ws[] = {Weights::kUniform, Weights::kExponential, Weights::kSquaredGrad};
  std::mt19937_64 rng(12345);
  constexpr int kRows = 300;
  int better = 0, equal = 0, worse = 0;
  double sum_improve = 0.0, max_improve = 0.0;
  double sum_improve_n[4] = {}, count_n[4] = {};
  for (int row = 0; row < kRows; ++row) {
    const int ni = row % 4;
    const int64_t n = ns[ni];
    const int k = ks[(row / 4) % 3];
    const Values vk = vs[(row / 12) % 2];
    const Weights wk = ws[(row / 24) % 3];
    const Row r = random_row(rng, n, vk, wk);
    const KMeans1DResult ours =
        weighted_kmeans_1d(r.x.data(), r.w.empty() ? nullptr : r.w.data(), n, k);
    const double ours_sse = result_sse(r.x, r.wd, ours);
    ASSERT_NEAR(ours_sse, ours.weighted_sse, 1e-12 * ours_sse + 1e-300);
    const double ref = reference_sse(r.x, r.wd, k, 1000 + row);
    EXPECT_LE(ours_sse, ref * (1.0 + 1e-9)) << "row " << row << " n=" << n << " k=" << k << " "
                                            << values_name(vk) << " " << weights_name(wk);
    const double improve = ref > 0.0 ? (ref - ours_sse) / ref : 0.0;
    if (improve > 1e-9)
      ++better;
    else if (improve >= -1e-9)
      ++equal;
    else
      ++worse;
    sum_improve += improve;
    sum_improve_n[ni] += improve;
    count_n[ni] += 1;
    max_improve = std::max(max_improve, improve);
  }
  std::printf(
      "[kmeans] %d rows vs Lloyd+k-means++ (50 it): better %d, equal %d, worse %d; "
      "SSE lower by %.3f%% on average (max %.2f%%)\n",
      kRows, better, equal, worse, 100.0 * sum_improve / kRows, 100.0 * max_improve);
  for (int i = 0; i < 4; ++i)
    std::printf("[kmeans]   n=%-5lld average improvement %.3f%%\n", static_cast<long long>(ns[i]),
                100.0 * sum_improve_n[i] / count_n[i]);
  EXPECT_EQ(worse, 0);
}

// ---- Exactness against brute force on small inputs ----

/// The distinct positive-weight values of (x, w), sorted, with the weights of equal values
/// summed, in scalar type T (both reference solvers below start from it).
template <typename T>
void distinct_weighted_points(const std::vector<float>& x, const std::vector<double>& w, std::vector<T>& v,
                              std::vector<T>& vw) {
  std::vector<std::pair<float, double>> p;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (w[i] > 0.0) p.emplace_back(x[i], w[i]);
  std::sort(p.begin(), p.end());
  for (const auto& [val, wt] : p) {
    if (!v.empty() && v.back() == val) {
      vw.back() += wt;
    } else {
      v.push_back(val);
      vw.push_back(wt);
    }
  }
}

/// Optimal weighted SSE over all partitions of the sorted distinct positive-weight values
/// into k contiguous non-empty groups (0 when there are at most k such values).
double brute_force_optimum(const std::vector<float>& x, const std::vector<double>& w, int k) {
  std::vector<double> v, vw;
  distinct_weighted_points(x, w, v, vw);
  const int m = static_cast<int>(v.size());
  if (m <= k) return 0.0;
  auto cost = [&](int a, int b) {
    double sw = 0.0, swx = 0.0;
    for (int i = a; i < b; ++i) {
      sw += vw[i];
      swx += vw[i] * v[i];
    }
    const double mean = swx / sw;
    double s = 0.0;
    for (int i = a; i < b; ++i) s += vw[i] * (v[i] - mean) * (v[i] - mean);
    return s;
  };
  double best = std::numeric_limits<double>::infinity();
  std::function<void(int, int, double)> rec = [&](int start, int groups_left, double acc) {
    if (groups_left == 1) {
      best = std::min(best, acc + cost(start, m));
      return;
    }
    for (int e = start + 1; e <= m - (groups_left - 1); ++e)
      rec(e, groups_left - 1, acc + cost(start, e));
  };
  rec(0, k, 0.0);
  return best;
}

TEST(KMeans1D, MatchesBruteForceOnSmallInputs) {
  std::mt19937_64 rng(777);
  std::uniform_int_distribution<int> n_dist(1, 12), k_dist(1, 4), grid(0, 6);
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::exponential_distribution<double> expo(1.0);
  std::bernoulli_distribution coin(0.5), rare(0.15);
  constexpr int kTrials = 2000;
  int partition_optimal = 0, within_1e12 = 0;
  double worst_rel = 0.0, worst_partition_rel = 0.0;
  for (int t = 0; t < kTrials; ++t) {
    const int n = n_dist(rng), k = k_dist(rng);
    const bool ties = rare(rng);  // values on a coarse grid: many duplicates
    const bool weighted = coin(rng);
    std::vector<float> x(n), w(n);
    std::vector<double> wd(n);
    for (int i = 0; i < n; ++i) {
      x[i] = ties ? static_cast<float>(0.5 * grid(rng)) : static_cast<float>(gauss(rng));
      w[i] = weighted ? (rare(rng) ? 0.0f : static_cast<float>(expo(rng))) : 1.0f;
    }
    bool all_zero = true;
    for (int i = 0; i < n; ++i) all_zero = all_zero && w[i] == 0.0f;
    for (int i = 0; i < n; ++i) wd[i] = all_zero ? 1.0 : w[i];
    const KMeans1DResult r = weighted_kmeans_1d(x.data(), weighted ? w.data() : nullptr, n, k);
    const double opt = brute_force_optimum(x, wd, k);
    const double ours = result_sse(x, wd, r);
    const double part = partition_sse(x, wd, r);
    const double rel = opt > 0.0 ? (ours - opt) / opt : (ours > 0.0 ? 1.0 : 0.0);
    const double prel = opt > 0.0 ? (part - opt) / opt : (part > 0.0 ? 1.0 : 0.0);
    worst_rel = std::max(worst_rel, rel);
    worst_partition_rel = std::max(worst_partition_rel, prel);
    if (prel <= 1e-12) ++partition_optimal;
    if (rel <= 1e-12) ++within_1e12;
    // The partition is optimal (the DP is exact here) ...
    EXPECT_LE(prel, 1e-12) << "trial " << t << " n=" << n << " k=" << k << " opt=" << opt
                           << " partition=" << part;
    // ... and rounding the centroids to float costs at most a few ulps' worth.
    EXPECT_LE(rel, 1e-9) << "trial " << t << " n=" << n << " k=" << k << " opt=" << opt
                         << " ours=" << ours;
    if (opt == 0.0) {
      EXPECT_EQ(ours, 0.0) << "trial " << t;
    }
    // And never worse than the reference Lloyd.
    EXPECT_LE(ours, reference_sse(x, wd, k, t) * (1.0 + 1e-9)) << "trial " << t;
  }
  std::printf(
      "[kmeans] brute force, %d trials (n <= 12, k <= 4): optimal partition %d "
      "(worst relative excess %.3g); with float centroids within 1e-12 relative %d "
      "(worst %.3g)\n",
      kTrials, partition_optimal, worst_partition_rel, within_1e12, worst_rel);
  EXPECT_GE(within_1e12, kTrials * 95 / 100);
}

/// Optimal weighted SSE by a plain O(k m^2) DP over the sorted distinct positive-weight
/// values, interval costs accumulated in long double (independent of the library's DP).
double plain_dp_optimum(const std::vector<float>& x, const std::vector<double>& w, int k) {
  std::vector<long double> v, vw;
  distinct_weighted_points(x, w, v, vw);
  const int m = static_cast<int>(v.size());
  if (m <= k) return 0.0;
  // cost[a][b] for the interval [a, b), by a running weighted mean/variance update.
  std::vector<std::vector<long double>> cost(m, std::vector<long double>(m + 1, 0.0L));
  for (int a = 0; a < m; ++a) {
    long double sw = 0, mean = 0, ss = 0;
    for (int b = a; b < m; ++b) {
      const long double nw = sw + vw[b];
      const long double delta = v[b] - mean;
      mean += delta * vw[b] / nw;
      ss += vw[b] * delta * (v[b] - mean);
      sw = nw;
      cost[a][b + 1] = ss;
    }
  }
  const long double inf = std::numeric_limits<long double>::infinity();
  std::vector<long double> prev(m + 1, inf), cur(m + 1, inf);
  for (int e = 1; e <= m; ++e) prev[e] = cost[0][e];
  for (int l = 2; l <= k; ++l) {
    std::fill(cur.begin(), cur.end(), inf);
    for (int e = l; e <= m; ++e)
      for (int a = l - 1; a < e; ++a) cur[e] = std::min(cur[e], prev[a] + cost[a][e]);
    prev.swap(cur);
  }
  return static_cast<double>(prev[m]);
}

TEST(KMeans1D, ExactOnMediumRows) {
  // Rows with at most KMeans1DOptions::dp_max_points distinct values get the exact DP.
  std::mt19937_64 rng(31);
  const int64_t ns[] = {50, 100, 172, 256};
  const int ks[] = {4, 8, 16};
  int optimal = 0, rows = 0;
  double worst = 0.0;
  for (int row = 0; row < 48; ++row) {
    const int64_t n = ns[row % 4];
    const int k = ks[(row / 4) % 3];
    const Row r = random_row(rng, n, row % 2 ? Values::kStudentT : Values::kGaussian,
                             static_cast<Weights>(row % 3));
    const KMeans1DResult res =
        weighted_kmeans_1d(r.x.data(), r.w.empty() ? nullptr : r.w.data(), n, k);
    const double opt = plain_dp_optimum(r.x, r.wd, k);
    const double rel = (partition_sse(r.x, r.wd, res) - opt) / opt;
    worst = std::max(worst, rel);
    optimal += rel <= 1e-10 ? 1 : 0;
    ++rows;
    EXPECT_LE(rel, 1e-10) << "row " << row << " n=" << n << " k=" << k;
  }
  std::printf(
      "[kmeans] n <= 256 vs plain O(k n^2) DP: optimal partition %d/%d (worst relative "
      "excess %.3g)\n",
      optimal, rows, worst);
}

// ---- Near-exactness on full rows: default (blocked DP + refinement) vs exact DP ----

TEST(KMeans1D, DefaultCloseToExactDpOnLongRows) {
  std::mt19937_64 rng(99);
  KMeans1DOptions exact;
  exact.dp_max_points = 1 << 20;  // exact DP over all distinct values
  double worst = 0.0, sum = 0.0;
  int at_optimum = 0;
  constexpr int kRows = 24;
  for (int row = 0; row < kRows; ++row) {
    const int k = row % 2 ? 16 : 8;
    const Row r = random_row(rng, 4096, row % 4 < 2 ? Values::kGaussian : Values::kStudentT,
                             static_cast<Weights>(row % 3));
    const float* wp = r.w.empty() ? nullptr : r.w.data();
    const double ours = weighted_kmeans_1d(r.x.data(), wp, 4096, k).weighted_sse;
    const double opt = weighted_kmeans_1d(r.x.data(), wp, 4096, k, exact).weighted_sse;
    const double rel = (ours - opt) / opt;
    worst = std::max(worst, rel);
    sum += rel;
    if (rel <= 1e-12) ++at_optimum;
    EXPECT_LE(rel, 5e-3) << "row " << row;
  }
  std::printf(
      "[kmeans] n=4096: default vs exact DP over %d rows: at optimum %d, mean excess "
      "%.3g, worst %.3g\n",
      kRows, at_optimum, sum / kRows, worst);
}

// ---- Determinism ----

uint64_t splitmix64(uint64_t x) {  // first output of a splitmix64 stream in state x
  uint64_t z = x + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

TEST(KMeans1D, Deterministic) {
  std::mt19937_64 rng(5);
  const Row r = random_row(rng, 4096, Values::kStudentT, Weights::kSquaredGrad);
  const KMeans1DResult a = weighted_kmeans_1d(r.x.data(), r.w.data(), 4096, 16);
  const KMeans1DResult b = weighted_kmeans_1d(r.x.data(), r.w.data(), 4096, 16);
  EXPECT_EQ(a.centroids, b.centroids);
  EXPECT_EQ(a.assignment, b.assignment);
  EXPECT_EQ(a.weighted_sse, b.weighted_sse);
  EXPECT_EQ(a.iterations, b.iterations);
  EXPECT_TRUE(std::is_sorted(a.centroids.begin(), a.centroids.end()));
  EXPECT_EQ(a.assignment, assign_to_lut(r.x.data(), 4096, a.centroids.data(), 16));
}

TEST(KMeans1D, RowsDriverIsThreadCountIndependentAndMatchesPerRow) {
  constexpr int64_t kRows = 37, kCols = 300;
  constexpr int k = 8;
  std::mt19937_64 rng(8);
  std::vector<float> w, s;
  for (int64_t i = 0; i < kRows; ++i) {
    const Row r = random_row(rng, kCols, Values::kStudentT, Weights::kExponential);
    w.insert(w.end(), r.x.begin(), r.x.end());
    s.insert(s.end(), r.w.begin(), r.w.end());
  }
  KMeans1DOptions opt;
  opt.seed = 42;
  std::vector<float> c1(kRows * k), c4(kRows * k);
  std::vector<uint8_t> q1(kRows * kCols), q4(kRows * kCols);
  std::vector<double> e1(kRows), e4(kRows);
  kmeans_rows(w.data(), s.data(), kRows, kCols, k, c1.data(), q1.data(), e1.data(), opt, 1);
  kmeans_rows(w.data(), s.data(), kRows, kCols, k, c4.data(), q4.data(), e4.data(), opt, 4);
  EXPECT_EQ(c1, c4);
  EXPECT_EQ(q1, q4);
  EXPECT_EQ(e1, e4);
  for (int64_t r = 0; r < kRows; ++r) {
    KMeans1DOptions o = opt;
    o.seed = splitmix64(opt.seed + static_cast<uint64_t>(r));
    const KMeans1DResult one =
        weighted_kmeans_1d(w.data() + r * kCols, s.data() + r * kCols, kCols, k, o);
    EXPECT_EQ(one.centroids, std::vector<float>(c1.begin() + r * k, c1.begin() + (r + 1) * k));
    EXPECT_EQ(one.assignment,
              std::vector<uint8_t>(q1.begin() + r * kCols, q1.begin() + (r + 1) * kCols));
    EXPECT_EQ(one.weighted_sse, e1[r]);
  }
}

// ---- Degenerate inputs ----

TEST(KMeans1D, FewerPointsThanClusters) {
  const float x[] = {3.0f, 1.0f, 2.0f};
  const KMeans1DResult r = weighted_kmeans_1d(x, nullptr, 3, 8);
  EXPECT_EQ(r.centroids, (std::vector<float>{1, 2, 3, 3, 3, 3, 3, 3}));
  EXPECT_EQ(r.assignment, (std::vector<uint8_t>{2, 0, 1}));
  EXPECT_EQ(r.weighted_sse, 0.0);
  // n == k with a duplicate: 2 distinct values.
  const float y[] = {5.0f, -1.0f, 5.0f, -1.0f};
  const KMeans1DResult s = weighted_kmeans_1d(y, nullptr, 4, 4);
  EXPECT_EQ(s.centroids, (std::vector<float>{-1, 5, 5, 5}));
  EXPECT_EQ(s.assignment, (std::vector<uint8_t>{1, 0, 1, 0}));
  // n == 0.
  const KMeans1DResult e = weighted_kmeans_1d(nullptr, nullptr, 0, 4);
  EXPECT_EQ(e.centroids, std::vector<float>(4, 0.0f));
  EXPECT_TRUE(e.assignment.empty());
}

TEST(KMeans1D, ConstantRow) {
  const std::vector<float> x(1000, 0.25f);
  const KMeans1DResult r = weighted_kmeans_1d(x.data(), nullptr, 1000, 16);
  EXPECT_EQ(r.centroids, std::vector<float>(16, 0.25f));
  EXPECT_EQ(r.assignment, std::vector<uint8_t>(1000, 0));
  EXPECT_EQ(r.weighted_sse, 0.0);
}

TEST(KMeans1D, ZeroWeights) {
  std::mt19937_64 rng(3);
  const Row r = random_row(rng, 500, Values::kGaussian, Weights::kUniform);
  const std::vector<float> zeros(500, 0.0f);
  const KMeans1DResult a = weighted_kmeans_1d(r.x.data(), zeros.data(), 500, 8);
  const KMeans1DResult b = weighted_kmeans_1d(r.x.data(), nullptr, 500, 8);
  EXPECT_EQ(a.centroids, b.centroids);  // all-zero weights: uniform
  EXPECT_EQ(a.weighted_sse, b.weighted_sse);
  // Points of zero weight do not pull the centroids.
  const float x[] = {0, 0, 10, 10, 100, -50};
  const float w[] = {1, 1, 1, 1, 0, 0};
  const KMeans1DResult c = weighted_kmeans_1d(x, w, 6, 2);
  EXPECT_EQ(c.centroids, (std::vector<float>{0, 10}));
  EXPECT_EQ(c.assignment, (std::vector<uint8_t>{0, 0, 1, 1, 1, 0}));
  EXPECT_EQ(c.weighted_sse, 0.0);
}

TEST(KMeans1D, KEqualsOneIsWeightedMean) {
  std::mt19937_64 rng(11);
  const Row r = random_row(rng, 777, Values::kStudentT, Weights::kExponential);
  double sw = 0.0, swx = 0.0;
  for (int i = 0; i < 777; ++i) {
    sw += r.wd[i];
    swx += r.wd[i] * r.x[i];
  }
  const KMeans1DResult res = weighted_kmeans_1d(r.x.data(), r.w.data(), 777, 1);
  ASSERT_EQ(res.centroids.size(), 1u);
  EXPECT_EQ(res.centroids[0], static_cast<float>(swx / sw));
  EXPECT_EQ(res.assignment, std::vector<uint8_t>(777, 0));
}

TEST(KMeans1D, TiesAndK256) {
  // Values on a grid of 5 with k = 5: exact, every value its own centroid.
  std::vector<float> x;
  for (int i = 0; i < 100; ++i) x.push_back(static_cast<float>(i % 5));
  const KMeans1DResult r = weighted_kmeans_1d(x.data(), nullptr, 100, 5);
  EXPECT_EQ(r.centroids, (std::vector<float>{0, 1, 2, 3, 4}));
  EXPECT_EQ(r.weighted_sse, 0.0);
  // k = 256 on 1000 random values: valid, sorted, never worse than the reference.
  std::mt19937_64 rng(4);
  const Row g = random_row(rng, 1000, Values::kGaussian, Weights::kExponential);
  const KMeans1DResult big = weighted_kmeans_1d(g.x.data(), g.w.data(), 1000, 256);
  ASSERT_EQ(big.centroids.size(), 256u);
  EXPECT_TRUE(std::is_sorted(big.centroids.begin(), big.centroids.end()));
  EXPECT_LE(result_sse(g.x, g.wd, big), reference_sse(g.x, g.wd, 256, 1) * (1.0 + 1e-9));
}

TEST(KMeans1D, ExtremeDynamicRange) {
  // Values 60 decades apart: centring on the mean would merge the tiny ones (once a bug).
  const std::vector<float> x = {1e-30f, 2e-30f, 3e-30f, 4e-30f, 5e-30f, 3e30f};
  const std::vector<double> wd(x.size(), 1.0);
  const KMeans1DResult r = weighted_kmeans_1d(x.data(), nullptr, 6, 3);
  EXPECT_TRUE(std::is_sorted(r.centroids.begin(), r.centroids.end()));
  EXPECT_EQ(r.centroids[2], 3e30f);
  const double opt = brute_force_optimum(x, wd, 3);
  EXPECT_LE(partition_sse(x, wd, r), opt * (1.0 + 1e-9));
  // A huge negative value first, and huge weights: valid output, nothing aborts.
  const std::vector<float> y = {-3e30f, 1e-30f, 2e-30f, 3e-30f, 4e-30f, 5e-30f, 7.0f};
  const std::vector<float> wy = {1e30f, 1e-30f, 1.0f, 0.0f, 2.0f, 1e-45f, 3.0f};
  const KMeans1DResult q = weighted_kmeans_1d(y.data(), wy.data(), 7, 4);
  EXPECT_TRUE(std::is_sorted(q.centroids.begin(), q.centroids.end()));
  EXPECT_TRUE(std::isfinite(q.weighted_sse));
  EXPECT_EQ(q.assignment, assign_to_lut(y.data(), 7, q.centroids.data(), 4));
}

// ---- Errors ----

ExitCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return ExitCode::kOk;
}

TEST(KMeans1D, Errors) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const float good[] = {1, 2, 3, 4};
  const float with_nan[] = {1, nan, 3, 4};
  const float with_inf[] = {1, 2, inf, 4};
  const float neg_w[] = {1, 1, -1, 1};
  const float nan_w[] = {1, nan, 1, 1};
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(with_nan, nullptr, 4, 2); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(with_inf, nullptr, 4, 2); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(good, neg_w, 4, 2); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(good, nan_w, 4, 2); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(good, nullptr, 4, 0); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(good, nullptr, 4, 257); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(good, nullptr, -1, 2); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { weighted_kmeans_1d(good, nullptr, 4, 256); }), ExitCode::kOk);
  EXPECT_EQ(code_of([&] { assign_to_lut(with_nan, 4, good, 2); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { assign_to_lut(good, 4, with_nan, 4); }), ExitCode::kInput);
  EXPECT_EQ(code_of([&] { assign_to_lut(good, 4, good, 0); }), ExitCode::kInput);
  try {
    weighted_kmeans_1d(good, neg_w, 4, 2);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w[2]"), std::string::npos) << e.what();
  }
  // The rows driver names the lowest failing row.
  std::vector<float> m(5 * 4, 1.0f);
  m[2 * 4 + 1] = nan;
  m[4 * 4 + 0] = nan;
  std::vector<float> c(5 * 2);
  std::vector<uint8_t> q(5 * 4);
  try {
    kmeans_rows(m.data(), nullptr, 5, 4, 2, c.data(), q.data(), nullptr, {}, 2);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_EQ(std::string(e.what()).rfind("row 2: ", 0), 0u) << e.what();
  }
}

// ---- assign_to_lut ----

std::vector<uint8_t> brute_assign(const std::vector<float>& x, const std::vector<float>& lut) {
  std::vector<uint8_t> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    int best = 0;
    for (std::size_t j = 1; j < lut.size(); ++j)
      if (std::fabs(static_cast<double>(x[i]) - lut[j]) <
          std::fabs(static_cast<double>(x[i]) - lut[best]))
        best = static_cast<int>(j);
    out[i] = static_cast<uint8_t>(best);
  }
  return out;
}

TEST(AssignToLut, NearestWithTiesToLowerIndex) {
  {
    const float lut[] = {0.0f, 2.0f};
    const float x[] = {1.0f, 0.999f, 1.001f, -5.0f, 7.0f};
    EXPECT_EQ(assign_to_lut(x, 5, lut, 2), (std::vector<uint8_t>{0, 0, 1, 0, 1}));
  }
  {
    const float lut[] = {-1.0f, 2.0f, 2.0f, 2.0f};  // duplicates (fp16 rounding can merge)
    const float x[] = {3.0f, 2.0f, 0.5f, 0.4f};
    EXPECT_EQ(assign_to_lut(x, 4, lut, 4), (std::vector<uint8_t>{1, 1, 0, 0}));
  }
  {
    const float lut[] = {2.0f, 0.0f, 2.0f};  // unsorted: the brute-force path
    const float x[] = {1.0f, 3.0f, -1.0f};
    EXPECT_EQ(assign_to_lut(x, 3, lut, 3), (std::vector<uint8_t>{0, 0, 1}));
  }
  // Random data, sorted and unsorted luts with duplicates and exact midpoints.
  std::mt19937_64 rng(21);
  std::uniform_int_distribution<int> small(-8, 8);
  for (int t = 0; t < 400; ++t) {
    const int k = t % 4 < 2 ? 1 + t % 16 : 1 + (t * 7) % 256;  // both sorted-lut paths
    std::vector<float> lut(k), x(300);
    for (auto& v : lut) v = 0.5f * small(rng);
    if (t % 2) std::sort(lut.begin(), lut.end());
    for (auto& v : x) v = 0.25f * small(rng);
    EXPECT_EQ(assign_to_lut(x.data(), 300, lut.data(), k), brute_assign(x, lut)) << t;
  }
  // Arbitrary float luts (midpoints not representable in float) probed at and one ulp
  // around every midpoint, as fp16-rounded centroids would be.
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  for (int t = 0; t < 100; ++t) {
    const int k = t % 2 ? 16 : 64;
    std::vector<float> lut(k), x;
    for (auto& v : lut) v = gauss(rng);
    std::sort(lut.begin(), lut.end());
    if (t % 3 == 0) lut[k / 2] = lut[k / 2 - 1];  // a duplicate
    for (int j = 1; j < k; ++j) {
      const float mid = static_cast<float>(0.5 * (static_cast<double>(lut[j - 1]) + lut[j]));
      const float inf = std::numeric_limits<float>::infinity();
      for (const float v : {mid, std::nextafter(mid, inf), std::nextafter(mid, -inf), lut[j]})
        x.push_back(v);
    }
    EXPECT_EQ(assign_to_lut(x.data(), static_cast<int64_t>(x.size()), lut.data(), k),
              brute_assign(x, lut))
        << t;
  }
}

}  // namespace
}  // namespace mpq
