// FGMP kernels (kernels/cpu/fgmp_gemv.h): random packed tensors built here by a packer
// written from the documented layout, the references against an fp64 matmul of the
// unpacked codes, every fast path (scalar, AVX2, AVX-512 where the CPU has it) against the
// references, the block decoders exhaustively against codecs.h, and fgmp_check_layout on
// broken layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/fgmp_gemv.h"
#include "kernels/cpu/lut_gemv.h"
#include "kernels/cpu/nvfp4_gemv.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

// A random FGMP tensor that owns its storage: the unpacked codes (what the test decodes)
// and the packed parts (what the kernels read).
struct RandomFgmp {
  int64_t rows = 0, cols = 0, nb = 0;
  std::vector<uint8_t> is_fp8;      // [rows, nb] block kinds
  std::vector<uint8_t> code;        // [rows, nb * 16] E2M1 nibble or E4M3 byte per element
  std::vector<uint8_t> scale;       // [rows, nb] E4M3 block scale (NVFP4 blocks only)
  float s2 = 0.0f, s8 = 0.0f;
  // Packed parts.
  std::vector<uint8_t> map, fp4, fp4_scale, fp8;
  std::vector<int32_t> offset;

  FgmpWeightView view() const {
    FgmpWeightView v;
    v.rows = rows;
    v.cols = cols;
    v.block_map = map.data();
    v.fp8_row_offset = offset.data();
    v.fp4 = fp4.data();
    v.fp4_scale = fp4_scale.data();
    v.fp4_scale_2 = s2;
    v.fp8 = fp8.data();
    v.fp8_scale = s8;
    return v;
  }

  // W[r, c] in fp64 from the unpacked codes (exact: the products of E2M1, E4M3 and an fp32
  // scale fit in a double).
  double weight(int64_t r, int64_t c) const {
    const int64_t b = r * nb + c / 16;
    const uint8_t q = code[r * nb * 16 + c];
    if (is_fp8[b]) return static_cast<double>(e4m3_to_fp32(q)) * s8;
    return static_cast<double>(e2m1_to_fp32(q)) * e4m3_to_fp32(scale[b]) * s2;
  }
};

// Packs the unpacked codes by the layout in fgmp_gemv.h: map bit i % 8 of byte i / 8 of the
// row, offsets = FP8 blocks before each row, blocks of each kind in flat block order,
// NVFP4 element 2k in the low nibble of byte k.
void pack(RandomFgmp* t) {
  const int64_t mb = (t->nb + 7) / 8;
  t->map.assign(static_cast<std::size_t>(t->rows * mb), 0);
  t->offset.assign(1, 0);
  t->fp4.clear();
  t->fp4_scale.clear();
  t->fp8.clear();
  for (int64_t r = 0; r < t->rows; ++r) {
    int32_t n8 = 0;
    for (int64_t i = 0; i < t->nb; ++i) {
      const int64_t b = r * t->nb + i;
      const uint8_t* q = &t->code[b * 16];
      if (t->is_fp8[b]) {
        t->map[r * mb + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        ++n8;
        t->fp8.insert(t->fp8.end(), q, q + 16);
      } else {
        for (int k = 0; k < 8; ++k)
          t->fp4.push_back(static_cast<uint8_t>(q[2 * k] | (q[2 * k + 1] << 4)));
        t->fp4_scale.push_back(t->scale[b]);
      }
    }
    t->offset.push_back(t->offset.back() + n8);
  }
}

// A random finite E4M3 code (never 0x7F / 0xFF).
uint8_t random_e4m3(std::mt19937_64& g) {
  for (;;) {
    const auto b = static_cast<uint8_t>(g());
    if ((b & 0x7F) != 0x7F) return b;
  }
}

// frac8: the chance of a block being FP8 (0 and 1 give all-NVFP4 / all-FP8 tensors).
// Block scales are positive codes 0x20-0x5F (2^-3 .. 2^4 range), FP8 codes any finite one,
// padding codes 0.
RandomFgmp make_random(int64_t rows, int64_t cols, double frac8, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  RandomFgmp t;
  t.rows = rows;
  t.cols = cols;
  t.nb = (cols + 15) / 16;
  t.s2 = 0.01f + 0.02f * static_cast<float>(u(g));
  t.s8 = 0.001f + 0.002f * static_cast<float>(u(g));
  t.is_fp8.resize(static_cast<std::size_t>(rows * t.nb));
  t.scale.resize(t.is_fp8.size());
  t.code.assign(static_cast<std::size_t>(rows * t.nb * 16), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < t.nb; ++i) {
      const int64_t b = r * t.nb + i;
      t.is_fp8[b] = u(g) < frac8;
      t.scale[b] = static_cast<uint8_t>(0x20 + g() % 0x40);
      for (int64_t e = 0; e < 16 && i * 16 + e < cols; ++e)
        t.code[b * 16 + e] = t.is_fp8[b] ? random_e4m3(g) : static_cast<uint8_t>(g() % 16);
    }
  pack(&t);
  return t;
}

std::vector<float> random_x(int64_t n, uint64_t seed) { return test::random_normal(n, seed); }

// Exact Y = X W^T and the per-output sum of |w * x| (the scale of the rounding error), fp64.
void dense_product(const RandomFgmp& t, const std::vector<float>& X, int64_t T,
                   std::vector<double>* y, std::vector<double>* l1) {
  y->assign(static_cast<std::size_t>(T * t.rows), 0.0);
  l1->assign(y->size(), 0.0);
  for (int64_t s = 0; s < T; ++s)
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t c = 0; c < t.cols; ++c) {
        const double p = t.weight(r, c) * X[s * t.cols + c];
        (*y)[s * t.rows + r] += p;
        (*l1)[s * t.rows + r] += std::fabs(p);
      }
}

