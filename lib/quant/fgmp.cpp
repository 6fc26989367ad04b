// FGMP encode/decode; the method and byte layout are documented in fgmp.h and
// kernels/cpu/fgmp_gemv.h.
//
// Encoding runs in two steps. Analysis, per block: the NVFP4 candidate (block scale from the
// clip search, codes) and the block's score. Selection: which blocks are FP8 (a count of
// largest scores, or a global threshold). The tensor scales do not depend on the selection,
// so every block's NVFP4 and FP8 forms are known before choosing.
#include "lib/quant/fgmp.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/quant_common.h"

namespace mpq {

using namespace quant_detail;  // lib/quant/quant_common.h

namespace {

constexpr const char* kFormat = "fgmp";
constexpr int64_t kB = kFgmpBlockSize;

int64_t blocks_per_row(int64_t cols) { return (cols + kB - 1) / kB; }

// One block's NVFP4 candidate: its E4M3 block scale and 8 bytes of nibbles.
struct Fp4Block {
  uint8_t scale = 0;
  std::array<uint8_t, kB / 2> codes{};
};

// Decoded NVFP4 element c of a block, computed as decode() does.
float fp4_value(const Fp4Block& b, int64_t c, float s2) {
  const uint8_t code = static_cast<uint8_t>((b.codes[static_cast<std::size_t>(c >> 1)] >> ((c & 1) * 4)) & 0xF);
  return e2m1_to_fp32(code) * e4m3_to_fp32(b.scale) * s2;
}

// The NVFP4 form of the n weights w (sensitivities f, or nullptr for 1) under `clip`.
Fp4Block quantize_fp4(const float* w, const float* f, int64_t n, float s2,
                      FgmpParams::Clipping clip) {
  float bamax = 0.0f;
  for (int64_t c = 0; c < n; ++c) bamax = std::max(bamax, std::fabs(w[c]));
  Fp4Block best;
  best.scale = nvfp4_block_scale(bamax, s2);
  nvfp4_encode_block(w, n, e4m3_to_fp32(best.scale) * s2, best.codes.data());
  if (clip == FgmpParams::Clipping::kNone) return best;
  if (clip == FgmpParams::Clipping::kUnweighted) f = nullptr;
  auto error = [&](const Fp4Block& b) {
    double e = 0.0;
    for (int64_t c = 0; c < n; ++c) {
      const double d = static_cast<double>(w[c]) - static_cast<double>(fp4_value(b, c, s2));
      e += (f ? static_cast<double>(f[c]) : 1.0) * d * d;
    }
    return e;
  };
  double best_err = error(best);
  Fp4Block cand;
  uint8_t last = best.scale;
  for (int k = 1; k < kFgmpClipSteps; ++k) {  // alpha = 1.00 is `best` already
    const float alpha = static_cast<float>(kFgmpClipMax - k * kFgmpClipStep);
    cand.scale = nvfp4_block_scale(alpha * bamax, s2);
    // Neighbouring ratios often round to the same E4M3 scale (3 mantissa bits): same error.
    if (cand.scale == last) continue;
    last = cand.scale;
    nvfp4_encode_block(w, n, e4m3_to_fp32(cand.scale) * s2, cand.codes.data());
    const double e = error(cand);
    if (e < best_err) {
      best_err = e;
      best = cand;
    }
  }
  return best;
}

// Everything encode needs before selection.
struct Analysis {
  float s2 = 0.0f;         // NVFP4 global scale
  float fp8_scale = 1.0f;  // FP8 tensor scale
  std::vector<Fp4Block> fp4;
  std::vector<double> score;
};

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ULL;
  return h;
}

Analysis analyze(const FgmpParams& prm, const std::string& name, const float* w, const float* fisher,
                 int64_t rows, int64_t cols) {
  const float amax = checked_amax(name, w, rows, cols);
  check_sensitivity(name, fisher, rows, cols);
  fgmp_layout(rows, cols, 0);  // the block-count limit, reported under the format's name
  const int64_t nb = blocks_per_row(cols);
  Analysis a;
  a.s2 = nvfp4_scale_2(amax);
  a.fp8_scale = fp8_tensor_scale(amax);
  a.fp4.resize(static_cast<std::size_t>(rows * nb));
  a.score.assign(static_cast<std::size_t>(rows * nb), 0.0);
  const uint64_t name_hash = fnv1a(name);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kB;
      const int64_t n = std::min(cols, c0 + kB) - c0;
      const float* wb = w + r * cols + c0;
      const float* fb = fisher ? fisher + r * cols + c0 : nullptr;
      const std::size_t i = static_cast<std::size_t>(r * nb + b);
      a.fp4[i] = quantize_fp4(wb, fb, n, a.s2, prm.clipping);
      double s = 0.0;
      switch (prm.selection) {
        case FgmpParams::Selection::kFisher:
          for (int64_t c = 0; c < n; ++c) {
            const float q8 = e4m3_to_fp32(fp32_to_e4m3(wb[c] / a.fp8_scale)) * a.fp8_scale;
            const double d = static_cast<double>(fp4_value(a.fp4[i], c, a.s2)) - static_cast<double>(q8);
            s += (fb ? static_cast<double>(fb[c]) : 1.0) * d * d;
          }
          break;
        case FgmpParams::Selection::kRandom: {
          uint64_t st = prm.seed ^ name_hash ^ (static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ULL);
          s = static_cast<double>(splitmix64_next(st) >> 11) * 0x1.0p-53;
          break;
        }
        case FgmpParams::Selection::kAmax: {
          float bamax = 0.0f;
          for (int64_t c = 0; c < n; ++c) bamax = std::max(bamax, std::fabs(wb[c]));
          s = amax > 0.0f ? static_cast<double>(bamax) / static_cast<double>(amax) : 0.0;
          break;
        }
      }
      a.score[i] = s;
    }
  }
  return a;
}

