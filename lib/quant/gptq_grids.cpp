// The GPTQ grids of the formats (see gptq_grids.h).
#include "lib/quant/gptq_grids.h"

#include <algorithm>
#include <cmath>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/fp8.h"
#include "lib/quant/intg.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/quant_common.h"
#include "lib/quant/squeezellm.h"

namespace mpq {

using namespace quant_detail;

namespace {

float tensor_amax(const GptqGridInput& in) {
  const float own = checked_amax(in.name, in.w, in.rows, in.cols);
  if (std::isnan(in.tensor_amax)) return own;
  check_tensor_amax(in.name, own, in.tensor_amax);
  return in.tensor_amax;
}

// The decoded value of w on the NVFP4 grid of a block with E4M3 scale byte sb (as decode does:
// e2m1 * sb exact, one rounding at * s2).
double nvfp4_value(double w, uint8_t sb, float s2) {
  const float sbf = e4m3_to_fp32(sb), scale = sbf * s2;
  const uint8_t code = scale > 0.0f ? fp32_to_e2m1(static_cast<float>(w) / scale) : uint8_t{0};
  return static_cast<double>(e2m1_to_fp32(code) * sbf * s2);
}

// ---- fp8 --------------------------------------------------------------------------------
class Fp8Grid final : public GptqGrid {
 public:
  explicit Fp8Grid(const GptqGridInput& in) : in_(in), amax_(tensor_amax(in)), s_(fp8_tensor_scale(amax_)), q_(static_cast<std::size_t>(in.rows * in.cols)) {}
  double quantize(int64_t r, int64_t c, double w) override {
    const uint8_t code = fp32_to_e4m3(static_cast<float>(w) / s_);
    q_[static_cast<std::size_t>(r * in_.cols + c)] = code;
    return static_cast<double>(e4m3_to_fp32(code) * s_);
  }
  PackedTensor encode() override {  // the recorded codes and the scale (the values may reach 448 s > amax by an ulp)
    const Fp8Quantizer q;
    PackedTensor out = packed_from_layout("fp8", in_.rows, in_.cols, q.layout(in_.rows, in_.cols));
    out.parts[0].bytes.assign(q_.begin(), q_.end());
    store_f32_le(s_, out.parts[1].bytes.data());
    return out;
  }

