// SqueezeLLM LUT kernels (kernels/cpu/lut_gemv.h): random packed weights built here with a
// packer written from the documented bit order (lib/quant/squeezellm.h), the references
// against an fp64 dense matvec of the decoded matrix, every fast path (dispatcher, scalar,
// AVX2, AVX-512; a path the CPU lacks is skipped) against the references, the fast paths
// never reading past the packed rows (guard page) nor multiplying padding weights, and the
// kernels on tensors produced by SqueezeLLMQuantizer against decode() + dense matvec.
#include <gtest/gtest.h>
#include <sys/mman.h>  // mmap / mprotect: a guard page after the packed rows
#include <unistd.h>    // sysconf(_SC_PAGESIZE)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/lut_gemv.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "tests/test_util.h"
#include "lib/quant/squeezellm.h"

namespace mpq {
namespace {

// A random packed tensor that owns its storage.
struct RandomLut {
  int bits = 0;
  int64_t rows = 0, cols = 0;
  std::vector<int> idx;          // [rows, cols] unpacked indices
  std::vector<uint8_t> qweight;  // [rows, bits * ceil(cols / 8)]
  std::vector<uint16_t> lut;     // [rows, 2^bits]
  std::vector<int32_t> rowptr;   // [rows + 1]
  std::vector<int16_t> col16;
  std::vector<int32_t> col32;
  std::vector<uint16_t> val;
  bool i16 = true;
  bool sparse = true;

  LutWeightView view() const {
    LutWeightView v;
    v.bits = bits;
    v.rows = rows;
    v.cols = cols;
    v.qweight = qweight.data();
    v.lut_f16 = lut.data();
    if (sparse) {
      v.rowptr = rowptr.data();
      v.col_is_i16 = i16;
      v.col = i16 ? static_cast<const void*>(col16.data()) : static_cast<const void*>(col32.data());
      v.val_f16 = val.data();
    }
    return v;
  }

  // The decoded matrix in fp64 (fp16 values are exact in fp32 and fp64).
  std::vector<double> dense() const {
    const int64_t k = int64_t{1} << bits;
    std::vector<double> w(static_cast<std::size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        w[r * cols + c] = fp16_to_fp32(lut[r * k + idx[r * cols + c]]);
    if (sparse)
      for (int64_t r = 0; r < rows; ++r)
        for (int32_t e = rowptr[r]; e < rowptr[r + 1]; ++e)
          w[r * cols + (i16 ? col16[e] : col32[e])] += fp16_to_fp32(val[e]);
    return w;
  }
};

// Packs index j of each row into bits [j*b, j*b + b) of the row, LSB first; bit t of the
// row's stream is bit t % 8 of byte t / 8.
std::vector<uint8_t> pack_indices(const std::vector<int>& idx, int64_t rows, int64_t cols,
                                  int bits) {
  const int64_t rb = (cols + 7) / 8 * bits;
  std::vector<uint8_t> q(static_cast<std::size_t>(rows * rb), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      for (int t = 0; t < bits; ++t)
        if ((idx[r * cols + j] >> t) & 1) {
          const int64_t bit = j * bits + t;
          q[r * rb + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
        }
  return q;
}

RandomLut make_random(int bits, int64_t rows, int64_t cols, uint64_t seed, bool i16 = true) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  RandomLut L;
  L.bits = bits;
  L.rows = rows;
  L.cols = cols;
  L.i16 = i16;
  const int k = 1 << bits;
  std::uniform_int_distribution<int> ud(0, k - 1);
  L.idx.resize(static_cast<std::size_t>(rows * cols));
  for (int& v : L.idx) v = ud(g);
  L.qweight = pack_indices(L.idx, rows, cols, bits);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> t(static_cast<std::size_t>(k));
    for (float& v : t) v = 0.05f * nd(g);
    std::sort(t.begin(), t.end());
    for (float v : t) L.lut.push_back(fp32_to_fp16(v));
  }
  // CSR: every third row empty, others 1..min(cols, 40) distinct sorted columns (so the
  // 8- and 16-wide vector loops of the sparse dot run whole steps and tails).
  L.rowptr.push_back(0);
  std::vector<int64_t> all(static_cast<std::size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) all[c] = c;
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 3 != 1) {
      const int64_t n = std::min<int64_t>(cols, 1 + static_cast<int64_t>(g() % 40));
      std::shuffle(all.begin(), all.end(), g);
      std::vector<int64_t> cs(all.begin(), all.begin() + n);
      std::sort(cs.begin(), cs.end());
      for (int64_t c : cs) {
        L.col16.push_back(static_cast<int16_t>(c));
        L.col32.push_back(static_cast<int32_t>(c));
        L.val.push_back(fp32_to_fp16(0.5f * nd(g)));
      }
    }
    L.rowptr.push_back(static_cast<int32_t>(L.val.size()));
  }
  return L;
}

std::vector<float> random_x(int64_t n, uint64_t seed) { return test::random_normal(n, seed); }

// Exact Y = X W^T and the per-output sum of |w * x| (the scale of the rounding error), fp64.
void dense_product(const std::vector<double>& w, int64_t rows, int64_t cols,
                   const std::vector<float>& X, int64_t T, std::vector<double>* y,
                   std::vector<double>* l1) {
  y->assign(static_cast<std::size_t>(T * rows), 0.0);
  l1->assign(static_cast<std::size_t>(T * rows), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0, a = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = w[r * cols + c] * X[t * cols + c];
        s += p;
        a += std::fabs(p);
      }
      (*y)[t * rows + r] = s;
      (*l1)[t * rows + r] = a;
    }
}