// The packed tensor from an analysis and a per-block FP8 flag.
PackedTensor assemble(const Analysis& a, const float* w, int64_t rows, int64_t cols,
                      const std::vector<uint8_t>& is_fp8) {
  const int64_t nb = blocks_per_row(cols);
  const int64_t n8 = std::count(is_fp8.begin(), is_fp8.end(), uint8_t{1});
  PackedTensor out = packed_from_layout(kFormat, rows, cols, fgmp_layout(rows, cols, n8));
  uint8_t* map = out.parts[0].bytes.data();
  uint8_t* off = out.parts[1].bytes.data();
  uint8_t* fp4 = out.parts[2].bytes.data();
  uint8_t* fp4_scale = out.parts[3].bytes.data();
  store_f32_le(a.s2, out.parts[4].bytes.data());
  uint8_t* fp8 = out.parts[5].bytes.data();
  store_f32_le(a.fp8_scale, out.parts[6].bytes.data());
  const int64_t mb = out.parts[0].shape[1];
  int64_t i4 = 0, i8 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t o = static_cast<int32_t>(i8);
    std::memcpy(off + 4 * r, &o, 4);  // little-endian host (as the kernels assume)
    for (int64_t b = 0; b < nb; ++b) {
      const std::size_t i = static_cast<std::size_t>(r * nb + b);
      const int64_t c0 = b * kB;
      const int64_t c1 = std::min(cols, c0 + kB);
      if (is_fp8[i]) {
        map[r * mb + b / 8] |= static_cast<uint8_t>(1u << (b % 8));
        for (int64_t c = c0; c < c1; ++c) fp8[i8 * kB + (c - c0)] = fp32_to_e4m3(w[r * cols + c] / a.fp8_scale);
        ++i8;
      } else {
        fp4_scale[i4] = a.fp4[i].scale;
        std::memcpy(fp4 + i4 * (kB / 2), a.fp4[i].codes.data(), kB / 2);
        ++i4;
      }
    }
  }
  const int32_t o = static_cast<int32_t>(i8);
  std::memcpy(off + 4 * rows, &o, 4);
  return out;
}

}  // namespace