 private:
  GptqGridInput in_;
  float amax_, s_;
  std::vector<uint8_t> q_;  // E4M3 codes
};

// ---- nvfp4 ------------------------------------------------------------------------------
// Four Over Six's global scale (the fouroversix reference quantizer): amax / (6 * 256), so a
// block mapped to 4 (block scale 1.5x the max->6 one, at most 384) stays inside E4M3's 448.
float four_over_six_scale_2(float amax) { return amax / (6.0f * 256.0f); }

class Nvfp4Grid final : public GptqGrid {
 public:
  explicit Nvfp4Grid(const GptqGridInput& in)
      : in_(in), s2_(in.four_over_six ? four_over_six_scale_2(tensor_amax(in)) : nvfp4_scale_2(tensor_amax(in))), nb_((in.cols + kNvfp4BlockSize - 1) / kNvfp4BlockSize),
        sb_(static_cast<std::size_t>(in.rows * nb_), 0), q_(static_cast<std::size_t>(in.rows * in.cols)) {}
  int64_t group_cols() const override { return kNvfp4BlockSize; }
  void set_group(int64_t g, const double* w, int64_t ld, int64_t n) override {
    for (int64_t r = 0; r < in_.rows; ++r) {
      const double* x = w + r * ld;
      double amax = 0.0;
      for (int64_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
      uint8_t best = nvfp4_block_scale(static_cast<float>(amax), s2_);
      if (in_.four_over_six) {  // map the block max to 4 instead of 6 when that is closer
        const uint8_t four = s2_ > 0.0f ? fp32_to_e4m3(static_cast<float>(amax) / (4.0f * s2_)) : uint8_t{0};
        auto sse = [&](uint8_t sb) {
          double e = 0.0;
          for (int64_t j = 0; j < n; ++j) {
            const double d = x[j] - nvfp4_value(x[j], sb, s2_);
            e += d * d;
          }
          return e;
        };
        if (sse(four) < sse(best)) best = four;
      }
      sb_[static_cast<std::size_t>(r * nb_ + g)] = best;
    }
  }
  double quantize(int64_t r, int64_t c, double w) override {
    const double v = nvfp4_value(w, sb_[static_cast<std::size_t>(r * nb_ + c / kNvfp4BlockSize)], s2_);
    q_[static_cast<std::size_t>(r * in_.cols + c)] = static_cast<float>(v);
    return v;
  }
  PackedTensor encode() override {
    const Nvfp4Quantizer q;
    PackedTensor out = packed_from_layout("nvfp4", in_.rows, in_.cols, q.layout(in_.rows, in_.cols));
    const int64_t rb = out.parts[0].shape[1];
    store_f32_le(s2_, out.parts[2].bytes.data());
    for (int64_t r = 0; r < in_.rows; ++r)
      for (int64_t b = 0; b < nb_; ++b) {
        const uint8_t sb = sb_[static_cast<std::size_t>(r * nb_ + b)];
        out.parts[1].bytes[static_cast<std::size_t>(r * nb_ + b)] = sb;
        const int64_t c0 = b * kNvfp4BlockSize, c1 = std::min(in_.cols, c0 + kNvfp4BlockSize);
        nvfp4_encode_block(q_.data() + r * in_.cols + c0, c1 - c0, e4m3_to_fp32(sb) * s2_,
                           out.parts[0].bytes.data() + r * rb + b * (kNvfp4BlockSize / 2));
      }
    return out;
  }

 private:
  GptqGridInput in_;
  float s2_;
  int64_t nb_;
  std::vector<uint8_t> sb_;
  std::vector<float> q_;
};

// ---- int --------------------------------------------------------------------------------
class IntGrid final : public GptqGrid {
 public:
  IntGrid(const GptqGridInput& in, const IntGroupQuantizer& q)
      : in_(in), bits_(q.bits()), group_size_(q.group_size()), g_(q.group_cols(in.cols)),
        ng_((in.cols + g_ - 1) / g_), p_(static_cast<std::size_t>(in.rows * ng_)), q_(static_cast<std::size_t>(in.rows * in.cols)) {
    checked_amax(in.name, in.w, in.rows, in.cols);
  }
  int64_t group_cols() const override { return g_; }
  void set_group(int64_t g, const double* w, int64_t ld, int64_t n) override {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (int64_t r = 0; r < in_.rows; ++r) {
      for (int64_t j = 0; j < n; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(w[r * ld + j]);
      p_[static_cast<std::size_t>(r * ng_ + g)] = int_group_params(x.data(), n, bits_);
    }
  }
  double quantize(int64_t r, int64_t c, double w) override {
    const IntGroupParams& p = p_[static_cast<std::size_t>(r * ng_ + c / g_)];
    const float v = p.scale * static_cast<float>(int_group_code(static_cast<float>(w), p, bits_) - p.zero);
    q_[static_cast<std::size_t>(r * in_.cols + c)] = v;
    return v;
  }
  PackedTensor encode() override {
    const IntGroupQuantizer q(bits_, group_size_);
    PackedTensor out = packed_from_layout("int", in_.rows, in_.cols, q.layout(in_.rows, in_.cols));
    const int64_t rb = out.parts[0].shape[1];
    for (int64_t r = 0; r < in_.rows; ++r)
      for (int64_t k = 0; k < ng_; ++k) {
        const IntGroupParams& p = p_[static_cast<std::size_t>(r * ng_ + k)];
        if (!std::isfinite(p.scale))
          throw Error(ExitCode::kInput, in_.name + ": group " + std::to_string(k) + " of row " + std::to_string(r) + ": the scale overflows fp16");
        store_u16_le(fp32_to_fp16(p.scale), out.parts[1].bytes.data() + 2 * (r * ng_ + k));
        out.parts[2].bytes[static_cast<std::size_t>(r * ng_ + k)] = static_cast<uint8_t>(p.zero);
        for (int64_t c = k * g_; c < std::min(in_.cols, (k + 1) * g_); ++c)
          pack_code(out.parts[0].bytes.data() + r * rb, c, bits_,
                    static_cast<uint32_t>(int_group_code(q_[static_cast<std::size_t>(r * in_.cols + c)], p, bits_)));
      }
    return out;
  }

 private:
  GptqGridInput in_;
  int bits_;
  int64_t group_size_, g_, ng_;
  std::vector<IntGroupParams> p_;
  std::vector<float> q_;
};

// ---- squeezellm / uniform ------------------------------------------------------------------
class LutGrid final : public GptqGrid {
 public:
  LutGrid(const GptqGridInput& in, const Quantizer& q) : in_(in), p0_(q.encode_weighted(in.name, in.w, in.fisher, in.rows, in.cols)) {
    const LutWeightView v = squeezellm_weight_view(p0_);
    bits_ = v.bits;
    k_ = 1 << bits_;
    lut_.resize(static_cast<std::size_t>(in.rows * k_));
    for (std::size_t i = 0; i < lut_.size(); ++i) lut_[i] = fp16_to_fp32(load_u16_le(p0_.part("lookup_table").bytes.data() + 2 * i));
    exact_.assign(static_cast<std::size_t>(in.rows * in.cols), 0);
    const PackedPart& rp = p0_.part("sparse_rowptr");
    const PackedPart& col = p0_.part("sparse_col");
    const bool i16 = col.dtype == DType::I16;
    for (int64_t r = 0; r < in.rows; ++r)
      for (int64_t e = load_i32_le(rp.bytes.data() + 4 * r); e < load_i32_le(rp.bytes.data() + 4 * (r + 1)); ++e) {
        const int64_t c = i16 ? static_cast<int16_t>(load_u16_le(col.bytes.data() + 2 * e)) : load_i32_le(col.bytes.data() + 4 * e);
        exact_[static_cast<std::size_t>(r * in.cols + c)] = 1;
      }
    idx_.assign(static_cast<std::size_t>(in.rows * in.cols), 0);
    fitted_.resize(static_cast<std::size_t>(in.rows * in.cols));
    q.decode(p0_, fitted_.data());
  }
  bool exact(int64_t r, int64_t c) const override { return exact_[static_cast<std::size_t>(r * in_.cols + c)] != 0; }
  double exact_value(int64_t r, int64_t c, double /*w0*/) const override {
    return fitted_[static_cast<std::size_t>(r * in_.cols + c)];
  }
  double quantize(int64_t r, int64_t c, double w) override {
    const float* l = lut_.data() + r * k_;
    int best = 0;  // nearest entry, ties to the lower index (assign_to_lut's rule)
    for (int j = 1; j < k_; ++j)
      if (std::fabs(w - l[j]) < std::fabs(w - l[best])) best = j;
    idx_[static_cast<std::size_t>(r * in_.cols + c)] = static_cast<uint8_t>(best);
    return l[best];
  }
  PackedTensor encode() override {
    // The tables and the sparse set stay as fitted; the dense codes are GPTQ's; the exact
    // positions keep the code of their original value and their residual (the fit's own).
    PackedTensor out = p0_;
    PackedPart& qw = out.parts[0];
    std::fill(qw.bytes.begin(), qw.bytes.end(), uint8_t{0});
    const int64_t rb = qw.shape[1];
    for (int64_t r = 0; r < in_.rows; ++r)
      for (int64_t c = 0; c < in_.cols; ++c) {
        const std::size_t i = static_cast<std::size_t>(r * in_.cols + c);
        const uint32_t code = exact_[i] ? unpack_code(p0_.parts[0].bytes.data() + r * rb, c, bits_) : idx_[i];
        pack_code(qw.bytes.data() + r * rb, c, bits_, code);
      }
    return out;
  }