// |got - want| <= 1e-5 |want| + 4e-6 * sum|w x| + 1e-7.
template <typename A, typename B>
void expect_close(const std::vector<A>& got, const std::vector<B>& want, const std::vector<double>& l1,
                  const std::string& what) {
  test::expect_close_l1(got, want, l1, what, 1e-7);
}

constexpr int kBits[] = {2, 3, 4};
constexpr int64_t kCols[] = {1, 7, 8, 9, 31, 172, 513};
constexpr int64_t kRows[] = {1, 3, 64};

std::string label(int bits, int64_t rows, int64_t cols, int64_t T = 1) {
  return "b=" + std::to_string(bits) + " [" + std::to_string(rows) + ", " +
         std::to_string(cols) + "] T=" + std::to_string(T);
}

TEST(LutKernels, PackerMatchesDocumentedExample) {
  // b = 3, indices 0..7: the stream 000 100 010 110 001 101 011 111 (LSB first) is the
  // bytes 0x88, 0xC6, 0xFA (index j at bits [3j, 3j + 3)).
  const std::vector<int> idx = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(pack_indices(idx, 1, 8, 3), (std::vector<uint8_t>{0x88, 0xC6, 0xFA}));
  // b = 4: index 2j in the low nibble, 2j + 1 in the high nibble.
  EXPECT_EQ(pack_indices({1, 2, 3, 4, 5, 6, 7, 8}, 1, 8, 4),
            (std::vector<uint8_t>{0x21, 0x43, 0x65, 0x87}));
}

TEST(LutKernels, ReferenceMatchesDenseDecode) {
  uint64_t seed = 1;
  for (int bits : kBits)
    for (int64_t rows : kRows)
      for (int64_t cols : kCols) {
        const RandomLut L = make_random(bits, rows, cols, ++seed);
        for (int64_t T : {int64_t{1}, int64_t{5}}) {
          const std::vector<float> X = random_x(T * cols, seed * 31 + T);
          std::vector<double> want, l1;
          dense_product(L.dense(), rows, cols, X, T, &want, &l1);
          std::vector<float> y(static_cast<std::size_t>(T * rows));
          lut_gemm_reference(L.view(), X.data(), T, y.data());
          expect_close(y, want, l1, "gemm_reference " + label(bits, rows, cols, T));
          if (T == 1) {
            lut_gemv_reference(L.view(), X.data(), y.data());
            expect_close(y, want, l1, "gemv_reference " + label(bits, rows, cols));
          }
        }
      }
}

// One fast path: its gemv and gemm and whether this CPU can run it.
struct FastPath {
  std::string name;
  bool available;
  void (*gemv)(const LutWeightView&, const float*, float*);
  void (*gemm)(const LutWeightView&, const float*, int64_t, float*);
};

std::vector<FastPath> fast_paths() {
  return {{"dispatch", true, lut_gemv, lut_gemm},
          {"scalar", true, lut_gemv_scalar, lut_gemm_scalar},
          {"avx2", lut_cpu_has_avx2(), lut_gemv_avx2, lut_gemm_avx2},
          {"avx512", lut_cpu_has_avx512(), lut_gemv_avx512, lut_gemm_avx512}};
}

