// Exact multiple-choice assignment by integer linear programming (GLPK), the solver behind
// mpq-search.
//
// Problem (HAWQ-V3, Yao et al. 2021, §3.3: one precision per layer chosen by an ILP over
// Hessian-based perturbation costs under a model-size and a latency budget):
//   tensors t = 0..n-1, each with candidates c = 0..m_t-1 of (bytes, cost, latency_us);
//   binary x[t][c], sum_c x[t][c] = 1 for every t;
//   minimize   sum cost[t][c] x[t][c]
//   subject to sum bytes[t][c] x[t][c] <= max_bytes
//              sum latency_us[t][c] x[t][c] <= max_latency_us   (when given)
//              tied tensors take the same candidate index       (tie groups)
// Tie groups are folded before solving: the members of a group become one variable set
// whose candidate c has the sums of the members' bytes, cost and latency (exact, and a
// smaller ILP). The solver is GLPK's branch-and-cut (glp_intopt) on top of the simplex LP
// relaxation, run to a zero relative gap.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace mpq {

/// One candidate format of one tensor.
struct IlpCandidate {
  double bytes = 0;       ///< stored bytes of the tensor in this format (>= 0, finite)
  double cost = 0;        ///< predicted loss increase Omega (>= 0, finite)
  double latency_us = 0;  ///< latency in microseconds (>= 0, finite; ignored without a latency budget)
  /// False: this tensor may not take this candidate (e.g. a format the target engine cannot
  /// load for this shape); its variable is fixed to 0. A tied group's candidate is allowed
  /// only when it is allowed for every member.
  bool allowed = true;
};

/// The assignment problem. `tensors[t]` lists tensor t's candidates (at least one).
struct IlpProblem {
  std::vector<std::vector<IlpCandidate>> tensors;
  double max_bytes = std::numeric_limits<double>::infinity();       ///< byte budget
  double max_latency_us = std::numeric_limits<double>::infinity();  ///< latency budget (inf = none)
  /// Groups of tensor indices that must take the same candidate index (all members need
  /// the same number of candidates). A tensor may appear in at most one group.
  std::vector<std::vector<int>> tie_groups;
};

/// The solver's answer.
struct IlpSolution {
  /// "optimal", or "infeasible" (no assignment meets the budgets; choice is empty).
  std::string status;
  std::vector<int> choice;     ///< [n] candidate index per tensor
  double cost = 0;             ///< sum of the chosen costs
  double bytes = 0;            ///< sum of the chosen bytes
  double latency_us = 0;       ///< sum of the chosen latencies
  double lp_bound = 0;         ///< the LP relaxation's optimum (a lower bound on cost)
  double mip_gap = 0;          ///< relative gap to the best bound; 0 when status is "optimal"
  double relaxation_gap = 0;   ///< (cost - lp_bound) / cost (0 when cost is 0): how far rounding the LP would be
  int64_t variables = 0;       ///< binary variables after folding the tie groups
};

/// Solves `p` exactly. Throws Error(kUsage) for a malformed problem (a tensor without
/// candidates, a negative or non-finite number, a bad or overlapping tie group, tied
/// tensors with different candidate counts), Error(kInternal) if GLPK fails.
IlpSolution solve_assignment_ilp(const IlpProblem& p);

}  // namespace mpq
