// SqueezeLLM dense-and-sparse format (lib/quant/squeezellm.h): bit packing against a
// reference unpack written from the documented bit order, reconstruction, sparse counts,
// Fisher-weighted vs unweighted fits, the uniform-grid baseline, layout, read_packed's
// validation, and pack -> load -> eval end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/kmeans1d.h"
#include "lib/quant/squeezellm.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

std::vector<float> normal(int64_t n, uint64_t seed, float sd = 0.05f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = d(g);
  return v;
}

// Heavy-tailed positive sensitivities: exp(2.5 * N(0, 1)).
std::vector<float> heavy_fisher(int64_t n, uint64_t seed) {
  std::vector<float> v = normal(n, seed, 1.0f);
  for (float& x : v) x = std::exp(2.5f * x);
  return v;
}

uint16_t u16(const std::vector<uint8_t>& b, int64_t i) {
  return static_cast<uint16_t>(b[static_cast<std::size_t>(2 * i)] | b[static_cast<std::size_t>(2 * i + 1)] << 8);
}
int32_t i32(const std::vector<uint8_t>& b, int64_t i) {
  int32_t v;
  std::memcpy(&v, b.data() + 4 * i, 4);
  return v;
}

// Reference unpack from the documented order: bit t of a row's stream is bit (t mod 8) of
// byte t / 8; index j is bits [j*b, j*b + b), least significant first.
int ref_index(const std::vector<uint8_t>& q, int64_t row_bytes, int64_t r, int64_t j, int b) {
  int v = 0;
  for (int t = 0; t < b; ++t) {
    const int64_t bit = j * b + t;
    v |= ((q[static_cast<std::size_t>(r * row_bytes + bit / 8)] >> (bit % 8)) & 1) << t;
  }
  return v;
}

float lut_at(const PackedTensor& p, int64_t r, int j, int k) {
  return fp16_to_fp32(u16(p.part("lookup_table").bytes, r * k + j));
}

double sq_err(const std::vector<float>& a, const std::vector<float>& b, const float* wgt) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += (wgt ? wgt[i] : 1.0) * d * d;
  }
  return s;
}

TEST(SqueezeLLM, BitPackingMatchesDocumentedOrder) {
  for (int b : {2, 3, 4})
    for (int64_t cols : {1, 7, 172, 4097}) {
      const int64_t rows = 3;
      const int k = 1 << b;
      const std::vector<float> w = normal(rows * cols, 100 + static_cast<uint64_t>(cols) + static_cast<uint64_t>(b));
      const SqueezeLLMQuantizer q(b, 0.0, 0.0);
      const PackedTensor p = q.encode("w", w.data(), rows, cols);
      const PackedPart& qw = p.part("qweight");
      const int64_t rb = b * ((cols + 7) / 8);
      ASSERT_EQ(qw.shape, (std::vector<int64_t>{rows, rb})) << b << " " << cols;
      std::vector<float> dec(w.size());
      q.decode(p, dec.data());
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> lut(static_cast<std::size_t>(k));
        for (int j = 0; j < k; ++j) lut[static_cast<std::size_t>(j)] = lut_at(p, r, j, k);
        const std::vector<uint8_t> want = assign_to_lut(w.data() + r * cols, cols, lut.data(), k);
        for (int64_t c = 0; c < cols; ++c) {
          const int idx = ref_index(qw.bytes, rb, r, c, b);
          ASSERT_EQ(idx, want[static_cast<std::size_t>(c)]) << "b=" << b << " cols=" << cols << " r=" << r << " c=" << c;
          ASSERT_EQ(dec[static_cast<std::size_t>(r * cols + c)], lut[static_cast<std::size_t>(idx)]);
        }
        for (int64_t j = cols; j < rb * 8 / b; ++j) ASSERT_EQ(ref_index(qw.bytes, rb, r, j, b), 0);  // padding
      }
    }
}