const char* fgmp_selection_name(FgmpParams::Selection s) {
  switch (s) {
    case FgmpParams::Selection::kFisher: return "fisher";
    case FgmpParams::Selection::kRandom: return "random";
    case FgmpParams::Selection::kAmax: return "amax";
  }
  return "?";
}

FgmpParams::Selection parse_fgmp_selection(const std::string& name) {
  for (auto s : {FgmpParams::Selection::kFisher, FgmpParams::Selection::kRandom, FgmpParams::Selection::kAmax})
    if (name == fgmp_selection_name(s)) return s;
  throw Error(ExitCode::kUsage, "fgmp selection '" + name + "' (known: fisher, random, amax)");
}

const char* fgmp_clipping_name(FgmpParams::Clipping c) {
  switch (c) {
    case FgmpParams::Clipping::kWeighted: return "weighted";
    case FgmpParams::Clipping::kUnweighted: return "unweighted";
    case FgmpParams::Clipping::kNone: return "none";
  }
  return "?";
}

FgmpParams::Clipping parse_fgmp_clipping(const std::string& name) {
  for (auto c : {FgmpParams::Clipping::kWeighted, FgmpParams::Clipping::kUnweighted, FgmpParams::Clipping::kNone})
    if (name == fgmp_clipping_name(c)) return c;
  throw Error(ExitCode::kUsage, "fgmp clipping '" + name + "' (known: weighted, unweighted, none)");
}

std::vector<PackedPart> fgmp_layout(int64_t rows, int64_t cols, int64_t n_fp8) {
  check_shape(kFormat, rows, cols);
  const int64_t nb = blocks_per_row(cols);
  const int64_t total = rows * nb;
  if (total > INT32_MAX)
    throw Error(ExitCode::kInput, std::string(kFormat) + ": invalid shape [" + std::to_string(rows) + ", " +
                                      std::to_string(cols) + "]: " + std::to_string(total) +
                                      " blocks exceed the I32 row offsets");
  if (n_fp8 < 0 || n_fp8 > total)
    throw Error(ExitCode::kInput, std::string(kFormat) + ": " + std::to_string(n_fp8) +
                                      " FP8 blocks outside [0, " + std::to_string(total) + "]");
  const int64_t n4 = total - n_fp8;
  return {{"weight_block_map", DType::U8, {rows, (nb + 7) / 8}, {}},
          {"weight_fp8_row_offset", DType::I32, {rows + 1}, {}},
          {"weight_fp4", DType::U8, {n4, kB / 2}, {}},
          {"weight_fp4_scale", DType::F8_E4M3, {n4}, {}},
          {"weight_fp4_scale_2", DType::F32, {}, {}},
          {"weight_fp8", DType::F8_E4M3, {n_fp8, kB}, {}},
          {"weight_fp8_scale", DType::F32, {}, {}}};
}

std::size_t fgmp_bytes(int64_t rows, int64_t cols, int64_t n_fp8) {
  return layout_bytes(fgmp_layout(rows, cols, n_fp8));
}

double FgmpSelection::fraction() const {
  return blocks_total > 0 ? static_cast<double>(fp8_total) / static_cast<double>(blocks_total) : 0.0;
}

