// Tests of lib/quant: the format table and dispatch, NVFP4 and FP8 encode/decode against
// references written here from the documented ModelOpt layouts, error bounds, shapes,
// byte counts, and the input/format errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/quantizer.h"

namespace mpq {
namespace {

// ---- Independent helpers (do not call the quantizers' decode) ----

/// E2M1 value of a nibble from the OCP MX table: bit 3 sign, bits 2-0 index.
float ref_e2m1(uint8_t nibble) {
  static const float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float m = kMag[nibble & 0x7];
  return (nibble & 0x8) ? -m : m;
}

/// OCP E4M3 value from its bit fields (bias 7); NaN for S.1111.111.
float ref_e4m3(uint8_t b) {
  const int e = (b >> 3) & 0xF;
  const int m = b & 0x7;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(1.0 + m / 8.0, e - 7);
  return static_cast<float>((b & 0x80) ? -mag : mag);
}

float ref_load_f32(const std::vector<uint8_t>& bytes) {
  EXPECT_EQ(bytes.size(), 4u);
  const uint32_t u = uint32_t{bytes[0]} | uint32_t{bytes[1]} << 8 | uint32_t{bytes[2]} << 16 |
                     uint32_t{bytes[3]} << 24;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

const PackedPart* find_part(const PackedTensor& p, const std::string& suffix) {
  for (const PackedPart& part : p.parts)
    if (part.suffix == suffix) return &part;
  return nullptr;
}

/// NVFP4 reference decode straight from the layout in nvfp4.h.
std::vector<float> ref_nvfp4_decode(const PackedTensor& p) {
  const PackedPart* w = find_part(p, "weight");
  const PackedPart* s = find_part(p, "weight_scale");
  const PackedPart* s2p = find_part(p, "weight_scale_2");
  EXPECT_TRUE(w && s && s2p);
  if (!(w && s && s2p)) return {};
  const int64_t nb = (p.cols + 15) / 16;
  const float s2 = ref_load_f32(s2p->bytes);
  std::vector<float> out(static_cast<std::size_t>(p.rows * p.cols));
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t c = 0; c < p.cols; ++c) {
      const uint8_t byte = w->bytes[static_cast<std::size_t>(r * nb * 8 + c / 2)];
      const uint8_t nib = (c % 2 == 0) ? (byte & 0xF) : (byte >> 4);
      const float sb = ref_e4m3(s->bytes[static_cast<std::size_t>(r * nb + c / 16)]);
      out[static_cast<std::size_t>(r * p.cols + c)] = ref_e2m1(nib) * sb * s2;
    }
  }
  return out;
}

/// FP8 reference decode straight from the layout in fp8.h.
std::vector<float> ref_fp8_decode(const PackedTensor& p) {
  const PackedPart* w = find_part(p, "weight");
  const PackedPart* s = find_part(p, "weight_scale");
  EXPECT_TRUE(w && s);
  if (!(w && s)) return {};
  const float scale = ref_load_f32(s->bytes);
  std::vector<float> out(w->bytes.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = ref_e4m3(w->bytes[i]) * scale;
  return out;
}

std::vector<float> gaussian(int64_t rows, int64_t cols, uint32_t seed, float std = 0.05f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& x : w) x = d(rng);
  return w;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

/// Runs f, expecting Error with `code`; returns its message.
template <typename F>
std::string expect_error(F&& f, ExitCode code) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.code()), static_cast<int>(code)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no mpq::Error thrown";
  return "";
}

// ---- Format table and dispatch ----

TEST(Quant, FormatTable) {
  const std::vector<FormatInfo>& t = format_table();
  ASSERT_EQ(t.size(), 6u);
  EXPECT_STREQ(t[5].name, "int");
  EXPECT_EQ(t[5].layout, FormatId::kInt);
  EXPECT_STREQ(t[2].name, "squeezellm");
  EXPECT_STREQ(t[3].name, "uniform");
  EXPECT_STREQ(t[4].name, "fgmp");
  EXPECT_STREQ(t[4].quant_algo, "FGMP");
  EXPECT_NEAR(t[4].nominal_bpw, 5.6203, 1e-4);  // 30% FP8 on 4096 x 4096 (docs/formats.md)
  EXPECT_STREQ(t[0].name, "fp8");
  EXPECT_STREQ(t[0].quant_algo, "FP8");
  EXPECT_DOUBLE_EQ(t[0].nominal_bpw, 8.0);
  EXPECT_EQ(t[0].block_size, 0);
  EXPECT_STREQ(t[1].name, "nvfp4");
  EXPECT_STREQ(t[1].quant_algo, "NVFP4");
  EXPECT_DOUBLE_EQ(t[1].nominal_bpw, 4.5);
  EXPECT_EQ(t[1].block_size, 16);
  for (const FormatInfo& f : t) {
    const Quantizer& q = quantizer_for(f.name);
    EXPECT_STREQ(q.info().name, f.name);
    EXPECT_EQ(&q.info(), &f);
    EXPECT_GT(std::string(f.description).size(), 0u);
  }
}