TEST(SqueezeLLM, ReconstructionAndSparseCounts) {
  const int64_t rows = 24, cols = 300, n = rows * cols;
  const std::vector<float> w = normal(n, 7);
  const std::vector<float> f = heavy_fisher(n, 8);
  for (bool weighted : {false, true}) {
    const SqueezeLLMQuantizer q(3, 0.45, 0.05);
    const PackedTensor p = q.encode_weighted("w", w.data(), weighted ? f.data() : nullptr, rows, cols);
    const int64_t nnz = i32(p.part("sparse_rowptr").bytes, rows);
    const int64_t n_out = std::llround(0.0045 * n), n_sens = std::llround(0.0005 * n);
    if (!weighted) {
      EXPECT_EQ(nnz, n_out);
    } else {
      EXPECT_GE(nnz, n_out);
      EXPECT_LE(nnz, n_out + n_sens);
      EXPECT_GT(nnz, n_out);  // heavy-tailed Fisher barely overlaps the |w| outliers
    }
    EXPECT_EQ(p.part("sparse_col").shape, (std::vector<int64_t>{nnz}));
    EXPECT_EQ(p.part("sparse_val").shape, (std::vector<int64_t>{nnz}));
    EXPECT_EQ(p.bytes(), static_cast<std::size_t>(rows * 3 * 38 + rows * 8 * 2 + (rows + 1) * 4 + nnz * 4));
    if (!weighted) {
      EXPECT_EQ(p.bytes(), q.bytes(rows, cols));
    }
    std::vector<float> dec(static_cast<std::size_t>(n));
    q.decode(p, dec.data());
    std::vector<uint8_t> is_sparse(static_cast<std::size_t>(n), 0);
    const auto& col = p.part("sparse_col").bytes;
    for (int64_t r = 0; r < rows; ++r)
      for (int32_t e = i32(p.part("sparse_rowptr").bytes, r); e < i32(p.part("sparse_rowptr").bytes, r + 1); ++e)
        is_sparse[static_cast<std::size_t>(r * cols + static_cast<int16_t>(u16(col, e)))] = 1;
    // The |w| outliers are all sparse: every sparse-free weight is below every outlier.
    float min_sparse_abs = 1e9f, max_dense_abs = 0;
    const int64_t rb = squeezellm_row_bytes(cols, 3);
    for (int64_t i = 0; i < n; ++i) {
      const std::size_t u = static_cast<std::size_t>(i);
      const int64_t r = i / cols, c = i % cols;
      const float base = lut_at(p, r, ref_index(p.part("qweight").bytes, rb, r, c, 3), 8);
      if (is_sparse[u]) {
        min_sparse_abs = std::min(min_sparse_abs, std::fabs(w[u]));
        const float res = w[u] - base;
        const float ulp = std::ldexp(1.0f, std::max(-24, static_cast<int>(std::floor(std::log2(std::fabs(res) + 1e-30f))) - 10));
        EXPECT_LE(std::fabs(dec[u] - w[u]), 0.5f * ulp + 1e-7f * std::fabs(w[u])) << i;
        EXPECT_EQ(dec[u], base + fp16_to_fp32(fp32_to_fp16(res)));
      } else {
        max_dense_abs = std::max(max_dense_abs, std::fabs(w[u]));
        EXPECT_EQ(dec[u], base) << i;
      }
    }
    if (!weighted) {
      EXPECT_GE(min_sparse_abs, max_dense_abs);
    }
  }
}

TEST(SqueezeLLM, FisherWeightedFitBeatsUnweightedOnFisherError) {
  const int64_t rows = 16, cols = 512, n = rows * cols;
  const std::vector<float> w = normal(n, 11);
  const std::vector<float> f = heavy_fisher(n, 12);
  for (int b : {2, 3, 4}) {
    const SqueezeLLMQuantizer q(b, 0.0, 0.0);
    std::vector<float> dw(static_cast<std::size_t>(n)), du(static_cast<std::size_t>(n));
    q.decode(q.encode_weighted("w", w.data(), f.data(), rows, cols), dw.data());
    q.decode(q.encode("w", w.data(), rows, cols), du.data());
    EXPECT_LT(sq_err(w, dw, f.data()), sq_err(w, du, f.data())) << b;
    EXPECT_LT(sq_err(w, du, nullptr), sq_err(w, dw, nullptr)) << b;
  }
}

