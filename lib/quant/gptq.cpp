// GPTQ over any grid (see gptq.h).
#include "lib/quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "lib/common/error.h"

namespace mpq {

namespace {
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
}  // namespace

std::vector<float> gptq_quantize(const std::string& name, const float* w, int64_t rows, int64_t cols,
                                 const double* h, GptqGrid& grid, const GptqOptions& opt) {
  if (!(opt.damp > 0.0) || opt.block < 1)
    throw Error(ExitCode::kUsage, "gptq: damp must be > 0 and block >= 1");
  const int64_t R = rows, C = cols;
  for (int64_t i = 0; i < C * C; ++i)
    if (!std::isfinite(h[i])) throw Error(ExitCode::kInput, name + ": Hessian holds a non-finite value at flat index " + std::to_string(i));
  MatD H = Eigen::Map<const MatD>(h, C, C);
  MatD W = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w, R, C).cast<double>();
  const MatD W0 = W;
  // Dead inputs: never active in calibration, so their weights do not matter: zero them.
  for (int64_t i = 0; i < C; ++i)
    if (H(i, i) == 0.0) {
      H(i, i) = 1.0;
      W.col(i).setZero();
    }
  H.diagonal().array() += opt.damp * H.diagonal().mean();

  // Processing order.
  std::vector<int64_t> perm(static_cast<std::size_t>(C));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return H(a, a) > H(b, b); });
  // Memory: at most two C x C float64 matrices at a time (the permuted H factored in place,
  // then H^-1 factored in place, U kept): 1.9 GB for Llama-2-7B's down_proj (C = 11008).
  MatD Wp(R, C);
  for (int64_t i = 0; i < C; ++i) Wp.col(i) = W.col(perm[static_cast<std::size_t>(i)]);
  MatD Hp;
  if (opt.act_order) {
    Hp.resize(C, C);
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = 0; j < C; ++j) Hp(i, j) = H(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
    H = MatD();
  } else {
    Hp = std::move(H);
  }
  W = MatD();
  // U = upper Cholesky factor of H^-1 (H^-1 = U^T U).
  MatD Hinv = MatD::Identity(C, C);
  {
    Eigen::LLT<Eigen::Ref<MatD>> llt(Hp);  // factors Hp in place
    if (llt.info() != Eigen::Success) throw Error(ExitCode::kInput, name + ": damped Hessian is not positive definite");
    llt.solveInPlace(Hinv);
  }
  Hp = MatD();
  MatD U;
  {
    Eigen::LLT<Eigen::Ref<MatD>> llt2(Hinv);  // factors H^-1 in place
    if (llt2.info() != Eigen::Success) throw Error(ExitCode::kInput, name + ": inverse Hessian is not positive definite");
    U = llt2.matrixU();
  }
  Hinv = MatD();

  const int64_t G = grid.group_cols();
  const bool static_groups = G > 0 && (opt.static_groups || opt.act_order);
  if (static_groups)
    for (int64_t g = 0; g * G < C; ++g) grid.set_group(g, W0.data() + g * G, C, std::min(G, C - g * G));
  int64_t B = opt.block;
  if (G > 0 && !static_groups) B = std::max<int64_t>(G, B / G * G);  // groups never straddle blocks

  for (int64_t i1 = 0; i1 < C; i1 += B) {
    const int64_t i2 = std::min(C, i1 + B), n = i2 - i1;
    MatD W1 = Wp.middleCols(i1, n);
    MatD Err(R, n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = perm[static_cast<std::size_t>(i1 + i)];  // original column
      if (G > 0 && !static_groups && c % G == 0)
        grid.set_group(c / G, W1.data() + i, n, std::min(G, C - c));  // compensated values, in-block
      const double d = U(i1 + i, i1 + i);
      for (int64_t r = 0; r < R; ++r) {
        double q, e;
        if (grid.exact(r, c)) {
          q = grid.exact_value(r, c, W0(r, c));
          e = 0.0;
        } else {
          q = grid.quantize(r, c, W1(r, i));
          e = (W1(r, i) - q) / d;
        }
        W1(r, i) = q;
        Err(r, i) = e;
      }
      // In-block update of the columns after i (exact positions read W0 when reached).
      if (i + 1 < n) W1.rightCols(n - i - 1).noalias() -= Err.col(i) * U.block(i1 + i, i1 + i + 1, 1, n - i - 1);
    }
    Wp.middleCols(i1, n) = W1;
    if (i2 < C) {
      Wp.rightCols(C - i2).noalias() -= Err * U.block(i1, i2, n, C - i2);
      // (exact positions of later blocks are restored when their column is reached: they are
      // read from W0 there.)
    }
  }
  std::vector<float> q(static_cast<std::size_t>(R * C));
  for (int64_t i = 0; i < C; ++i) {
    const int64_t c = perm[static_cast<std::size_t>(i)];
    for (int64_t r = 0; r < R; ++r) q[static_cast<std::size_t>(r * C + c)] = static_cast<float>(Wp(r, i));
  }
  return q;
}

double gptq_output_error(const float* w, const float* q, int64_t rows, int64_t cols, const double* h) {
  const Eigen::Map<const MatD> H(h, cols, cols);
  double total = 0.0;
  Eigen::VectorXd d(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) d(c) = static_cast<double>(w[r * cols + c]) - static_cast<double>(q[r * cols + c]);
    total += d.dot(H * d);
  }
  return total;
}

}  // namespace mpq