namespace {

// Order-preserving map of a non-NaN double to uint64 (a < b <=> key(a) < key(b)); -0 is
// mapped like +0, as the two compare equal.
uint64_t order_key(double d) {
  if (d == 0.0) d = 0.0;
  uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return (b >> 63) ? ~b : (b | (uint64_t{1} << 63));
}

double from_order_key(uint64_t k) {
  const uint64_t b = (k >> 63) ? (k & ~(uint64_t{1} << 63)) : ~k;
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

// The in-memory scores of fgmp_select_global(vector).
class VectorScores final : public FgmpScoreSource {
 public:
  explicit VectorScores(const std::vector<FgmpTensorScores>& t) : t_(t) {}
  std::size_t count() const override { return t_.size(); }
  const FgmpTensorScores& tensor(std::size_t i) const override { return t_[i]; }
  void scan(const ScanFn& fn) const override {
    for (std::size_t i = 0; i < t_.size(); ++i) fn(i, t_[i].scores.data(), t_[i].scores.size());
  }

 private:
  const std::vector<FgmpTensorScores>& t_;
};

// The k-th largest score (1 <= k <= count), exactly, by a four-level radix select over
// order_key() (16 bits a level): four scans of the source, 512 KiB of histogram, however
// many scores there are.
double kth_largest(const FgmpScoreSource& src, int64_t k) {
  constexpr int kLevels = 4;
  constexpr int kShift[kLevels] = {48, 32, 16, 0};
  constexpr int kBits[kLevels] = {16, 16, 16, 16};
  uint64_t prefix = 0;  // the key bits fixed so far (above kShift[level] + kBits[level])
  int64_t want = k;     // rank still to find among the keys that match the prefix
  std::vector<uint64_t> hist;
  for (int level = 0; level < kLevels; ++level) {
    const int shift = kShift[level], bits = kBits[level];
    const int above = shift + bits;  // bits [above, 64) must equal prefix's
    hist.assign(std::size_t{1} << bits, 0);
    src.scan([&](std::size_t, const double* s, std::size_t n) {
      for (std::size_t i = 0; i < n; ++i) {
        MPQ_ASSERT(!std::isnan(s[i]));
        const uint64_t key = order_key(s[i]);
        if (above < 64 && (key >> above) != (prefix >> above)) continue;
        ++hist[static_cast<std::size_t>((key >> shift) & ((uint64_t{1} << bits) - 1))];
      }
    });
    std::size_t bin = hist.size();
    while (bin-- > 0) {  // from the largest keys down
      if (static_cast<int64_t>(hist[bin]) >= want) break;
      want -= static_cast<int64_t>(hist[bin]);
    }
    MPQ_ASSERT(bin < hist.size());
    prefix |= static_cast<uint64_t>(bin) << shift;
  }
  return from_order_key(prefix);
}

}  // namespace

FgmpSelection fgmp_select_global(const std::vector<FgmpTensorScores>& tensors, double fp8_fraction,
                                 double target_bpw) {
  return fgmp_select_global(VectorScores(tensors), fp8_fraction, target_bpw);
}

FgmpSelection fgmp_select_global(const FgmpScoreSource& src, double fp8_fraction, double target_bpw) {
  FgmpSelection sel;
  std::size_t bytes0 = 0;  // every tensor with 0 FP8 blocks
  int64_t params = 0;
  for (std::size_t i = 0; i < src.count(); ++i) {
    const FgmpTensorScores& t = src.tensor(i);
    sel.blocks_total += t.rows * blocks_per_row(t.cols);
    bytes0 += fgmp_bytes(t.rows, t.cols, 0);
    params += t.rows * t.cols;
  }
  int64_t k = 0;
  if (target_bpw > 0.0) {
    const std::size_t delta = fgmp_bytes(1, kB, 1) - fgmp_bytes(1, kB, 0);  // 16 - 9 bytes
    auto bpw = [&](int64_t n8) {  // as PackReport::quantized_bpw() counts
      return 8.0 * static_cast<double>(bytes0 + static_cast<std::size_t>(n8) * delta) / static_cast<double>(params);
    };
    if (params == 0 || bpw(0) > target_bpw)
      throw Error(ExitCode::kUsage, "--target-bpw " + std::to_string(target_bpw) +
                                        " is below fgmp's size with 0% FP8 blocks (" +
                                        std::to_string(params ? bpw(0) : 0.0) + " bpw over the quantized linears)");
    const double room = (target_bpw * static_cast<double>(params) / 8.0 - static_cast<double>(bytes0)) /
                        static_cast<double>(delta);
    k = std::clamp<int64_t>(static_cast<int64_t>(std::floor(room)), 0, sel.blocks_total);
    while (k > 0 && bpw(k) > target_bpw) --k;  // the floating-point estimate, made exact
    while (k < sel.blocks_total && bpw(k + 1) <= target_bpw) ++k;
  } else {
    if (!(fp8_fraction >= 0.0 && fp8_fraction <= 1.0))
      throw Error(ExitCode::kUsage, "fgmp: fp8 fraction " + std::to_string(fp8_fraction) + " outside [0, 1]");
    k = std::llround(fp8_fraction * static_cast<double>(sel.blocks_total));
  }
  sel.fp8_total = k;
  for (std::size_t i = 0; i < src.count(); ++i) sel.fp8_blocks[src.tensor(i).name] = 0;
  if (k == 0) return sel;
  // The k-th largest score; above it everything is taken, at it the first ties in order.
  const double th = kth_largest(src, k);
  sel.score_threshold = th;
  std::vector<int64_t> above(src.count(), 0), at(src.count(), 0), seen(src.count(), 0);
  src.scan([&](std::size_t t, const double* s, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      above[t] += s[i] > th;
      at[t] += s[i] == th;
    }
    seen[t] += static_cast<int64_t>(n);
  });
  for (std::size_t t = 0; t < src.count(); ++t)
    MPQ_ASSERT(seen[t] == src.tensor(t).rows * blocks_per_row(src.tensor(t).cols));
  int64_t ties_left = k;
  for (int64_t a : above) ties_left -= a;
  for (std::size_t t = 0; t < src.count(); ++t) {
    const int64_t take = std::min(at[t], ties_left);
    ties_left -= take;
    sel.fp8_blocks[src.tensor(t).name] = above[t] + take;
  }
  return sel;
}