TEST(SqueezeLLM, UniformGridWorseThanKMeans) {
  const int64_t rows = 16, cols = 512, n = rows * cols;
  const std::vector<float> w = normal(n, 21);
  for (int b : {2, 3, 4}) {
    const std::unique_ptr<Quantizer> km = make_quantizer("squeezellm", {b, 0.0, 0.0});
    const std::unique_ptr<Quantizer> un = make_quantizer("uniform", {b, 0.45, 0.05});
    const PackedTensor pu = un->encode("w", w.data(), rows, cols);
    EXPECT_EQ(i32(pu.part("sparse_rowptr").bytes, rows), 0);  // no sparse part
    EXPECT_EQ(pu.format, "squeezellm");
    EXPECT_STREQ(un->info().name, "uniform");
    // Levels evenly spaced from the row min to the row max.
    const int k = 1 << b;
    const float lo = *std::min_element(w.begin(), w.begin() + cols), hi = *std::max_element(w.begin(), w.begin() + cols);
    EXPECT_EQ(lut_at(pu, 0, 0, k), fp16_to_fp32(fp32_to_fp16(lo)));
    EXPECT_EQ(lut_at(pu, 0, k - 1, k), fp16_to_fp32(fp32_to_fp16(hi)));
    std::vector<float> dk(static_cast<std::size_t>(n)), du(static_cast<std::size_t>(n));
    km->decode(km->encode("w", w.data(), rows, cols), dk.data());
    un->decode(pu, du.data());
    EXPECT_LT(sq_err(w, dk, nullptr), sq_err(w, du, nullptr)) << b;
  }
}

TEST(SqueezeLLM, LayoutAndColumnDtype) {
  const SqueezeLLMQuantizer q3(3);
  const std::vector<PackedPart> l = q3.layout(5, 17);
  ASSERT_EQ(l.size(), 5u);
  EXPECT_EQ(l[0].suffix, "qweight");
  EXPECT_EQ(l[0].dtype, DType::U8);
  EXPECT_EQ(l[0].shape, (std::vector<int64_t>{5, 9}));  // 3 groups of 8 * 3 bytes
  EXPECT_EQ(l[1].suffix, "lookup_table");
  EXPECT_EQ(l[1].dtype, DType::F16);
  EXPECT_EQ(l[1].shape, (std::vector<int64_t>{5, 8}));
  EXPECT_EQ(l[2].suffix, "sparse_rowptr");
  EXPECT_EQ(l[2].dtype, DType::I32);
  EXPECT_EQ(l[2].shape, (std::vector<int64_t>{6}));
  EXPECT_EQ(l[3].suffix, "sparse_col");
  EXPECT_EQ(l[3].dtype, DType::I16);
  EXPECT_EQ(l[3].shape, (std::vector<int64_t>{0}));  // round(0.45% of 85) = 0
  EXPECT_EQ(l[4].suffix, "sparse_val");
  EXPECT_EQ(l[4].dtype, DType::F16);
  EXPECT_THROW(SqueezeLLMQuantizer(5), Error);
  EXPECT_THROW(SqueezeLLMQuantizer(4, -1.0), Error);
  EXPECT_THROW(make_quantizer("rtn", {}), Error);
  EXPECT_STREQ(quantizer_for("squeezellm").info().quant_algo, "SQUEEZELLM");
  for (int64_t cols : {32767, 32768}) {
    const std::vector<float> w = normal(2 * cols, 31);
    const SqueezeLLMQuantizer q(2, 0.45, 0.0);
    const PackedTensor p = q.encode("w", w.data(), 2, cols);
    const std::vector<std::string> names = {"qweight", "lookup_table", "sparse_rowptr", "sparse_col", "sparse_val"};
    ASSERT_EQ(p.parts.size(), names.size());
    for (std::size_t i = 0; i < names.size(); ++i) EXPECT_EQ(p.parts[i].suffix, names[i]);
    EXPECT_EQ(p.part("sparse_col").dtype, cols < 32768 ? DType::I16 : DType::I32);
    EXPECT_EQ(p.part("sparse_val").dtype, DType::F16);
    const int64_t nnz = std::llround(0.0045 * 2 * cols);
    EXPECT_EQ(p.part("sparse_col").shape, (std::vector<int64_t>{nnz}));
    EXPECT_EQ(p.bytes(), q.bytes(2, cols));
    std::vector<float> dec(w.size());
    q.decode(p, dec.data());
    // Through a checkpoint too.
    const std::string dir = test::scratch_dir("sq-cols");
    SafetensorsWriter wr;
    add_packed(wr, "m", p);
    wr.write(dir + "/model.safetensors");
    const TensorStore st = TensorStore::open(dir);
    EXPECT_EQ(detect_linear_format(st, "m"), "squeezellm");
    std::size_t stored = 0;
    std::string fmt;
    EXPECT_EQ(read_linear_f32(st, "m", 2, cols, &fmt, &stored), dec);
    EXPECT_EQ(stored, p.bytes());
    EXPECT_EQ(fmt, "squeezellm");
  }
}