// |got - want| <= 1e-5 |want| + 4e-6 * sum|w x| + 1e-12.
template <typename A, typename B>
void expect_close(const std::vector<A>& got, const std::vector<B>& want, const std::vector<double>& l1,
                  const std::string& what) {
  test::expect_close_l1(got, want, l1, what, 1e-12);
}

std::string label(int64_t rows, int64_t cols, double frac8, int64_t T) {
  return "[" + std::to_string(rows) + ", " + std::to_string(cols) +
         "] fp8=" + std::to_string(frac8) + " T=" + std::to_string(T);
}

constexpr int64_t kRows[] = {1, 3, 37};
constexpr int64_t kCols[] = {5, 16, 17, 40, 100, 1000, 1040};
constexpr double kFrac8[] = {0.0, 0.3, 1.0};

TEST(FgmpKernels, PackerMatchesDocumentedExample) {
  // One row of 40 columns = 3 blocks, kinds FP8, NVFP4, FP8: map 0b101, offsets {0, 2}.
  RandomFgmp t;
  t.rows = 1;
  t.cols = 40;
  t.nb = 3;
  t.is_fp8 = {1, 0, 1};
  t.scale = {0, 0x38, 0};
  t.code.assign(48, 0);
  for (int e = 0; e < 16; ++e) {
    t.code[e] = static_cast<uint8_t>(0x40 + e);
    t.code[16 + e] = static_cast<uint8_t>((e + 1) % 16);
    if (e < 8) t.code[32 + e] = static_cast<uint8_t>(0x80 + e);
  }
  pack(&t);
  EXPECT_EQ(t.map, (std::vector<uint8_t>{0x05}));
  EXPECT_EQ(t.offset, (std::vector<int32_t>{0, 2}));
  // Element 2k in the low nibble: codes 1, 2 -> 0x21, ..., 15, 0 -> 0x0F.
  EXPECT_EQ(t.fp4, (std::vector<uint8_t>{0x21, 0x43, 0x65, 0x87, 0xA9, 0xCB, 0xED, 0x0F}));
  EXPECT_EQ(t.fp4_scale, (std::vector<uint8_t>{0x38}));
  ASSERT_EQ(t.fp8.size(), 32u);
  EXPECT_EQ(t.fp8[0], 0x40);
  EXPECT_EQ(t.fp8[16], 0x80);
  EXPECT_EQ(t.fp8[31], 0x00);  // padding
}

TEST(FgmpKernels, ReferenceMatchesDenseDecode) {
  uint64_t seed = 1;
  for (int64_t rows : kRows)
    for (int64_t cols : kCols)
      for (double frac8 : kFrac8) {
        const RandomFgmp t = make_random(rows, cols, frac8, ++seed);
        for (int64_t T : {int64_t{1}, int64_t{7}}) {
          const std::vector<float> X = random_x(T * cols, seed * 31 + T);
          std::vector<double> want, l1;
          dense_product(t, X, T, &want, &l1);
          std::vector<float> y(static_cast<std::size_t>(T * rows));
          fgmp_gemm_reference(t.view(), X.data(), T, y.data());
          expect_close(y, want, l1, "gemm_reference " + label(rows, cols, frac8, T));
          if (T == 1) {
            fgmp_gemv_reference(t.view(), X.data(), y.data());
            expect_close(y, want, l1, "gemv_reference " + label(rows, cols, frac8, T));
          }
        }
      }
}