int64_t fgmp_fp8_blocks(const PackedTensor& p) {
  const PackedPart& f8 = p.part("weight_fp8");
  check_shape(kFormat, p.rows, p.cols);
  const int64_t total = p.rows * blocks_per_row(p.cols);
  if (f8.shape.size() != 2 || f8.shape[1] != kB || f8.shape[0] < 0 || f8.shape[0] > total)
    throw Error(ExitCode::kInput, std::string(kFormat) + " tensor [" + std::to_string(p.rows) + " x " +
                                      std::to_string(p.cols) + "]: part 'weight_fp8' has shape " +
                                      shape_str(f8.shape) + ", expected [N8, 16] with 0 <= N8 <= " +
                                      std::to_string(total));
  return f8.shape[0];
}

std::string fgmp_check(const PackedTensor& p, std::string* field) {
  const int64_t rows = p.rows;
  const int64_t nb = blocks_per_row(p.cols);
  const int64_t mb = (nb + 7) / 8;
  const uint8_t* map = p.part("weight_block_map").bytes.data();
  const uint8_t* off = p.part("weight_fp8_row_offset").bytes.data();
  const int64_t n8 = fgmp_fp8_blocks(p);
  auto fail = [&](const char* f, const std::string& msg) {
    *field = f;
    return msg;
  };
  if (load_i32_le(off) != 0)
    return fail("weight_fp8_row_offset", "entry 0 is " + std::to_string(load_i32_le(off)) + ", expected 0");
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o0 = load_i32_le(off + 4 * r), o1 = load_i32_le(off + 4 * (r + 1));
    if (o1 < o0)
      return fail("weight_fp8_row_offset", "decreases at entry " + std::to_string(r + 1) + " (" +
                                               std::to_string(o0) + " -> " + std::to_string(o1) + ")");
    int64_t pop = 0;
    for (int64_t k = 0; k < mb; ++k) {
      const uint8_t byte = map[r * mb + k];
      const int valid = static_cast<int>(std::min<int64_t>(8, nb - 8 * k));
      if (valid < 8 && (byte >> valid) != 0)
        return fail("weight_block_map", "row " + std::to_string(r) + " sets padding bits past block " +
                                            std::to_string(nb - 1));
      pop += __builtin_popcount(byte);
    }
    if (pop != o1 - o0)
      return fail("weight_block_map", "row " + std::to_string(r) + " marks " + std::to_string(pop) +
                                          " FP8 blocks but weight_fp8_row_offset steps by " +
                                          std::to_string(o1 - o0));
  }
  if (load_i32_le(off + 4 * rows) != n8)
    return fail("weight_fp8_row_offset", "last entry " + std::to_string(load_i32_le(off + 4 * rows)) +
                                             " disagrees with weight_fp8's " + std::to_string(n8) + " blocks");
  for (const char* s : {"weight_fp4_scale_2", "weight_fp8_scale"}) {
    const float v = load_f32_le(p.part(s).bytes.data());
    if (!std::isfinite(v) || v < 0.0f) return fail(s, "is " + std::to_string(v) + ", expected a finite value >= 0");
  }
  for (const char* s : {"weight_fp4_scale", "weight_fp8"}) {
    const std::vector<uint8_t>& b = p.part(s).bytes;
    for (std::size_t i = 0; i < b.size(); ++i)
      if ((b[i] & 0x7F) == 0x7F) return fail(s, "holds E4M3 NaN at flat index " + std::to_string(i));
  }
  return "";
}