TEST(Quant, GptqSuffixOfTheLabelGrammar) {
  const FormatSpec a = parse_format_label("int4-g32+gptq");
  EXPECT_TRUE(a.gptq);
  EXPECT_FALSE(a.four_over_six);
  EXPECT_EQ(a.format, "int");
  EXPECT_EQ(a.params.group_size, 32);
  EXPECT_EQ(a.label, "int4-g32+gptq");
  const FormatSpec b = parse_format_label("nvfp4+gptq-4o6");
  EXPECT_TRUE(b.gptq && b.four_over_six);
  EXPECT_EQ(b.format, "nvfp4");
  EXPECT_FALSE(parse_format_label("nvfp4").gptq);
  expect_error([] { parse_format_label("fp8+gptq-4o6"); }, ExitCode::kUsage);
  expect_error([] { parse_format_label("source+gptq"); }, ExitCode::kUsage);
  expect_error([] { parse_format_label("nvfp4+gptqq"); }, ExitCode::kUsage);
  expect_error([] { parse_format_label("+gptq"); }, ExitCode::kUsage);
}

TEST(Quant, UnknownFormatIsUsageError) {
  const std::string msg = expect_error([] { quantizer_for("int5"); }, ExitCode::kUsage);
  EXPECT_EQ(msg, "unknown format 'int5' (expected source | fp8 | nvfp4 | squeezellm[-<2|3|4>bit][-sparse] | "
                 "uniform[-<2|3|4>bit] | fgmp[-<0..100>] | int<2|3|4|8>[-g<16|32|64|128>], each optionally "
                 "followed by +gptq; nvfp4 also +gptq-4o6)");
  // A valid label that is not a row name is refused by the name-based lookup.
  expect_error([] { quantizer_for("int3"); }, ExitCode::kUsage);
}

TEST(Quant, OneLabelGrammarForEveryRow) {
  // Every row's bare name parses to that row, with the row's quantizer.
  for (const FormatInfo& f : format_table()) {
    const std::string label = f.layout == FormatId::kInt ? "int4" : f.name;  // "int" needs its bits
    const FormatSpec s = parse_format_label(label);
    EXPECT_EQ(s.info, &f) << f.name;
    EXPECT_EQ(s.format, f.name);
    const std::unique_ptr<Quantizer> q = make_quantizer(s);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(&q->info(), &f) << f.name;
    // The detector of the row's layout family recognizes what its quantizer writes (below).
    EXPECT_EQ(&layout_format(f.layout), find_format(f.layout == FormatId::kSqueezeLLM ? "squeezellm" : f.name));
  }
  {
    const FormatSpec i = parse_format_label("int3-g32");
    EXPECT_EQ(i.params.bits, 3);
    EXPECT_EQ(i.params.group_size, 32);
    EXPECT_EQ(parse_format_label("int8").params.group_size, 0);
    for (const char* bad : {"int", "int5", "int4-g24", "int4-g"}) EXPECT_THROW(parse_format_label(bad), Error) << bad;
  }
  EXPECT_TRUE(parse_format_label("source").is_source());
  EXPECT_EQ(make_quantizer(parse_format_label("source")), nullptr);
  const FormatSpec sq = parse_format_label("squeezellm");  // mpq-pack's default: 4 bits, sparse
  EXPECT_EQ(sq.params.bits, 4);
  EXPECT_DOUBLE_EQ(sq.params.outlier_pct, 0.45);
  const FormatSpec u = parse_format_label("uniform-2bit");
  EXPECT_EQ(u.params.bits, 2);
  EXPECT_DOUBLE_EQ(u.params.outlier_pct, 0.0);
  EXPECT_EQ(format_params_json(u)["bits"], 2);
  EXPECT_TRUE(format_params_json(parse_format_label("nvfp4")).empty());
  // Only fp8 and nvfp4 are expressible in the engine exports.
  for (const FormatInfo& f : format_table()) {
    const bool engine = f.layout == FormatId::kFp8 || f.layout == FormatId::kNvfp4;  // int: not yet
    EXPECT_EQ(f.exports != 0, engine) << f.name;
    EXPECT_EQ(std::string(f.export_note).empty(), engine) << f.name;
  }
}