// Runs path P's gemv (T = 1) and gemm (each T in Ts) on L against the references.
void check_path(const FastPath& P, const RandomLut& L, uint64_t seed,
                const std::vector<int64_t>& Ts = {1, 5}) {
  const LutWeightView v = L.view();
  const int64_t rows = L.rows, cols = L.cols;
  for (int64_t T : Ts) {
    const std::vector<float> X = random_x(T * cols, seed * 17 + T);
    std::vector<double> exact, l1;
    dense_product(L.dense(), rows, cols, X, T, &exact, &l1);
    std::vector<float> ref(static_cast<std::size_t>(T * rows));
    std::vector<float> y(ref.size(), -7.0f);
    const std::string lab = P.name + " " + label(L.bits, rows, cols, T);
    lut_gemm_reference(v, X.data(), T, ref.data());
    P.gemm(v, X.data(), T, y.data());
    expect_close(y, ref, l1, "gemm " + lab);
    if (T == 1) {
      lut_gemv_reference(v, X.data(), ref.data());
      std::fill(y.begin(), y.end(), -7.0f);
      P.gemv(v, X.data(), y.data());
      expect_close(y, ref, l1, "gemv " + lab);
    }
  }
}

// Columns around every boundary of the paths: groups of 8, AVX-512 blocks of 128 (16
// groups), cols < 16, and a last block of each size class.
constexpr int64_t kPathCols[] = {1, 7, 8, 9, 15, 16, 17, 31, 64, 127, 128, 129, 172, 200, 255, 256, 300, 513};

class LutPaths : public ::testing::TestWithParam<int> {
 protected:
  FastPath path() const { return fast_paths()[static_cast<std::size_t>(GetParam())]; }
  void SetUp() override {
    if (!path().available) GTEST_SKIP() << "this CPU lacks the " << path().name << " path";
  }
};

TEST_P(LutPaths, MatchReference) {
  uint64_t seed = 1000;
  for (int bits : kBits)
    for (int64_t rows : kRows)
      for (int64_t cols : kPathCols) {
        ++seed;
        check_path(path(), make_random(bits, rows, cols, seed), seed);
      }
}

TEST_P(LutPaths, Int32ColumnsAndNoSparsePart) {
  uint64_t seed = 2000;
  for (int bits : kBits)
    for (int64_t cols : {int64_t{9}, int64_t{200}, int64_t{513}}) {
      ++seed;
      check_path(path(), make_random(bits, 5, cols, seed, /*i16=*/false), seed);
      ++seed;
      RandomLut L = make_random(bits, 5, cols, seed);
      L.sparse = false;
      check_path(path(), L, seed);
    }
}

TEST_P(LutPaths, LargeLayerRunsParallel) {
  // 2100 x 520 weights: lut_gemv splits rows over OpenMP threads; lut_gemm decodes more
  // than its 4 MiB block of fp32 rows (2 blocks at least), on one thread at T = 5 and on
  // all threads at T = 16 (above its 2^24 multiply-add threshold). No split may matter.
  uint64_t seed = 3000;
  for (int bits : kBits) {
    ++seed;
    check_path(path(), make_random(bits, 2100, 520, seed), seed, {1, 5, 16});
  }
}

TEST_P(LutPaths, EmptyShapes) {
  RandomLut L = make_random(4, 3, 8, 5);
  LutWeightView v = L.view();
  std::vector<float> x(8, 1.0f), y(3, -7.0f);
  v.cols = 0;  // no columns: every output is 0 (CSR absent)
  v.rowptr = nullptr;
  path().gemv(v, x.data(), y.data());
  EXPECT_EQ(y, std::vector<float>(3, 0.0f));
  std::fill(y.begin(), y.end(), -7.0f);
  path().gemm(v, x.data(), 1, y.data());
  EXPECT_EQ(y, std::vector<float>(3, 0.0f));
  v = L.view();
  v.rows = 0;  // no rows, and T = 0: nothing written
  path().gemv(v, x.data(), y.data());
  path().gemm(v, x.data(), 1, y.data());
  path().gemm(L.view(), x.data(), 0, y.data());
  EXPECT_EQ(y, std::vector<float>(3, 0.0f));
}

TEST_P(LutPaths, PaddingWeightsNeverUsed) {
  // LUT entry 0 is +inf in every row but no real column uses index 0, so the exact result
  // is finite; the padding indices of a partial last group (0 by the layout) and any
  // padding lanes must never be multiplied in (inf * 0 = NaN).
  uint64_t seed = 4000;
  for (int bits : kBits)
    for (int64_t cols : {int64_t{3}, int64_t{13}, int64_t{130}, int64_t{301}}) {
      RandomLut L = make_random(bits, 7, cols, ++seed);
      const int k = 1 << bits;
      for (int& i : L.idx) i = 1 + i % (k - 1);
      L.qweight = pack_indices(L.idx, L.rows, cols, bits);
      for (int64_t r = 0; r < L.rows; ++r) L.lut[r * k] = 0x7C00;  // fp16 +inf
      L.sparse = false;  // only the LUT values matter here
      const std::vector<float> x = random_x(cols, seed);
      std::vector<double> exact, l1;
      dense_product(L.dense(), L.rows, cols, x, 1, &exact, &l1);
      std::vector<float> y(static_cast<std::size_t>(L.rows));
      path().gemv(L.view(), x.data(), y.data());
      expect_close(y, exact, l1, "gemv inf LUT[0] " + label(bits, L.rows, cols));
      path().gemm(L.view(), x.data(), 1, y.data());
      expect_close(y, exact, l1, "gemm inf LUT[0] " + label(bits, L.rows, cols));
    }
}