FgmpQuantizer::FgmpQuantizer(const FgmpParams& params) : params_(params) {
  if (!(params.fp8_fraction >= 0.0 && params.fp8_fraction <= 1.0))
    throw Error(ExitCode::kUsage, "fgmp: fp8 fraction " + std::to_string(params.fp8_fraction) +
                                      " outside [0, 1]");
}

const FormatInfo& FgmpQuantizer::info() const { return format_info(kFormat); }

std::vector<PackedPart> FgmpQuantizer::layout(int64_t rows, int64_t cols) const {
  check_shape(kFormat, rows, cols);
  return fgmp_layout(rows, cols, std::llround(params_.fp8_fraction * static_cast<double>(rows * blocks_per_row(cols))));
}

std::vector<double> FgmpQuantizer::block_scores(const std::string& name, const float* w, const float* fisher,
                                                int64_t rows, int64_t cols) const {
  return analyze(params_, name, w, fisher, rows, cols).score;
}

PackedTensor FgmpQuantizer::encode(const std::string& name, const float* w, int64_t rows, int64_t cols) const {
  return encode_weighted(name, w, nullptr, rows, cols);
}

PackedTensor FgmpQuantizer::encode_weighted(const std::string& name, const float* w, const float* fisher,
                                            int64_t rows, int64_t cols) const {
  if (!std::isfinite(params_.score_threshold)) {
    check_shape(name, rows, cols);
    const double total = static_cast<double>(rows * blocks_per_row(cols));
    return encode_count(name, w, fisher, rows, cols, std::llround(params_.fp8_fraction * total));
  }
  const Analysis a = analyze(params_, name, w, fisher, rows, cols);
  std::vector<uint8_t> is_fp8(a.score.size());
  for (std::size_t i = 0; i < a.score.size(); ++i) is_fp8[i] = a.score[i] >= params_.score_threshold;
  return assemble(a, w, rows, cols, is_fp8);
}

PackedTensor FgmpQuantizer::encode_count(const std::string& name, const float* w, const float* fisher,
                                         int64_t rows, int64_t cols, int64_t n_fp8) const {
  const Analysis a = analyze(params_, name, w, fisher, rows, cols);
  const std::size_t total = a.score.size();
  const std::size_t k = static_cast<std::size_t>(std::clamp<int64_t>(n_fp8, 0, static_cast<int64_t>(total)));
  std::vector<std::size_t> order(total);
  std::iota(order.begin(), order.end(), std::size_t{0});
  // Largest score first; equal scores by lower flat index.
  std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                   [&](std::size_t x, std::size_t y) {
                     return a.score[x] != a.score[y] ? a.score[x] > a.score[y] : x < y;
                   });
  std::vector<uint8_t> is_fp8(total, 0);
  for (std::size_t i = 0; i < k; ++i) is_fp8[order[i]] = 1;
  return assemble(a, w, rows, cols, is_fp8);
}