TEST(Quant, PackedTensorHelpers) {
  PackedTensor p;
  p.format = "nvfp4";
  p.rows = 2;
  p.cols = 16;
  p.parts.push_back({"weight", DType::U8, {2, 8}, std::vector<uint8_t>(16)});
  p.parts.push_back({"weight_scale", DType::F8_E4M3, {2, 1}, std::vector<uint8_t>(2)});
  EXPECT_EQ(p.bytes(), 18u);
  EXPECT_DOUBLE_EQ(p.bpw(), 18.0 * 8.0 / 32.0);
  EXPECT_EQ(&p.part("weight_scale"), &p.parts[1]);
  const std::string msg =
      expect_error([&] { p.part("weight_scale_2"); }, ExitCode::kInput);
  EXPECT_NE(msg.find("weight_scale_2"), std::string::npos) << msg;
}

TEST(Quant, LayoutMatchesEncodeAndBytes) {
  // layout() is the single source of each format's on-disk layout: encode() must produce
  // exactly its parts (suffix, dtype, shape, in order) and bytes() the sum of their sizes.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {3, 1}, {1, 31}, {5, 172}, {7, 33}, {3, 16}, {64, 256}, {2, 4097}, {0, 20}};
  for (const FormatInfo& f : format_table()) {
    const Quantizer& q = quantizer_for(f.name);
    for (auto [rows, cols] : shapes) {
      SCOPED_TRACE(std::string(f.name) + " " + std::to_string(rows) + "x" + std::to_string(cols));
      const std::vector<PackedPart> lay = q.layout(rows, cols);
      const std::vector<float> w = gaussian(rows, cols, 31u);
      const PackedTensor p = q.encode("t", w.data(), rows, cols);
      ASSERT_EQ(lay.size(), p.parts.size());
      std::size_t sum = 0;
      for (std::size_t i = 0; i < lay.size(); ++i) {
        EXPECT_EQ(lay[i].suffix, p.parts[i].suffix);
        EXPECT_EQ(lay[i].dtype, p.parts[i].dtype) << lay[i].suffix;
        EXPECT_EQ(lay[i].shape, p.parts[i].shape) << lay[i].suffix;
        EXPECT_TRUE(lay[i].bytes.empty()) << lay[i].suffix;
        std::size_t n = dtype_size(lay[i].dtype);
        for (int64_t d : lay[i].shape) n *= static_cast<std::size_t>(d);
        EXPECT_EQ(p.parts[i].bytes.size(), n) << lay[i].suffix;
        sum += n;
      }
      EXPECT_EQ(q.bytes(rows, cols), sum);
      EXPECT_EQ(p.bytes(), sum);
    }
    // An invalid shape is an input error naming the format, as bytes() reports it.
    EXPECT_EQ(expect_error([&] { q.layout(-1, 16); }, ExitCode::kInput),
              std::string(f.name) + ": invalid shape [-1, 16]");
  }
}

// ---- NVFP4 ----

TEST(Nvfp4, ReferenceDecodeMatches) {
  const Quantizer& q = quantizer_for("nvfp4");
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{7, 64}, {5, 172}, {3, 1}, {1, 31}}) {
    const std::vector<float> w = gaussian(rows, cols, 7u + static_cast<uint32_t>(cols));
    const PackedTensor p = q.encode("t", w.data(), rows, cols);
    std::vector<float> got(w.size());
    q.decode(p, got.data());
    const std::vector<float> ref = ref_nvfp4_decode(p);
    ASSERT_EQ(ref.size(), got.size());
    int bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) bad += !same_bits(got[i], ref[i]);
    EXPECT_EQ(bad, 0) << rows << "x" << cols;
  }
}