using GemvFn = void (*)(const FgmpWeightView&, const float*, float*);
using GemmFn = void (*)(const FgmpWeightView&, const float*, int64_t, float*);
using DecodeFn = void (*)(const FgmpWeightView&, int64_t, float*);

// One fast path (its gemv and gemm) against the references on tensor t.
void check_path(const RandomFgmp& t, GemvFn gemv, GemmFn gemm, const std::string& name,
                uint64_t seed, const std::vector<int64_t>& windows = {1, 7}) {
  for (int64_t T : windows) {
    const std::vector<float> X = random_x(T * t.cols, seed * 17 + T);
    std::vector<double> exact, l1;
    dense_product(t, X, T, &exact, &l1);
    std::vector<float> ref(static_cast<std::size_t>(T * t.rows)), y(ref.size(), -1.0f);
    const std::string lab = label(t.rows, t.cols, 0, T);
    fgmp_gemm_reference(t.view(), X.data(), T, ref.data());
    gemm(t.view(), X.data(), T, y.data());
    expect_close(y, ref, l1, name + " gemm " + lab);
    if (T == 1) {
      std::fill(y.begin(), y.end(), -1.0f);
      gemv(t.view(), X.data(), y.data());
      expect_close(y, ref, l1, name + " gemv " + lab);
    }
  }
}

void check_path_on_shapes(GemvFn gemv, GemmFn gemm, const std::string& name) {
  uint64_t seed = 1000;
  for (int64_t rows : kRows)
    for (int64_t cols : kCols)
      for (double frac8 : kFrac8) {
        ++seed;
        check_path(make_random(rows, cols, frac8, seed), gemv, gemm,
                   name + " fp8=" + std::to_string(frac8), seed);
      }
  // Above the OpenMP threshold (300 x 1031 weights): the row split must not matter; T = 70
  // takes the GEMM's large-window blocking.
  check_path(make_random(300, 1031, 0.3, 77), gemv, gemm, name + " large", 77, {1, 7, 70});
}

TEST(FgmpKernels, DispatchMatchesReference) { check_path_on_shapes(fgmp_gemv, fgmp_gemm, "dispatch"); }

TEST(FgmpKernels, ScalarMatchesReference) {
  check_path_on_shapes(fgmp_gemv_scalar, fgmp_gemm_scalar, "scalar");
}