void FgmpQuantizer::decode(const PackedTensor& p, float* out) const {
  const std::string what = std::string(kFormat) + " tensor [" + std::to_string(p.rows) + " x " +
                           std::to_string(p.cols) + "]";
  if (p.format != kFormat) throw Error(ExitCode::kInput, std::string(kFormat) + " decoder given a '" + p.format + "' tensor");
  check_shape(what, p.rows, p.cols);
  const int64_t n8 = fgmp_fp8_blocks(p);
  for (const PackedPart& e : fgmp_layout(p.rows, p.cols, n8)) checked_part(kFormat, p, e);
  std::string field;
  const std::string msg = fgmp_check(p, &field);
  if (!msg.empty()) throw Error(ExitCode::kInput, what + ": part '" + field + "' " + msg);

  const int64_t rows = p.rows, cols = p.cols, nb = blocks_per_row(cols), mb = (nb + 7) / 8;
  const uint8_t* map = p.part("weight_block_map").bytes.data();
  const uint8_t* off = p.part("weight_fp8_row_offset").bytes.data();
  const uint8_t* fp4 = p.part("weight_fp4").bytes.data();
  const uint8_t* fp4_scale = p.part("weight_fp4_scale").bytes.data();
  const float s2 = load_f32_le(p.part("weight_fp4_scale_2").bytes.data());
  const uint8_t* fp8 = p.part("weight_fp8").bytes.data();
  const float s8 = load_f32_le(p.part("weight_fp8_scale").bytes.data());
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t i8 = load_i32_le(off + 4 * r);
    int64_t i4 = r * nb - i8;
    float* orow = out + r * cols;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kB, c1 = std::min(cols, c0 + kB);
      if ((map[r * mb + b / 8] >> (b % 8)) & 1) {
        for (int64_t c = c0; c < c1; ++c) orow[c] = e4m3_to_fp32(fp8[i8 * kB + (c - c0)]) * s8;
        ++i8;
      } else {
        const float sb = e4m3_to_fp32(fp4_scale[i4]);
        const uint8_t* q = fp4 + i4 * (kB / 2);
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t j = c - c0;
          const uint8_t code = static_cast<uint8_t>((q[j >> 1] >> ((j & 1) * 4)) & 0xF);
          orow[c] = e2m1_to_fp32(code) * sb * s2;  // as nvfp4's decode: one rounding at * s2
        }
        ++i4;
      }
    }
  }
}

FgmpWeightView fgmp_weight_view(const PackedTensor& p) {
  auto scalar = [&](const char* suffix) {
    const PackedPart& part = p.part(suffix);
    if (part.bytes.size() != 4)
      throw Error(ExitCode::kInput, std::string("fgmp tensor: part '") + suffix + "' holds " +
                                        std::to_string(part.bytes.size()) + " bytes, expected one F32");
    return load_f32_le(part.bytes.data());
  };
  FgmpWeightView v;
  v.rows = p.rows;
  v.cols = p.cols;
  v.block_map = p.part("weight_block_map").bytes.data();
  v.fp8_row_offset = reinterpret_cast<const int32_t*>(p.part("weight_fp8_row_offset").bytes.data());
  v.fp4 = p.part("weight_fp4").bytes.data();
  v.fp4_scale = p.part("weight_fp4_scale").bytes.data();
  v.fp4_scale_2 = scalar("weight_fp4_scale_2");
  v.fp8 = p.part("weight_fp8").bytes.data();
  v.fp8_scale = scalar("weight_fp8_scale");
  return v;
}

}  // namespace mpq