TEST(Nvfp4, EncodeFollowsDocumentedFormulas) {
  const int64_t rows = 9, cols = 100;
  const std::vector<float> w = gaussian(rows, cols, 3u);
  const PackedTensor p = quantizer_for("nvfp4").encode("t", w.data(), rows, cols);
  float amax = 0.0f;
  for (float x : w) amax = std::max(amax, std::fabs(x));
  const float s2 = ref_load_f32(p.part("weight_scale_2").bytes);
  EXPECT_TRUE(same_bits(s2, amax / (6.0f * 448.0f)));
  const int64_t nb = (cols + 15) / 16;
  const std::vector<uint8_t>& sc = p.part("weight_scale").bytes;
  const std::vector<uint8_t>& wq = p.part("weight").bytes;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      float bamax = 0.0f;
      const int64_t c1 = std::min(cols, b * 16 + 16);
      for (int64_t c = b * 16; c < c1; ++c) bamax = std::max(bamax, std::fabs(w[r * cols + c]));
      const uint8_t sb = sc[r * nb + b];
      ASSERT_EQ(sb, fp32_to_e4m3(bamax / (6.0f * s2))) << "row " << r << " block " << b;
      const float scale = ref_e4m3(sb) * s2;
      for (int64_t c = b * 16; c < c1; ++c) {
        // The stored nibble is the nearest E2M1 value of w / scale (ties to even code).
        const float x = w[r * cols + c] / scale;
        const uint8_t byte = wq[r * nb * 8 + c / 2];
        const uint8_t nib = (c % 2 == 0) ? (byte & 0xF) : (byte >> 4);
        const float xs = std::min(std::fabs(x), 6.0f);
        float best_d = std::numeric_limits<float>::infinity();
        for (uint8_t k = 0; k < 8; ++k) best_d = std::min(best_d, std::fabs(xs - ref_e2m1(k)));
        EXPECT_EQ(std::fabs(xs - std::fabs(ref_e2m1(nib))), best_d) << "w=" << w[r * cols + c];
        EXPECT_EQ((nib & 0x8) != 0, std::signbit(x));
      }
    }
  }
}

TEST(Nvfp4, RoundTripErrorBound) {
  const int64_t rows = 32, cols = 256;
  std::vector<float> w = gaussian(rows, cols, 11u, 0.02f);
  w[5] = 0.3f;  // an outlier, so other blocks use smaller scales
  const Quantizer& q = quantizer_for("nvfp4");
  const PackedTensor p = q.encode("t", w.data(), rows, cols);
  std::vector<float> out(w.size());
  q.decode(p, out.data());
  const float s2 = ref_load_f32(p.part("weight_scale_2").bytes);
  const int64_t nb = cols / 16;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const float scale = ref_e4m3(p.part("weight_scale").bytes[r * nb + b]) * s2;
      float bamax = 0.0f;
      for (int64_t c = b * 16; c < b * 16 + 16; ++c) bamax = std::max(bamax, std::fabs(w[r * cols + c]));
      for (int64_t c = b * 16; c < b * 16 + 16; ++c) {
        const float x = std::fabs(w[r * cols + c]);
        const float err = std::fabs(w[r * cols + c] - out[r * cols + c]);
        // Half the E2M1 step around |x| / scale: steps are 0.5 below 2, 1 below 4, 2 above.
        const float xs = x / scale;
        const float half_step = xs < 2.0f ? 0.25f : xs < 4.0f ? 0.5f : 1.0f;
        EXPECT_LE(err, half_step * scale * 1.0001f) << "r=" << r << " c=" << c;
        // Relative to the block: the block scale is bamax / 6 within E4M3's 2^-4 rounding,
        // so no error exceeds one top step (2 * scale / 2) ~ bamax / 6 * (1 + 1/16).
        EXPECT_LE(err, bamax / 6.0f * (1.0f + 1.0f / 16.0f) * 1.0001f) << "r=" << r << " c=" << c;
      }
    }
  }
}