 private:
  GptqGridInput in_;
  PackedTensor p0_;
  int bits_ = 0, k_ = 0;
  std::vector<float> lut_, fitted_;  // fitted_: the RTN fit decoded (exact positions' stored values)
  std::vector<uint8_t> exact_, idx_;
};

// ---- fgmp ---------------------------------------------------------------------------------
class FgmpGrid final : public GptqGrid {
 public:
  FgmpGrid(const GptqGridInput& in, const FgmpQuantizer& q)
      : in_(in),
        p0_(in.fgmp_fp8_blocks >= 0 ? q.encode_count(in.name, in.w, in.fisher, in.rows, in.cols, in.fgmp_fp8_blocks)
                                    : q.encode_weighted(in.name, in.w, in.fisher, in.rows, in.cols)),
        nb_((in.cols + kFgmpBlockSize - 1) / kFgmpBlockSize),
        q_(static_cast<std::size_t>(in.rows * in.cols)) {
    const uint8_t* map = p0_.part("weight_block_map").bytes.data();
    const uint8_t* sc = p0_.part("weight_fp4_scale").bytes.data();
    s2_ = load_f32_le(p0_.part("weight_fp4_scale_2").bytes.data());
    s8_ = load_f32_le(p0_.part("weight_fp8_scale").bytes.data());
    const int64_t mb = (nb_ + 7) / 8;
    is_fp8_.resize(static_cast<std::size_t>(in.rows * nb_));
    sb_.resize(is_fp8_.size());
    int64_t i4 = 0;
    for (int64_t r = 0; r < in.rows; ++r)
      for (int64_t b = 0; b < nb_; ++b) {
        const std::size_t k = static_cast<std::size_t>(r * nb_ + b);
        is_fp8_[k] = (map[r * mb + b / 8] >> (b % 8)) & 1;
        if (!is_fp8_[k]) sb_[k] = sc[i4++];
      }
  }
  double quantize(int64_t r, int64_t c, double w) override {
    const std::size_t k = static_cast<std::size_t>(r * nb_ + c / kFgmpBlockSize);
    const double v = is_fp8_[k] ? static_cast<double>(e4m3_to_fp32(fp32_to_e4m3(static_cast<float>(w) / s8_)) * s8_)
                                : nvfp4_value(w, sb_[k], s2_);
    q_[static_cast<std::size_t>(r * in_.cols + c)] = static_cast<float>(v);
    return v;
  }
  PackedTensor encode() override {  // same map and scales, the codes of the compensated values
    PackedTensor out = p0_;
    uint8_t* fp4 = out.part_mut("weight_fp4").bytes.data();
    uint8_t* fp8 = out.part_mut("weight_fp8").bytes.data();
    int64_t i4 = 0, i8 = 0;
    for (int64_t r = 0; r < in_.rows; ++r)
      for (int64_t b = 0; b < nb_; ++b) {
        const std::size_t k = static_cast<std::size_t>(r * nb_ + b);
        const int64_t c0 = b * kFgmpBlockSize, c1 = std::min(in_.cols, c0 + kFgmpBlockSize);
        const float* v = q_.data() + r * in_.cols + c0;
        if (is_fp8_[k]) {
          for (int64_t c = c0; c < c1; ++c) fp8[i8 * kFgmpBlockSize + (c - c0)] = fp32_to_e4m3(v[c - c0] / s8_);
          ++i8;
        } else {
          nvfp4_encode_block(v, c1 - c0, e4m3_to_fp32(sb_[k]) * s2_, fp4 + i4 * (kFgmpBlockSize / 2));
          ++i4;
        }
      }
    return out;
  }

 private:
  GptqGridInput in_;
  PackedTensor p0_;
  int64_t nb_;
  float s2_ = 0, s8_ = 1;
  std::vector<uint8_t> is_fp8_, sb_;
  std::vector<float> q_;
};

}  // namespace

std::unique_ptr<GptqGrid> make_gptq_grid(const Quantizer& q, const GptqGridInput& in) {
  switch (q.info().layout) {
    case FormatId::kFp8: return std::make_unique<Fp8Grid>(in);
    case FormatId::kNvfp4: return std::make_unique<Nvfp4Grid>(in);
    case FormatId::kInt: return std::make_unique<IntGrid>(in, static_cast<const IntGroupQuantizer&>(q));
    case FormatId::kSqueezeLLM: return std::make_unique<LutGrid>(in, q);
    case FormatId::kFgmp: return std::make_unique<FgmpGrid>(in, static_cast<const FgmpQuantizer&>(q));
  }
  throw Error(ExitCode::kUsage, std::string(q.info().name) + ": no GPTQ grid");
}

}  // namespace mpq
