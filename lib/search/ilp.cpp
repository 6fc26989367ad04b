#include "lib/search/ilp.h"

#include <glpk.h>

#include <cmath>
#include <memory>
#include <string>

#include "lib/common/error.h"

namespace mpq {
namespace {

void usage(const std::string& msg) { throw Error(ExitCode::kUsage, "assignment ILP: " + msg); }

void check_number(double v, const char* what, std::size_t t, std::size_t c) {
  if (!std::isfinite(v) || v < 0)
    usage(std::string(what) + " of candidate " + std::to_string(c) + " of tensor " + std::to_string(t) + " is " +
          std::to_string(v) + ", expected a finite value >= 0");
}

struct GlpProb {
  glp_prob* p = glp_create_prob();
  ~GlpProb() { glp_delete_prob(p); }
};

IlpSolution solve_once(const IlpProblem& p) {
  const std::size_t n = p.tensors.size();
  for (std::size_t t = 0; t < n; ++t) {
    if (p.tensors[t].empty()) usage("tensor " + std::to_string(t) + " has no candidates");
    for (std::size_t c = 0; c < p.tensors[t].size(); ++c) {
      check_number(p.tensors[t][c].bytes, "bytes", t, c);
      check_number(p.tensors[t][c].cost, "cost", t, c);
      check_number(p.tensors[t][c].latency_us, "latency_us", t, c);
    }
  }
  if (std::isnan(p.max_bytes) || std::isnan(p.max_latency_us)) usage("a budget is NaN");

  // Fold the tie groups: unit u = a group or a lone tensor; its candidate c sums the members'.
  std::vector<int> group_of(n, -1);
  for (std::size_t g = 0; g < p.tie_groups.size(); ++g)
    for (int t : p.tie_groups[g]) {
      if (t < 0 || static_cast<std::size_t>(t) >= n)
        usage("tie group " + std::to_string(g) + " names tensor " + std::to_string(t) + " of " + std::to_string(n));
      if (group_of[static_cast<std::size_t>(t)] >= 0)
        usage("tensor " + std::to_string(t) + " is in two tie groups (or twice in one)");
      group_of[static_cast<std::size_t>(t)] = static_cast<int>(g);
      if (p.tensors[static_cast<std::size_t>(t)].size() != p.tensors[static_cast<std::size_t>(p.tie_groups[g][0])].size())
        usage("tie group " + std::to_string(g) + ": tensors " + std::to_string(p.tie_groups[g][0]) + " and " +
              std::to_string(t) + " have different candidate counts");
    }
  std::vector<std::vector<int>> units;  // members of each unit
  for (const auto& g : p.tie_groups)
    if (!g.empty()) units.push_back(g);
  for (std::size_t t = 0; t < n; ++t)
    if (group_of[t] < 0) units.push_back({static_cast<int>(t)});
  const bool use_latency = std::isfinite(p.max_latency_us);

  IlpSolution sol;
  GlpProb lp;
  glp_set_obj_dir(lp.p, GLP_MIN);
  // Rows: one "choose exactly one" per unit, then bytes, then latency.
  const int nu = static_cast<int>(units.size());
  glp_add_rows(lp.p, nu + 1 + (use_latency ? 1 : 0));
  for (int u = 0; u < nu; ++u) glp_set_row_bnds(lp.p, u + 1, GLP_FX, 1.0, 1.0);
  const bool bytes_bounded = std::isfinite(p.max_bytes);
  glp_set_row_bnds(lp.p, nu + 1, bytes_bounded ? GLP_UP : GLP_FR, 0.0, bytes_bounded ? p.max_bytes : 0.0);
  if (use_latency) glp_set_row_bnds(lp.p, nu + 2, GLP_UP, 0.0, p.max_latency_us);

  std::vector<int> ia{0}, ja{0};
  std::vector<double> ar{0.0};
  std::vector<std::pair<int, int>> col_unit_cand;  // column -> (unit, candidate)
  for (int u = 0; u < nu; ++u) {
    const std::size_t m = p.tensors[static_cast<std::size_t>(units[static_cast<std::size_t>(u)][0])].size();
    for (std::size_t c = 0; c < m; ++c) {
      IlpCandidate sum;
      for (int t : units[static_cast<std::size_t>(u)]) {
        const IlpCandidate& x = p.tensors[static_cast<std::size_t>(t)][c];
        sum.bytes += x.bytes;
        sum.cost += x.cost;
        sum.latency_us += x.latency_us;
        sum.allowed = sum.allowed && x.allowed;
      }
      const int col = glp_add_cols(lp.p, 1);
      col_unit_cand.emplace_back(u, static_cast<int>(c));
      glp_set_col_kind(lp.p, col, GLP_BV);
      if (!sum.allowed) glp_set_col_bnds(lp.p, col, GLP_FX, 0.0, 0.0);
      glp_set_obj_coef(lp.p, col, sum.cost);
      ia.push_back(u + 1), ja.push_back(col), ar.push_back(1.0);
      ia.push_back(nu + 1), ja.push_back(col), ar.push_back(sum.bytes);
      if (use_latency) ia.push_back(nu + 2), ja.push_back(col), ar.push_back(sum.latency_us);
    }
  }
  glp_load_matrix(lp.p, static_cast<int>(ia.size()) - 1, ia.data(), ja.data(), ar.data());
  sol.variables = static_cast<int64_t>(col_unit_cand.size());

  glp_smcp sm;
  glp_init_smcp(&sm);
  sm.msg_lev = GLP_MSG_OFF;
  sm.presolve = GLP_ON;  // also detects an infeasible relaxation without a basis
  const int rs = glp_simplex(lp.p, &sm);
  if (rs == GLP_ENOPFS || (rs == 0 && glp_get_status(lp.p) == GLP_NOFEAS)) {
    sol.status = "infeasible";
    return sol;
  }
  if (rs != 0) throw Error(ExitCode::kInternal, "assignment ILP: GLPK simplex failed (code " + std::to_string(rs) + ")");
  sol.lp_bound = glp_get_obj_val(lp.p);

  glp_iocp io;
  glp_init_iocp(&io);
  io.msg_lev = GLP_MSG_OFF;
  io.mip_gap = 0.0;
  const int ri = glp_intopt(lp.p, &io);
  const int st = glp_mip_status(lp.p);
  if (st == GLP_NOFEAS) {
    sol.status = "infeasible";
    return sol;
  }
  if (ri != 0 || st != GLP_OPT)
    throw Error(ExitCode::kInternal, "assignment ILP: GLPK branch-and-cut failed (code " + std::to_string(ri) +
                                         ", status " + std::to_string(st) + ")");
  sol.status = "optimal";
  sol.choice.assign(n, -1);
  for (int col = 1; col <= static_cast<int>(col_unit_cand.size()); ++col) {
    if (glp_mip_col_val(lp.p, col) < 0.5) continue;
    const auto [u, c] = col_unit_cand[static_cast<std::size_t>(col - 1)];
    for (int t : units[static_cast<std::size_t>(u)]) sol.choice[static_cast<std::size_t>(t)] = c;
  }
  for (std::size_t t = 0; t < n; ++t) {
    MPQ_ASSERT(sol.choice[t] >= 0);
    const IlpCandidate& x = p.tensors[t][static_cast<std::size_t>(sol.choice[t])];
    sol.cost += x.cost;
    sol.bytes += x.bytes;
    sol.latency_us += x.latency_us;
  }
  sol.relaxation_gap = sol.cost > 0 ? (sol.cost - sol.lp_bound) / sol.cost : 0.0;
  return sol;
}
}  // namespace

IlpSolution solve_assignment_ilp(const IlpProblem& p) {
  // GLPK accepts a row bound violated within its relative feasibility tolerance (1e-7); the
  // budgets here are hard, so tighten a violated budget by the overshoot and solve again.
  IlpProblem q = p;
  for (int attempt = 0;; ++attempt) {
    IlpSolution s = solve_once(q);
    const bool over_bytes = s.status == "optimal" && s.bytes > p.max_bytes;
    const bool over_lat = s.status == "optimal" && s.latency_us > p.max_latency_us;
    if ((!over_bytes && !over_lat) || attempt == 8) {
      if (over_bytes || over_lat)
        throw Error(ExitCode::kInternal, "assignment ILP: GLPK's solution keeps exceeding the budget");
      return s;
    }
    if (over_bytes) q.max_bytes -= (s.bytes - p.max_bytes) + 1e-9 * p.max_bytes;
    if (over_lat) q.max_latency_us -= (s.latency_us - p.max_latency_us) + 1e-9 * p.max_latency_us;
  }
}

}  // namespace mpq