TEST(Nvfp4, PartialBlockShape) {
  const int64_t rows = 5, cols = 172;
  const std::vector<float> w = gaussian(rows, cols, 5u);
  const Quantizer& q = quantizer_for("nvfp4");
  const PackedTensor p = q.encode("t", w.data(), rows, cols);
  EXPECT_EQ(p.format, "nvfp4");
  EXPECT_EQ(p.rows, rows);
  EXPECT_EQ(p.cols, cols);
  ASSERT_EQ(p.parts.size(), 3u);
  EXPECT_EQ(p.part("weight").dtype, DType::U8);
  EXPECT_EQ(p.part("weight").shape, (std::vector<int64_t>{5, 88}));
  EXPECT_EQ(p.part("weight").bytes.size(), 5u * 88u);
  EXPECT_EQ(p.part("weight_scale").dtype, DType::F8_E4M3);
  EXPECT_EQ(p.part("weight_scale").shape, (std::vector<int64_t>{5, 11}));
  EXPECT_EQ(p.part("weight_scale").bytes.size(), 5u * 11u);
  EXPECT_EQ(p.part("weight_scale_2").dtype, DType::F32);
  EXPECT_EQ(p.part("weight_scale_2").shape, std::vector<int64_t>{});
  EXPECT_EQ(p.part("weight_scale_2").bytes.size(), 4u);
  // Padding elements 172..175 of each row (bytes 86, 87) are zero.
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(p.part("weight").bytes[r * 88 + 86], 0);
    EXPECT_EQ(p.part("weight").bytes[r * 88 + 87], 0);
  }
  std::vector<float> out(w.size());
  q.decode(p, out.data());
  const std::vector<float> ref = ref_nvfp4_decode(p);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_TRUE(same_bits(out[i], ref[i])) << i;
}

TEST(Nvfp4, NibbleOrder) {
  // amax 6 -> s2 = 6/2688, block scale 448 (0x7E), so w / scale ~ w: codes are exact.
  const float row[16] = {0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, 0.0f,
                         -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f, 0.5f};
  const PackedTensor p = quantizer_for("nvfp4").encode("t", row, 1, 16);
  EXPECT_EQ(p.part("weight_scale").bytes[0], 0x7E);
  const std::vector<uint8_t> want = {0x21, 0x43, 0x65, 0x07, 0xA9, 0xCB, 0xED, 0x1F};
  EXPECT_EQ(p.part("weight").bytes, want);
}

TEST(Nvfp4, BytesAndBpw) {
  const Quantizer& q = quantizer_for("nvfp4");
  for (auto [rows, cols] :
       {std::pair<int64_t, int64_t>{5, 172}, {64, 256}, {3, 16}, {1, 1}, {16, 4096}}) {
    const std::vector<float> w = gaussian(rows, cols, 1u);
    const PackedTensor p = q.encode("t", w.data(), rows, cols);
    std::size_t sum = 0;
    for (const PackedPart& part : p.parts) sum += part.bytes.size();
    EXPECT_EQ(p.bytes(), sum);
    EXPECT_EQ(q.bytes(rows, cols), sum) << rows << "x" << cols;
    EXPECT_DOUBLE_EQ(p.bpw(), static_cast<double>(sum) * 8.0 / static_cast<double>(rows * cols));
  }
  const double n = 4096.0 * 4096.0;
  EXPECT_EQ(q.bytes(4096, 4096), 4096u * 256u * 9u + 4u);
  EXPECT_DOUBLE_EQ(static_cast<double>(q.bytes(4096, 4096)) * 8.0 / n, 4.5 + 32.0 / n);
  const std::vector<float> w = gaussian(64, 4096, 2u);
  EXPECT_DOUBLE_EQ(q.encode("t", w.data(), 64, 4096).bpw(), 4.5 + 32.0 / (64.0 * 4096.0));
}

TEST(Nvfp4, AllZeroDecodesToZero) {
  const std::vector<float> w(4 * 40, 0.0f);
  const Quantizer& q = quantizer_for("nvfp4");
  const PackedTensor p = q.encode("t", w.data(), 4, 40);
  EXPECT_EQ(ref_load_f32(p.part("weight_scale_2").bytes), 0.0f);
  for (uint8_t b : p.part("weight_scale").bytes) EXPECT_EQ(b, 0);
  for (uint8_t b : p.part("weight").bytes) EXPECT_EQ(b, 0);
  std::vector<float> out(w.size(), 1.0f);
  q.decode(p, out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(Nvfp4, ZeroBlockInNonZeroTensor) {
  std::vector<float> w = gaussian(2, 48, 9u);
  for (int c = 16; c < 32; ++c) w[c] = 0.0f;  // row 0, block 1
  const Quantizer& q = quantizer_for("nvfp4");
  const PackedTensor p = q.encode("t", w.data(), 2, 48);
  EXPECT_EQ(p.part("weight_scale").bytes[1], 0);
  std::vector<float> out(w.size());
  q.decode(p, out.data());
  for (int c = 16; c < 32; ++c) EXPECT_EQ(out[c], 0.0f);
}

template <typename Q>
void check_rejects_non_finite(const Q& q) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> w = gaussian(4, 20, 1u);
    w[2 * 20 + 5] = bad;
    w[3 * 20 + 1] = bad;  // only the first bad index is reported
    const std::string msg = expect_error(
        [&] { q.encode("model.layers.0.mlp.up_proj.weight", w.data(), 4, 20); }, ExitCode::kInput);
    const std::string kind = std::isnan(bad) ? "NaN" : "Inf";
    EXPECT_EQ(msg, "model.layers.0.mlp.up_proj.weight: " + kind + " at index (2, 5)");
  }
}