TEST(FgmpKernels, Avx2MatchesReference) {
  if (!fgmp_cpu_has_avx2()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C";
  check_path_on_shapes(fgmp_gemv_avx2, fgmp_gemm_avx2, "avx2");
}

TEST(FgmpKernels, Avx512MatchesReference) {
  if (!fgmp_cpu_has_avx512()) GTEST_SKIP() << "CPU lacks AVX-512F";
  check_path_on_shapes(fgmp_gemv_avx512, fgmp_gemm_avx512, "avx512");
}

// Every code through one path's block decoders, bit for bit against codecs.h: row 0 of an
// all-FP8 tensor holds the 256 E4M3 codes, row 0 of an all-NVFP4 tensor the 16 E2M1 codes
// under each of the 256 block scales. Checked by decode_row on the whole row and by gemv
// on each block alone (a [1, 16] view of it) with one-hot x: one product per output, so
// the gemv's own order of scaling must be exact too.
void check_decoders_exhaustive(GemvFn gemv, DecodeFn decode, const std::string& name) {
  // A tensor scale whose mantissa ends in a 1 bit: (e2m1 * s) * e4m3 then rounds unlike the
  // layout's (e2m1 * e4m3) * s for 360 of the 4096 pairs (0.37f itself ends in zeros and
  // would hide a wrong order).
  for (float s : {1.0f, std::nextafter(0.37f, 1.0f)}) {
    RandomFgmp f8;
    f8.rows = 1;
    f8.cols = 256;
    f8.nb = 16;
    f8.is_fp8.assign(16, 1);
    f8.scale.assign(16, 0);
    f8.code.resize(256);
    for (int c = 0; c < 256; ++c) f8.code[c] = static_cast<uint8_t>(c);
    f8.s8 = s;
    pack(&f8);
    RandomFgmp f4;
    f4.rows = 1;
    f4.cols = 256 * 16;
    f4.nb = 256;
    f4.is_fp8.assign(256, 0);
    f4.scale.resize(256);
    f4.code.resize(256 * 16);
    for (int b = 0; b < 256; ++b) {
      f4.scale[b] = static_cast<uint8_t>(b);
      for (int e = 0; e < 16; ++e) f4.code[b * 16 + e] = static_cast<uint8_t>(e);
    }
    f4.s2 = s;
    pack(&f4);

    for (const RandomFgmp* t : {&f8, &f4}) {
      std::vector<float> dec(static_cast<std::size_t>(t->cols));
      decode(t->view(), 0, dec.data());
      int bad = 0;
      for (int64_t b = 0; b < t->nb && bad < 5; ++b) {
        // Block b alone: a one-block row whose streams start at the block (an FP8 block
        // copied with its NaN code, if any, zeroed: 0 * NaN would spoil the whole dot).
        const uint8_t map1 = t->is_fp8[b] ? 1 : 0;
        uint8_t fp8_copy[16] = {};
        if (t->is_fp8[b])
          for (int e = 0; e < 16; ++e)
            if ((t->fp8[b * 16 + e] & 0x7F) != 0x7F) fp8_copy[e] = t->fp8[b * 16 + e];
        const int32_t off1[2] = {0, map1};
        FgmpWeightView one = t->view();
        one.cols = 16;
        one.block_map = &map1;
        one.fp8_row_offset = off1;
        one.fp4 = t->fp4.data() + (t->is_fp8[b] ? 0 : b * 8);
        one.fp4_scale = t->fp4_scale.data() + (t->is_fp8[b] ? 0 : b);
        one.fp8 = fp8_copy;
        for (int e = 0; e < 16; ++e) {
          const int64_t c = b * 16 + e;
          const uint8_t q = t->code[c];
          float want;
          if (t->is_fp8[b]) {
            if ((q & 0x7F) == 0x7F) continue;  // NaN codes: rejected by fgmp_check_layout
            want = e4m3_to_fp32(q) * s;
          } else {
            want = e2m1_to_fp32(q) * e4m3_to_fp32(t->scale[b]) * s;
          }
          float x[16] = {}, y = 0.0f;
          x[e] = 1.0f;
          gemv(one, x, &y);
          // decode bit for bit (signed zeros too); gemv by value (a sum starting at +0
          // turns -0 into +0, as the reference's does).
          const bool nan_ok = std::isnan(want) && std::isnan(dec[c]) && std::isnan(y);
          if (!nan_ok && (std::memcmp(&dec[c], &want, 4) != 0 || !(y == want))) {
            ADD_FAILURE() << name << (t->is_fp8[b] ? " FP8 code " : " NVFP4 nibble ") << int{q}
                          << " block scale " << int{t->scale[b]} << " s=" << s << ": decode "
                          << dec[c] << ", gemv " << y << ", want " << want;
            ++bad;
          }
        }
      }
    }
  }
}

TEST(FgmpKernels, ScalarDecodersExhaustive) {
  check_decoders_exhaustive(fgmp_gemv_scalar, fgmp_decode_row_scalar, "scalar");
}

TEST(FgmpKernels, Avx2DecodersExhaustive) {
  if (!fgmp_cpu_has_avx2()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C";
  check_decoders_exhaustive(fgmp_gemv_avx2, fgmp_decode_row_avx2, "avx2");
}

TEST(FgmpKernels, Avx512DecodersExhaustive) {
  if (!fgmp_cpu_has_avx512()) GTEST_SKIP() << "CPU lacks AVX-512F";
  check_decoders_exhaustive(fgmp_gemv_avx512, fgmp_decode_row_avx512, "avx512");
}

TEST(FgmpKernels, EmptyShapes) {
  const RandomFgmp t = make_random(4, 0, 0.3, 5);  // no columns: y = 0
  std::vector<float> x(1, 1.0f), y(8, -1.0f);
  fgmp_gemv(t.view(), x.data(), y.data());
  fgmp_gemm(t.view(), x.data(), 2, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
  EXPECT_NO_THROW(fgmp_check_layout(t.view(), "t"));
  const RandomFgmp none = make_random(0, 33, 0.3, 6);  // no rows: nothing written
  x.assign(33, 1.0f);  // x holds cols floats (was 1: a heap overflow found by AddressSanitizer)
  fgmp_gemv(none.view(), x.data(), y.data());
  EXPECT_NO_THROW(fgmp_check_layout(none.view(), "none"));
}

TEST(FgmpKernels, RejectsNegativeShape) {
  const RandomFgmp t = make_random(2, 20, 0.5, 7);
  FgmpWeightView v = t.view();
  v.cols = -1;
  std::vector<float> x(20, 1.0f), y(2);
  for (auto fn : {fgmp_gemv, fgmp_gemv_reference, fgmp_gemv_scalar}) {
    try {
      fn(v, x.data(), y.data());
      ADD_FAILURE() << "no throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage);
    }
  }
  EXPECT_THROW(fgmp_gemm(v, x.data(), 1, y.data()), Error);
}

// fgmp_check_layout: a good layout passes; each broken one is an input error naming the part.
TEST(FgmpKernels, CheckLayoutRejectsBrokenLayouts) {
  const RandomFgmp good = make_random(5, 70, 0.4, 8);  // NB = 5: map bits 5..7 are padding
  EXPECT_NO_THROW(fgmp_check_layout(good.view(), "m.safetensors: w"));

  auto expect_input_error = [](const RandomFgmp& t, const std::string& part) {
    try {
      fgmp_check_layout(t.view(), "m.safetensors: w");
      ADD_FAILURE() << "no error for a broken " << part;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kInput) << e.what();
      EXPECT_NE(std::string(e.what()).find("m.safetensors: w"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  RandomFgmp t = good;
  t.offset[3] += 1;  // rows 2 and 3 disagree with the map
  expect_input_error(t, "fp8_row_offset");
  t = good;
  t.map[2] |= 0x80;  // bit 7 of row 2: past NB = 5
  expect_input_error(t, "block_map");
  t = good;
  t.fp4_scale[1] = 0xFF;
  expect_input_error(t, "fp4_scale");
  t = good;
  ASSERT_FALSE(t.fp8.empty());
  t.fp8[t.fp8.size() / 2] = 0x7F;
  expect_input_error(t, "fp8 block");
  t = good;
  t.s8 = std::nanf("");
  expect_input_error(t, "fp8_scale");
  t = good;
  t.s2 = INFINITY;
  expect_input_error(t, "fp4_scale_2");
}

// ---- the single-token path on int8 activations (fgmp_gemv_q8) -------------------------

// The shapes of check_path_on_shapes and one above the OpenMP thresholds.
template <typename F>
void for_q8_shapes(F f) {
  uint64_t seed = 5000;
  for (int64_t rows : kRows)
    for (int64_t cols : kCols)
      for (double frac8 : kFrac8) {
        seed += 2;
        f(make_random(rows, cols, frac8, seed), seed + 1);
      }
  f(make_random(300, 1031, 0.3, 78), 79);
}

TEST(FgmpKernels, RepackFp4HoldsTheNvfp4BlocksAndZerosForFp8) {
  for_q8_shapes([](const RandomFgmp& t, uint64_t) {
    const Nvfp4Packed p = fgmp_repack_fp4(t.view());
    std::vector<float> out(static_cast<std::size_t>(t.rows * t.cols), -1.0f);
    nvfp4_decode_rows(p, 0, t.rows, out.data(), t.cols);
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t c = 0; c < t.cols; ++c) {
        const int64_t b = r * t.nb + c / 16;
        // The NVFP4 decoder's order: (e2m1 * e4m3(scale)) * scale_2 in fp32.
        const float want = t.is_fp8[b] ? 0.0f
                                       : e2m1_to_fp32(t.code[r * t.nb * 16 + c]) * e4m3_to_fp32(t.scale[b]) * t.s2;
        ASSERT_EQ(out[r * t.cols + c], want) << label(t.rows, t.cols, 0, 1) << " (" << r << ", " << c << ")";
      }
  });
}

TEST(FgmpKernels, Fp8GemvAddSumsTheFp8BlocksOnly) {
  for_q8_shapes([](const RandomFgmp& t, uint64_t seed) {
    const std::vector<float> x = random_x(t.cols, seed);
    std::vector<double> want(static_cast<std::size_t>(t.rows), 0.0), l1(want.size(), 0.0);
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t c = 0; c < t.cols; ++c)
        if (t.is_fp8[r * t.nb + c / 16]) {
          const double p = t.weight(r, c) * x[c];
          want[r] += p;
          l1[r] += std::fabs(p);
        }
    std::vector<float> y(want.size(), 0.0f);
    fgmp_fp8_gemv_add(t.view(), x.data(), y.data());
    expect_close(y, want, l1, "fp8_gemv_add " + label(t.rows, t.cols, 0, 1));
    fgmp_fp8_gemv_add(t.view(), x.data(), y.data());  // adds to what y holds
    for (std::size_t r = 0; r < want.size(); ++r) want[r] *= 2, l1[r] *= 2;
    expect_close(y, want, l1, "fp8_gemv_add twice " + label(t.rows, t.cols, 0, 1));
  });
}

TEST(FgmpKernels, Q8GemvWithinActivationRounding) {
  for_q8_shapes([](const RandomFgmp& t, uint64_t seed) {
    const std::vector<float> x = random_x(t.cols, seed);
    std::vector<double> exact, l1;
    dense_product(t, x, 1, &exact, &l1);
    const Nvfp4Packed p = fgmp_repack_fp4(t.view());
    std::vector<float> y(static_cast<std::size_t>(t.rows), -1.0f);
    fgmp_gemv_q8(t.view(), p, x.data(), y.data());
    // Bound: fp32 rounding, plus |w| * scale_b / 2 for every NVFP4 weight (act_int8.h: the
    // activation error of a 16-column block is at most max|x| / 127 / 2).
    std::vector<double> half_step(static_cast<std::size_t>(t.nb), 0.0);
    for (int64_t c = 0; c < t.cols; ++c)
      half_step[c / 16] = std::max(half_step[c / 16], std::fabs(static_cast<double>(x[c])) / 127.0 / 2.0);
    for (int64_t r = 0; r < t.rows; ++r) {
      double bound = 1e-5 * l1[r] + 1e-6;
      for (int64_t c = 0; c < t.cols; ++c)
        if (!t.is_fp8[r * t.nb + c / 16]) bound += std::fabs(t.weight(r, c)) * half_step[c / 16] * 1.001;
      ASSERT_NEAR(y[r], exact[r], bound) << label(t.rows, t.cols, 0, 1) << " row " << r;
    }
    // The FP8-only tensors take no activation rounding at all.
    bool all8 = true;
    for (uint8_t k : t.is_fp8) all8 = all8 && k;
    if (all8) expect_close(y, exact, l1, "q8 all-fp8 " + label(t.rows, t.cols, 1, 1));
  });
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

// MPQ_CPU_ISA caps the fp32 LUT and FGMP kernels too, although they check their own,
// narrower feature sets (AVX-512F only): this test binary is run again under each cap (a
// fresh process: the cap is read once) and the child checks the paths the kernels report.
TEST(CpuIsaCap, LutAndFgmpPathsFollowMpqCpuIsa) {
  if (const char* want = std::getenv("MPQ_TEST_EXPECT_PATH")) {  // the child
    EXPECT_STREQ(lut_cpu_path(), want);
    EXPECT_STREQ(fgmp_cpu_path(), want);
    return;
  }
  if (std::getenv("MPQ_CPU_ISA")) GTEST_SKIP() << "MPQ_CPU_ISA is set for the whole run";
  EXPECT_STREQ(fgmp_cpu_path(), fgmp_cpu_has_avx512() ? "avx512" : fgmp_cpu_has_avx2() ? "avx2" : "scalar");
  EXPECT_STREQ(lut_cpu_path(), lut_cpu_has_avx512() ? "avx512" : lut_cpu_has_avx2() ? "avx2" : "scalar");
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  for (const char* level : {"scalar", "avx2"}) {
    if (std::string(level) == "avx2" && !(fgmp_cpu_has_avx2() && lut_cpu_has_avx2())) continue;
    std::string out;
    const int rc = test::run_command(std::string("MPQ_CPU_ISA=") + level + " MPQ_TEST_EXPECT_PATH=" + level + " " + self +
                                         " --gtest_filter=CpuIsaCap.LutAndFgmpPathsFollowMpqCpuIsa",
                                     &out);
    EXPECT_EQ(rc, 0) << level << "\n" << out;
    EXPECT_NE(out.find("[  PASSED  ] 1 test"), std::string::npos) << level << "\n" << out;
  }
}

}  // namespace
}  // namespace mpq