// Writes p under prefix "m" and expects read_packed to throw kInput mentioning `field`.
void expect_rejected(const PackedTensor& p, const std::string& field, const std::string& tag) {
  const std::string dir = test::scratch_dir(tag);
  SafetensorsWriter wr;
  add_packed(wr, "m", p);
  wr.write(dir + "/model.safetensors");
  const TensorStore st = TensorStore::open(dir);
  try {
    read_packed(st, "m", "squeezellm", p.rows, p.cols);
    ADD_FAILURE() << tag << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput) << e.what();
    EXPECT_NE(std::string(e.what()).find("m." + field), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  std::vector<float> out(static_cast<std::size_t>(p.rows * p.cols));
  EXPECT_THROW(quantizer_for("squeezellm").decode(p, out.data()), Error);
}

TEST(SqueezeLLM, ReadPackedRejectsCorruptSparse) {
  const int64_t rows = 8, cols = 100;
  const std::vector<float> w = normal(rows * cols, 41);
  const PackedTensor good = SqueezeLLMQuantizer(4, 2.0, 0.0).encode("w", w.data(), rows, cols);
  const int64_t nnz = i32(good.part("sparse_rowptr").bytes, rows);
  ASSERT_EQ(nnz, 16);
  {
    const std::string dir = test::scratch_dir("sq-good");
    SafetensorsWriter wr;
    add_packed(wr, "m", good);
    wr.write(dir + "/model.safetensors");
    EXPECT_NO_THROW(read_packed(TensorStore::open(dir), "m", "squeezellm", rows, cols));
  }
  PackedTensor bad = good;  // rowptr decreasing in the middle
  int32_t v = i32(good.part("sparse_rowptr").bytes, 4) + 3;
  std::memcpy(bad.parts[2].bytes.data() + 4 * 3, &v, 4);
  expect_rejected(bad, "sparse_rowptr", "sq-bad-rowptr");
  bad = good;  // rowptr[0] != 0
  v = 1;
  std::memcpy(bad.parts[2].bytes.data(), &v, 4);
  expect_rejected(bad, "sparse_rowptr", "sq-bad-rowptr0");
  bad = good;  // a column outside [0, cols)
  const int16_t c = 100;
  std::memcpy(bad.parts[3].bytes.data() + 2 * 5, &c, 2);
  expect_rejected(bad, "sparse_col", "sq-bad-col");
  bad = good;  // a lookup table of 5 entries
  bad.parts[1].shape = {rows, 5};
  bad.parts[1].bytes.resize(static_cast<std::size_t>(rows * 5 * 2));
  expect_rejected(bad, "lookup_table", "sq-bad-lut");
}

// --- Pack -> load -> eval ------------------------------------------------------

std::string tool(const std::string& name) { return test::tools_dir() + "/" + name; }

TEST(SqueezeLLMPack, LoadedWeightsEqualDecodeAndEvalRuns) {
  const std::string m = test::scratch_dir("sq-src");
  test::TinyLlamaSpec spec;
  spec.intermediate = 40;
  test::write_tiny_llama(m, spec);
  std::mt19937 g(3);
  std::vector<int32_t> ids(1500);
  for (int32_t& id : ids) id = static_cast<int32_t>(g() % 128);
  std::vector<uint8_t> ib(ids.size() * 4);
  std::memcpy(ib.data(), ids.data(), ib.size());
  test::write_bytes(m + "/calib.i32", ib);
  const std::string sens = m + "/sens.safetensors";
  std::string out;
  ASSERT_EQ(test::run_command(tool("mpq-sensitivity") + " -q --model " + m + " --calib " + m +
                                  "/calib.i32 --samples 4 --seq-len 64 --kind fisher --out " + sens, &out), 0) << out;
  const TensorStore sst = TensorStore::open(sens);
  const LlamaModel orig = LlamaModel::load(m);
  for (bool weighted : {false, true}) {
    const std::string dir = test::scratch_dir(weighted ? "sq-w" : "sq-u") + "/p";
    ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + m + " --format squeezellm --bits 3 --out " + dir +
                                    " -q" + (weighted ? " --sensitivity " + sens : std::string()), &out), 0) << out;
    if (!weighted) {
      EXPECT_NE(out.find("sensitive-pct"), std::string::npos) << out;
    }
    std::ifstream cf(dir + "/config.json");
    const auto qc = nlohmann::json::parse(cf)["quantization_config"];
    EXPECT_EQ(qc["quant_method"], "mpq");  // mpq-native: engines refuse it by name
    EXPECT_EQ(qc["format"], "squeezellm");
    EXPECT_EQ(qc["wbits"], 3);
    EXPECT_EQ(qc["fisher_weighted"], weighted);
    EXPECT_EQ(qc["sensitive_pct"].get<double>(), weighted ? 0.05 : 0.0);
    std::ifstream mf(dir + "/mpq_manifest.json");
    const auto man = nlohmann::json::parse(mf);
    EXPECT_EQ(man.contains("sensitivity"), weighted);
    if (weighted) {
      std::string sum;
      ASSERT_EQ(test::run_command("sha256sum " + sens, &sum), 0);
      EXPECT_EQ(man["sensitivity"]["sha256"], sum.substr(0, 64));
    }
    const LlamaModel packed = LlamaModel::load(dir, LoadOptions{/*expand_packed=*/true});
    const SqueezeLLMQuantizer q(3, 0.45, weighted ? 0.05 : 0.0);
    for (std::size_t l = 0; l < 2; ++l)
      for (int i = 0; i < 7; ++i) {
        const Linear& lo = orig.weights().layers[l].linear[static_cast<std::size_t>(i)];
        const Linear& lp = packed.weights().layers[l].linear[static_cast<std::size_t>(i)];
        EXPECT_EQ(lp.format, "squeezellm");
        std::vector<float> fisher;
        if (weighted)
          fisher = to_f32(sst.get("model.layers." + std::to_string(l) + "." + kLinearNames[i] + ".fisher"));
        const PackedTensor p = q.encode_weighted("w", lo.w.data(), weighted ? fisher.data() : nullptr,
                                                 lo.w.rows(), lo.w.cols());
        MatrixRM want(lo.w.rows(), lo.w.cols());
        q.decode(p, want.data());
        EXPECT_EQ((lp.w - want).cwiseAbs().maxCoeff(), 0.0f) << l << " " << i;
        EXPECT_EQ(lp.stored_bytes, p.bytes());
      }
    const std::string js = test::scratch_dir("sq-json") + "/e.json";
    const int rc = test::run_command(tool("mpq-eval") + " --model " + dir + " --tokens " + m +
                                         "/calib.i32 --ctx 32 --max-tokens 256 -q --json " + js, &out);
    ASSERT_EQ(rc, 0) << out;
    std::ifstream jf(js);
    const auto j = nlohmann::json::parse(jf);
    EXPECT_TRUE(std::isfinite(j["mean_nll"].get<double>()));
    EXPECT_GT(j["linear_bpw"].get<double>(), 3.0);
    ASSERT_EQ(test::run_command(tool("mpq-inspect") + " " + dir, &out), 0) << out;
    EXPECT_NE(out.find("squeezellm"), std::string::npos) << out;
  }
  // A sensitivity file without the module's Fisher: exit 3 naming the file and tensor.
  const std::string hs = m + "/hess.safetensors";
  ASSERT_EQ(test::run_command(tool("mpq-sensitivity") + " -q --model " + m + " --calib " + m +
                                  "/calib.i32 --samples 2 --seq-len 32 --kind hessian --out " + hs, &out), 0) << out;
  const std::string bad = test::scratch_dir("sq-bad") + "/p";
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + m + " --format squeezellm --out " + bad +
                                  " -q --sensitivity " + hs, &out), 3) << out;
  EXPECT_NE(out.find("hess.safetensors"), std::string::npos) << out;
  EXPECT_NE(out.find(".fisher"), std::string::npos) << out;
  // Uniform baseline loads through the same reader.
  const std::string ud = test::scratch_dir("sq-uni") + "/p";
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + m + " --format uniform --bits 4 --out " + ud + " -q", &out), 0) << out;
  std::ifstream uf(ud + "/config.json");
  EXPECT_EQ(nlohmann::json::parse(uf)["quantization_config"]["grid"], "uniform");
  EXPECT_EQ(LlamaModel::load(ud).weights().layers[0].linear[0].format, "squeezellm");
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + m + " --format nvfp4 --bits 3 --out " + bad, &out), 2) << out;
}

}  // namespace
}  // namespace mpq