TEST(Nvfp4, RejectsNonFinite) { check_rejects_non_finite(quantizer_for("nvfp4")); }

/// Decoding `p` must throw Error(kInput) whose message contains `needle`.
void expect_decode_error(const Quantizer& q, const PackedTensor& p, const std::string& needle) {
  std::vector<float> out(static_cast<std::size_t>(std::max<int64_t>(p.rows * p.cols, 1)));
  const std::string msg = expect_error([&] { q.decode(p, out.data()); }, ExitCode::kInput);
  EXPECT_NE(msg.find(needle), std::string::npos) << msg;
}

PackedPart& mut_part(PackedTensor& p, const std::string& suffix) {
  for (PackedPart& part : p.parts)
    if (part.suffix == suffix) return part;
  throw std::runtime_error("no part " + suffix);
}

TEST(Nvfp4, DecodeRejectsBadParts) {
  const Quantizer& q = quantizer_for("nvfp4");
  const std::vector<float> w = gaussian(5, 172, 4u);
  const PackedTensor good = q.encode("t", w.data(), 5, 172);
  {
    PackedTensor p = good;
    mut_part(p, "weight").shape = {5, 86};
    expect_decode_error(q, p, "'weight' has shape [5, 86], expected [5, 88]");
  }
  {
    PackedTensor p = good;
    p.cols = 200;  // logical shape no longer matches the parts
    expect_decode_error(q, p, "'weight'");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight_scale").dtype = DType::U8;
    expect_decode_error(q, p, "'weight_scale' has dtype U8, expected F8_E4M3");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight_scale").shape = {11, 5};
    expect_decode_error(q, p, "'weight_scale' has shape [11, 5]");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight_scale_2").shape = {2};
    expect_decode_error(q, p, "'weight_scale_2' has shape [2]");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight").bytes.pop_back();
    expect_decode_error(q, p, "'weight' holds 439 bytes, expected 440");
  }
  {
    PackedTensor p = good;
    p.parts.pop_back();
    expect_decode_error(q, p, "weight_scale_2");
  }
  {
    PackedTensor p = good;
    p.format = "fp8";
    expect_decode_error(q, p, "fp8");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight_scale_2").bytes = {0x00, 0x00, 0xC0, 0x7F};  // NaN
    expect_decode_error(q, p, "weight_scale_2");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight_scale").bytes[7] = 0xFF;  // E4M3 NaN
    expect_decode_error(q, p, "weight_scale holds NaN at flat index 7");
  }
  {
    PackedTensor p = good;  // [1] is accepted for the scalar (some exports use it)
    mut_part(p, "weight_scale_2").shape = {1};
    std::vector<float> out(w.size());
    EXPECT_NO_THROW(q.decode(p, out.data()));
  }
}

// ---- FP8 ----

TEST(Fp8, ReferenceDecodeAndScale) {
  const Quantizer& q = quantizer_for("fp8");
  const int64_t rows = 13, cols = 77;
  const std::vector<float> w = gaussian(rows, cols, 21u);
  const PackedTensor p = q.encode("t", w.data(), rows, cols);
  EXPECT_EQ(p.format, "fp8");
  ASSERT_EQ(p.parts.size(), 2u);
  EXPECT_EQ(p.part("weight").dtype, DType::F8_E4M3);
  EXPECT_EQ(p.part("weight").shape, (std::vector<int64_t>{rows, cols}));
  EXPECT_EQ(p.part("weight_scale").dtype, DType::F32);
  EXPECT_EQ(p.part("weight_scale").shape, std::vector<int64_t>{});
  float amax = 0.0f;
  for (float x : w) amax = std::max(amax, std::fabs(x));
  const float scale = ref_load_f32(p.part("weight_scale").bytes);
  EXPECT_TRUE(same_bits(scale, amax / 448.0f));
  for (std::size_t i = 0; i < w.size(); ++i)
    ASSERT_EQ(p.part("weight").bytes[i], fp32_to_e4m3(w[i] / scale)) << i;
  std::vector<float> out(w.size());
  q.decode(p, out.data());
  const std::vector<float> ref = ref_fp8_decode(p);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_TRUE(same_bits(out[i], ref[i])) << i;
}