TEST_P(LutPaths, NeverReadsPastPackedRows) {
  // The packed rows end exactly at a PROT_NONE page: a load past the last row's bytes
  // (an unmasked vector load of a partial block) would crash the test.
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  uint64_t seed = 5000;
  for (int bits : kBits)
    for (int64_t cols : {int64_t{5}, int64_t{40}, int64_t{129}, int64_t{200}, int64_t{384}}) {
      const RandomLut L = make_random(bits, 3, cols, ++seed);
      const std::size_t n = L.qweight.size();
      const std::size_t span = (n + page - 1) / page * page;
      void* mem = mmap(nullptr, span + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      ASSERT_NE(mem, MAP_FAILED);
      uint8_t* base = static_cast<uint8_t*>(mem);
      ASSERT_EQ(mprotect(base + span, page, PROT_NONE), 0);
      uint8_t* q = base + span - n;
      std::copy(L.qweight.begin(), L.qweight.end(), q);
      LutWeightView v = L.view();
      v.qweight = q;
      const std::vector<float> x = random_x(cols, seed);
      std::vector<float> y(3), ref(3);
      std::vector<double> exact, l1;
      dense_product(L.dense(), 3, cols, x, 1, &exact, &l1);
      lut_gemv_reference(v, x.data(), ref.data());
      path().gemv(v, x.data(), y.data());
      expect_close(y, ref, l1, "gemv guard " + label(bits, 3, cols));
      path().gemm(v, x.data(), 1, y.data());
      expect_close(y, ref, l1, "gemm guard " + label(bits, 3, cols));
      munmap(mem, span + page);
    }
}

INSTANTIATE_TEST_SUITE_P(LutKernels, LutPaths, ::testing::Range(0, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return fast_paths()[static_cast<std::size_t>(info.param)].name;
                         });

TEST(LutKernels, RejectsBadView) {
  RandomLut L = make_random(4, 2, 8, 7);
  LutWeightView v = L.view();
  v.bits = 5;
  std::vector<float> x(8, 1.0f), y(2);
  EXPECT_THROW(lut_gemv(v, x.data(), y.data()), Error);
  EXPECT_THROW(lut_gemm_reference(v, x.data(), 1, y.data()), Error);
  v.bits = 1;
  EXPECT_THROW(lut_gemv_reference(v, x.data(), y.data()), Error);
}

TEST(LutKernels, SqueezeLLMEncoderTensors) {
  // Tensors from the real encoder (k-means grid, 2% outliers): the view over its parts must
  // give what decode() + a dense matvec gives.
  const int64_t rows = 48, cols = 203;
  std::mt19937_64 g(99);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& v : w) v = nd(g);
  for (int i = 0; i < 40; ++i) w[g() % w.size()] *= 30.0f;  // some outliers
  for (int bits : kBits) {
    const SqueezeLLMQuantizer q(bits, 2.0, 0.0);
    const PackedTensor p = q.encode("w", w.data(), rows, cols);
    std::vector<float> dec(w.size());
    q.decode(p, dec.data());
    const LutWeightView v = squeezellm_weight_view(p);
    ASSERT_EQ(v.bits, bits);
    ASSERT_NE(v.rowptr, nullptr);
    ASSERT_GT(v.rowptr[rows], 0);

    const int64_t T = 5;
    const std::vector<float> X = random_x(T * cols, 5);
    std::vector<double> want, l1;
    dense_product(std::vector<double>(dec.begin(), dec.end()), rows, cols, X, T, &want, &l1);
    std::vector<float> y(static_cast<std::size_t>(T * rows));
    lut_gemm(v, X.data(), T, y.data());
    expect_close(y, want, l1, "encoder lut_gemm b=" + std::to_string(bits));
    lut_gemv(v, X.data(), y.data());
    y.resize(static_cast<std::size_t>(rows));
    expect_close(y, std::vector<double>(want.begin(), want.begin() + rows),
                 std::vector<double>(l1.begin(), l1.begin() + rows),
                 "encoder lut_gemv b=" + std::to_string(bits));
  }
}

}  // namespace
}  // namespace mpq
