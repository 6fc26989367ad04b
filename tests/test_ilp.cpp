// Tests of lib/search/ilp: the GLPK assignment ILP against brute-force enumeration of every
// assignment on random small problems (bytes budget, latency budget, tie groups), plus
// infeasibility and malformed input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "lib/common/error.h"
#include "lib/search/ilp.h"

namespace mpq {
namespace {

// The optimum by enumeration: minimal cost over assignments meeting both budgets and the
// tie groups; +inf when none does.
double brute_force(const IlpProblem& p) {
  const std::size_t n = p.tensors.size();
  std::vector<int> c(n, 0);
  double best = std::numeric_limits<double>::infinity();
  for (;;) {
    bool tied_ok = true;
    for (const auto& g : p.tie_groups)
      for (int t : g) tied_ok = tied_ok && c[static_cast<std::size_t>(t)] == c[static_cast<std::size_t>(g[0])];
    double bytes = 0, cost = 0, lat = 0;
    for (std::size_t t = 0; t < n; ++t) {
      const IlpCandidate& x = p.tensors[t][static_cast<std::size_t>(c[t])];
      bytes += x.bytes, cost += x.cost, lat += x.latency_us;
    }
    if (tied_ok && bytes <= p.max_bytes && lat <= p.max_latency_us) best = std::min(best, cost);
    std::size_t t = 0;
    while (t < n && ++c[t] == static_cast<int>(p.tensors[t].size())) c[t++] = 0;
    if (t == n) return best;
  }
}

IlpProblem random_problem(std::mt19937& g, int n, int m) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  IlpProblem p;
  for (int t = 0; t < n; ++t) {
    std::vector<IlpCandidate> cs;
    for (int c = 0; c < m; ++c)  // more bytes tends to mean less cost, with noise
      cs.push_back({std::round(100 + 900 * u(g)), u(g) * u(g) * 10, 1 + 20 * u(g)});
    p.tensors.push_back(cs);
  }
  return p;
}

void expect_consistent(const IlpProblem& p, const IlpSolution& s) {
  ASSERT_EQ(s.status, "optimal");
  ASSERT_EQ(s.choice.size(), p.tensors.size());
  double bytes = 0, cost = 0, lat = 0;
  for (std::size_t t = 0; t < p.tensors.size(); ++t) {
    const IlpCandidate& x = p.tensors[t][static_cast<std::size_t>(s.choice[t])];
    bytes += x.bytes, cost += x.cost, lat += x.latency_us;
  }
  EXPECT_DOUBLE_EQ(s.bytes, bytes);
  EXPECT_DOUBLE_EQ(s.cost, cost);
  EXPECT_LE(bytes, p.max_bytes);
  EXPECT_LE(lat, p.max_latency_us);
  EXPECT_LE(s.lp_bound, s.cost + 1e-9);
  for (const auto& g : p.tie_groups)
    for (int t : g) EXPECT_EQ(s.choice[static_cast<std::size_t>(t)], s.choice[static_cast<std::size_t>(g[0])]);
}

TEST(AssignmentIlp, MatchesBruteForceUnderByteBudget) {
  std::mt19937 g(7);
  for (int trial = 0; trial < 60; ++trial) {
    IlpProblem p = random_problem(g, 2 + trial % 5, 2 + trial % 4);
    double lo = 0, hi = 0;
    for (const auto& cs : p.tensors) {
      double mn = 1e300, mx = 0;
      for (const auto& c : cs) mn = std::min(mn, c.bytes), mx = std::max(mx, c.bytes);
      lo += mn, hi += mx;
    }
    p.max_bytes = std::round(lo + (hi - lo) * (trial % 7) / 6.0);
    const double want = brute_force(p);
    const IlpSolution s = solve_assignment_ilp(p);
    expect_consistent(p, s);
    EXPECT_NEAR(s.cost, want, 1e-9 * std::max(1.0, want)) << "trial " << trial;
  }
}

TEST(AssignmentIlp, MatchesBruteForceWithLatencyAndTies) {
  std::mt19937 g(11);
  int feasible = 0;
  for (int trial = 0; trial < 60; ++trial) {
    IlpProblem p = random_problem(g, 6, 3);
    p.max_bytes = 600.0 * 6;
    p.max_latency_us = 40.0 + trial;
    p.tie_groups = {{0, 1, 2}, {4, 5}};
    const double want = brute_force(p);
    const IlpSolution s = solve_assignment_ilp(p);
    if (std::isinf(want)) {
      EXPECT_EQ(s.status, "infeasible") << "trial " << trial;
      continue;
    }
    ++feasible;
    expect_consistent(p, s);
    EXPECT_NEAR(s.cost, want, 1e-9 * std::max(1.0, want)) << "trial " << trial;
    EXPECT_EQ(s.variables, 3 * 3);  // two groups + one lone tensor, 3 candidates each
  }
  EXPECT_GT(feasible, 10);  // the sweep must exercise both outcomes
  EXPECT_LT(feasible, 60);
}

TEST(AssignmentIlp, ExactBudgetBoundaryIsFeasible) {
  IlpProblem p;
  p.tensors = {{{100, 5, 0}, {50, 9, 0}}, {{100, 5, 0}, {50, 9, 0}}};
  p.max_bytes = 150;  // exactly one tensor can stay large
  const IlpSolution s = solve_assignment_ilp(p);
  expect_consistent(p, s);
  EXPECT_DOUBLE_EQ(s.cost, 14);
  p.max_bytes = 99;
  EXPECT_EQ(solve_assignment_ilp(p).status, "infeasible");
}

TEST(AssignmentIlp, DisallowedCandidatesAreNeverChosen) {
  IlpProblem p;
  // Tensor 0's cheapest candidate (cost 1) is disallowed: the optimum takes cost 3 instead.
  p.tensors = {{{10, 1, 0, false}, {10, 3, 0, true}, {20, 0, 0, true}}, {{10, 2, 0}, {20, 0, 0}}};
  p.max_bytes = 30;
  IlpSolution s = solve_assignment_ilp(p);
  expect_consistent(p, s);
  ASSERT_EQ(s.status, "optimal");
  EXPECT_EQ(s.choice[0], 2);  // 20 bytes at cost 0, tensor 1 then small at cost 2: total 2 < 3 + 0
  EXPECT_DOUBLE_EQ(s.cost, 2);
  // A tied group takes a candidate only if every member allows it.
  p.tie_groups = {{0, 1}};
  p.tensors = {{{10, 1, 0, true}, {20, 5, 0, true}}, {{10, 1, 0, false}, {20, 5, 0, true}}};
  p.max_bytes = 100;
  s = solve_assignment_ilp(p);
  ASSERT_EQ(s.status, "optimal");
  EXPECT_EQ(s.choice[0], 1);
  EXPECT_EQ(s.choice[1], 1);
  // Nothing allowed: infeasible.
  p.tie_groups.clear();
  p.tensors = {{{10, 1, 0, false}}};
  EXPECT_EQ(solve_assignment_ilp(p).status, "infeasible");
}

TEST(AssignmentIlp, RejectsMalformedProblems) {
  IlpProblem p;
  p.tensors = {{{1, 1, 0}}, {}};
  EXPECT_THROW(solve_assignment_ilp(p), Error);
  p.tensors = {{{1, NAN, 0}}};
  EXPECT_THROW(solve_assignment_ilp(p), Error);
  p.tensors = {{{-1, 1, 0}}};
  EXPECT_THROW(solve_assignment_ilp(p), Error);
  p.tensors = {{{1, 1, 0}}, {{1, 1, 0}, {2, 0, 0}}};
  p.tie_groups = {{0, 1}};  // different candidate counts
  EXPECT_THROW(solve_assignment_ilp(p), Error);
  p.tensors = {{{1, 1, 0}}, {{1, 1, 0}}};
  p.tie_groups = {{0, 1}, {1}};  // overlap
  EXPECT_THROW(solve_assignment_ilp(p), Error);
  p.tie_groups = {{0, 2}};  // out of range
  EXPECT_THROW(solve_assignment_ilp(p), Error);
}

}  // namespace
}  // namespace mpq