TEST(Fp8, RoundTripErrorBound) {
  const Quantizer& q = quantizer_for("fp8");
  const int64_t rows = 16, cols = 300;
  const std::vector<float> w = gaussian(rows, cols, 22u);
  const PackedTensor p = q.encode("t", w.data(), rows, cols);
  const float scale = ref_load_f32(p.part("weight_scale").bytes);
  std::vector<float> out(w.size());
  q.decode(p, out.data());
  for (std::size_t i = 0; i < w.size(); ++i) {
    const float xs = std::fabs(w[i]) / scale;
    // Half an E4M3 ulp: 2^(e-4) for normals (e = floor(log2 xs) >= -6), 2^-10 below.
    const float half_ulp = xs < std::ldexp(1.0f, -6) ? std::ldexp(1.0f, -10)
                                                     : std::ldexp(1.0f, std::ilogb(xs) - 4);
    EXPECT_LE(std::fabs(w[i] - out[i]), half_ulp * scale * 1.0001f) << i;
  }
}

TEST(Fp8, BytesAndBpw) {
  const Quantizer& q = quantizer_for("fp8");
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{5, 172}, {64, 256}, {1, 1}}) {
    const std::vector<float> w = gaussian(rows, cols, 1u);
    const PackedTensor p = q.encode("t", w.data(), rows, cols);
    EXPECT_EQ(q.bytes(rows, cols), p.bytes());
    EXPECT_EQ(p.bytes(), static_cast<std::size_t>(rows * cols + 4));
    EXPECT_DOUBLE_EQ(p.bpw(), 8.0 + 32.0 / static_cast<double>(rows * cols));
  }
  EXPECT_DOUBLE_EQ(static_cast<double>(q.bytes(4096, 4096)) * 8.0 / (4096.0 * 4096.0),
                   8.0 + 32.0 / (4096.0 * 4096.0));
}

TEST(Fp8, AllZeroStoresUnitScale) {
  const std::vector<float> w(3 * 10, 0.0f);
  const Quantizer& q = quantizer_for("fp8");
  const PackedTensor p = q.encode("t", w.data(), 3, 10);
  EXPECT_EQ(ref_load_f32(p.part("weight_scale").bytes), 1.0f);
  for (uint8_t b : p.part("weight").bytes) EXPECT_EQ(b, 0);
  std::vector<float> out(w.size(), 1.0f);
  q.decode(p, out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(Fp8, RejectsNonFinite) { check_rejects_non_finite(quantizer_for("fp8")); }

TEST(Fp8, DecodeRejectsBadParts) {
  const Quantizer& q = quantizer_for("fp8");
  const std::vector<float> w = gaussian(4, 9, 4u);
  const PackedTensor good = q.encode("t", w.data(), 4, 9);
  {
    PackedTensor p = good;
    mut_part(p, "weight").shape = {9, 4};
    expect_decode_error(q, p, "'weight' has shape [9, 4], expected [4, 9]");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight").dtype = DType::F8_E5M2;
    expect_decode_error(q, p, "'weight' has dtype F8_E5M2, expected F8_E4M3");
  }
  {
    PackedTensor p = good;
    mut_part(p, "weight_scale").dtype = DType::F16;
    expect_decode_error(q, p, "'weight_scale' has dtype F16");
  }
  {
    PackedTensor p = good;
    p.parts.pop_back();
    expect_decode_error(q, p, "weight_scale");
  }
  {
    PackedTensor p = good;
    p.rows = 5;
    expect_decode_error(q, p, "'weight'");
  }
  {
    PackedTensor p = good;
    p.format = "nvfp4";
    expect_decode_error(q, p, "nvfp4");
  }
}

}  // namespace
}  // namespace mpq
