// SqueezeLLM LUT GEMV / GEMM (kernels/cpu/lut_gemv.h) and FGMP GEMV / GEMM
// (kernels/cpu/fgmp_gemv.h, 30% FP8 blocks) against dense products on the same
// shapes: fp32 weights (Eigen RowMajor MatrixXf * VectorXf, row blocks split over OpenMP
// threads), fp16 weights (F16C decode on the fly, same split: mpq::bench::f16_gemm, the
// baseline of mpq-bench), and for a window of T = 512
// tokens the dense fp32 GEMM Y = X W^T (Eigen, OpenBLAS when built with it). Counter
// weight_gbps = weight bytes read per second (packed bytes, LUTs and CSR for the LUT
// kernel). Every GEMV benchmark rotates over several copies of its weights (at least
// max(512 MB, 3x the last-level cache) in all, at most 64 copies) so each iteration reads from
// DRAM, not from the last-level cache; counter llc_resident = 1 marks a rotation of under
// twice the LLC (sysconf _SC_LEVEL3_CACHE_SIZE), whose figure is then partly a cache figure;
// MPQ_BENCH_HOT=1 keeps one copy, so the rows:128 cases (at most 1 MB) and the LUT / NVFP4
// rows:512 ones (1.1-1.2 MB, less per-call overhead) run from L2 and measure what the
// kernel computes per second when memory is not the limit.
// Bandwidth references measured in the same run, all OpenMP threads, 1 GiB working sets:
// BM_ReadBandwidth (explicit 8-accumulator vector sum, each thread its slice as 1 or 8
// concurrent streams) and
// BM_MemcpyBandwidth (each thread memcpy's its slice, mpq::bench::parallel_memcpy;
// copy_gbps = bytes copied per second, stream_gbps = read + write bytes per second as
// STREAM's Copy counts them).
//
//   build/bench/bench_lut_gemv --benchmark_counters_tabular=true
//       (add --benchmark_repetitions=3 --benchmark_report_aggregates_only=true for spread)
#include <benchmark/benchmark.h>
#include <immintrin.h>  // AVX2 for the read-bandwidth reference (under a target attribute)
#include <omp.h>
#include <unistd.h>  // sysconf (_SC_LEVEL3_CACHE_SIZE)

#include <Eigen/Dense>
#include <algorithm>  // clamp, max
#include <cstdint>
#include <cstdlib>  // getenv (MPQ_BENCH_HOT)
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/dense_gemv.h"
#include "kernels/cpu/fgmp_gemv.h"
#include "kernels/cpu/int_gemv.h"
#include "kernels/cpu/lut_gemv.h"
#include "kernels/cpu/lut_vnni.h"
#include "kernels/cpu/nvfp4_gemv.h"
#include "lib/bench/dense_cpu.h"
#include "lib/numeric/codecs.h"

namespace {

constexpr int64_t kMinRotateBytes = int64_t{512} << 20;
constexpr int kMaxCopies = 64;
constexpr double kSparsePct = 0.45;  // SqueezeLLM's default outlier share

// Bytes of this host's last-level cache (glibc's sysconf(_SC_LEVEL3_CACHE_SIZE); hosts of one
// machine type here have had 105 MB, 260 MB and 480 MB), 0 when the C library does not say.
int64_t llc_bytes() {
  static const int64_t bytes = std::max<int64_t>(0, sysconf(_SC_LEVEL3_CACHE_SIZE));
  return bytes;
}

// Copies of a `bytes`-sized layer to rotate over: enough for max(512 MB, 3 x LLC), 2..64;
// 1 under MPQ_BENCH_HOT=1.
int copies_for(int64_t bytes) {
  if (const char* hot = std::getenv("MPQ_BENCH_HOT"); hot && std::string(hot) == "1") return 1;
  const int64_t target = std::max(kMinRotateBytes, 3 * llc_bytes());
  const int64_t n = (target + bytes - 1) / bytes;
  return static_cast<int>(std::clamp<int64_t>(n, 2, kMaxCopies));
}

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::mt19937 g(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = u(g);
  return v;
}

// One random packed layer; copies share LUTs/CSR contents but not memory.
struct LutLayer {
  int bits;
  int64_t rows, cols;
  std::vector<uint8_t> qweight;
  std::vector<uint16_t> lut;
  std::vector<int32_t> rowptr;
  std::vector<int16_t> col;
  std::vector<uint16_t> val;

  mpq::LutWeightView view() const {
    return {bits, rows, cols, qweight.data(), lut.data(), rowptr.data(), col.data(), true,
            val.data()};
  }
  int64_t bytes() const {
    return static_cast<int64_t>(qweight.size() + 2 * lut.size() + 4 * rowptr.size() +
                                2 * col.size() + 2 * val.size());
  }
};

LutLayer make_lut_layer(int bits, int64_t rows, int64_t cols) {
  LutLayer L{bits, rows, cols, {}, {}, {}, {}, {}};
  std::mt19937_64 g(bits * 1000 + rows);
  L.qweight.resize(static_cast<std::size_t>(rows * ((cols + 7) / 8 * bits)));
  for (uint8_t& b : L.qweight) b = static_cast<uint8_t>(g());
  const int k = 1 << bits;
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < k; ++i) L.lut.push_back(mpq::fp32_to_fp16(0.01f * (i - k / 2)));
  const int64_t per_row = static_cast<int64_t>(kSparsePct / 100.0 * cols + 0.5);
  L.rowptr.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t e = 0; e < per_row; ++e) {
      L.col.push_back(static_cast<int16_t>(e * (cols / per_row) + static_cast<int64_t>(g() % 8)));
      L.val.push_back(mpq::fp32_to_fp16(0.1f));
    }
    L.rowptr.push_back(static_cast<int32_t>(L.col.size()));
  }
  return L;
}

void set_counters(benchmark::State& state, int64_t weight_bytes, int copies) {
  state.counters["weight_gbps"] = benchmark::Counter(
      static_cast<double>(weight_bytes), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
  state.counters["weight_MB"] = static_cast<double>(weight_bytes) / 1e6;
  state.counters["copies"] = copies;
  // 1: the rotation is under twice the LLC, so part of every pass may hit the cache.
  state.counters["llc_resident"] = llc_bytes() > 0 && weight_bytes * copies < 2 * llc_bytes() ? 1 : 0;
  state.counters["threads"] = omp_get_max_threads();
}

// The rotation every GEMV benchmark here runs: copies_for(bytes) copies of `first` in
// separate memory, x = random_floats(cols, x_seed), each iteration gemv(copy, x, y) on the
// next copy; counters from `bytes` (the weight bytes one call reads).
template <typename Layer, typename Gemv>
void run_rotated_gemv(benchmark::State& state, const Layer& first, int64_t bytes, int64_t rows, int64_t cols,
                      uint64_t x_seed, Gemv gemv) {
  const int copies = copies_for(bytes);
  const std::vector<Layer> layers(static_cast<std::size_t>(copies), first);
  const std::vector<float> x = random_floats(cols, x_seed);
  std::vector<float> y(static_cast<std::size_t>(rows));
  std::size_t i = 0;
  for (auto _ : state) {
    gemv(layers[i], x.data(), y.data());
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % layers.size();
  }
  set_counters(state, bytes, copies);
}

using GemvFn = void (*)(const mpq::LutWeightView&, const float*, float*);

// Args: bits, rows (cols = 4096); fn = the path measured.
void lut_gemv_bench(benchmark::State& state, GemvFn fn, const char* path) {
  const int bits = static_cast<int>(state.range(0));
  const int64_t rows = state.range(1), cols = 4096;
  const LutLayer first = make_lut_layer(bits, rows, cols);
  run_rotated_gemv(state, first, first.bytes(), rows, cols, 1,
                   [fn](const LutLayer& l, const float* x, float* y) { fn(l.view(), x, y); });
  state.SetLabel(path);
}

// The path lut_gemv dispatches to on this CPU.
void BM_LutGemv(benchmark::State& state) {
  lut_gemv_bench(state, mpq::lut_gemv, mpq::lut_cpu_path());
}
BENCHMARK(BM_LutGemv)
    ->ArgNames({"bits", "rows"})
    ->ArgsProduct({{3, 4}, {4096, 11008}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Args: bits, rows (cols = 4096): the runtime's decode kernel, lut_q8_gemv on the repacked
// layout (kernels/cpu/lut_vnni.h; int8 activations), rotated like the other GEMVs.
void BM_LutQ8Gemv(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const int64_t rows = state.range(1), cols = 4096;
  const mpq::LutPacked first = mpq::lut_repack(make_lut_layer(bits, rows, cols).view());
  run_rotated_gemv(state, first, static_cast<int64_t>(first.bytes()), rows, cols, 1,
                   [](const mpq::LutPacked& l, const float* x, float* y) { mpq::lut_q8_gemv(l, x, y); });
}
BENCHMARK(BM_LutQ8Gemv)
    ->ArgNames({"bits", "rows"})
    ->ArgsProduct({{3, 4}, {128, 512, 4096, 11008}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// The AVX2 path, for comparison on an AVX-512 machine.
void BM_LutGemvAvx2(benchmark::State& state) {
  if (!mpq::lut_cpu_has_avx2()) {
    state.SkipWithError("no AVX2");
    return;
  }
  lut_gemv_bench(state, mpq::lut_gemv_avx2, "avx2");
}
BENCHMARK(BM_LutGemvAvx2)
    ->ArgNames({"bits", "rows"})
    ->ArgsProduct({{3, 4}, {4096, 11008}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Args: rows (cols = 4096). Dense fp32, Eigen row-major GEMV per thread row block.
void BM_DenseF32Gemv(benchmark::State& state) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t rows = state.range(0), cols = 4096;
  const int64_t bytes = rows * cols * 4;
  const int copies = copies_for(bytes);
  std::vector<Mat> ws(static_cast<std::size_t>(copies));
  ws[0] = Mat::Random(rows, cols) * 0.05f;
  for (int c = 1; c < copies; ++c) ws[static_cast<std::size_t>(c)] = ws[0];
  const Eigen::VectorXf x = Eigen::VectorXf::Random(cols);
  Eigen::VectorXf y(rows);
  std::size_t i = 0;
  for (auto _ : state) {
    const Mat& W = ws[i];
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
      y.segment(r0, r1 - r0).noalias() = W.middleRows(r0, r1 - r0) * x;
    }
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % ws.size();
  }
  set_counters(state, bytes, copies);
}
BENCHMARK(BM_DenseF32Gemv)->ArgName("rows")->Arg(4096)->Arg(11008)->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Args: rows (cols = 4096). Dense fp16 weights, F16C decode on the fly.
void BM_DenseF16Gemv(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = 4096;
  const int64_t bytes = rows * cols * 2;
  const int copies = copies_for(bytes);
  std::vector<std::vector<uint16_t>> ws(static_cast<std::size_t>(copies));
  {
    const std::vector<float> w = random_floats(rows * cols, 2);
    ws[0].resize(w.size());
    for (std::size_t j = 0; j < w.size(); ++j) ws[0][j] = mpq::fp32_to_fp16(w[j]);
  }
  for (int c = 1; c < copies; ++c) ws[static_cast<std::size_t>(c)] = ws[0];
  const std::vector<float> x = random_floats(cols, 3);
  std::vector<float> y(static_cast<std::size_t>(rows));
  std::size_t i = 0;
  for (auto _ : state) {
    mpq::bench::f16_gemm(ws[i].data(), x.data(), 1, rows, cols, y.data());
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % ws.size();
  }
  set_counters(state, bytes, copies);
  state.SetLabel(mpq::bench::f16_gemm_has_f16c() ? "f16c" : "scalar");
}
BENCHMARK(BM_DenseF16Gemv)->ArgName("rows")->Arg(4096)->Arg(11008)->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// ---------------------------------------------------------------- window of T tokens --

constexpr int64_t kWindow = 512;

void set_gemm_counters(benchmark::State& state, int64_t rows, int64_t cols) {
  state.counters["gflops"] = benchmark::Counter(
      2.0 * static_cast<double>(kWindow * rows * cols),
      benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["tokens_per_s"] = benchmark::Counter(
      static_cast<double>(kWindow), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = omp_get_max_threads();
}

// Args: bits, rows (cols = 4096, T = 512): lut_gemm, as mpq-eval runs a window.
void BM_LutGemm(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0));
  const int64_t rows = state.range(1), cols = 4096;
  const LutLayer L = make_lut_layer(bits, rows, cols);
  const std::vector<float> X = random_floats(kWindow * cols, 5);
  std::vector<float> Y(static_cast<std::size_t>(kWindow * rows));
  for (auto _ : state) {
    mpq::lut_gemm(L.view(), X.data(), kWindow, Y.data());
    benchmark::DoNotOptimize(Y.data());
  }
  set_gemm_counters(state, rows, cols);
  state.SetLabel(mpq::lut_cpu_path());
}
BENCHMARK(BM_LutGemm)
    ->ArgNames({"bits", "rows"})
    ->ArgsProduct({{3, 4}, {4096}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: rows (cols = 4096, T = 512): dense fp32 Y = X W^T, Eigen (OpenBLAS when built with
// it, its own threads).
void BM_DenseF32Gemm(benchmark::State& state) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t rows = state.range(0), cols = 4096;
  const Mat W = Mat::Random(rows, cols) * 0.05f;
  const Mat X = Mat::Random(kWindow, cols);
  Mat Y(kWindow, rows);
  for (auto _ : state) {
    Y.noalias() = X * W.transpose();
    benchmark::DoNotOptimize(Y.data());
  }
  set_gemm_counters(state, rows, cols);
}
BENCHMARK(BM_DenseF32Gemm)->ArgName("rows")->Arg(4096)->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: kind (0 fp8, 1 bf16, 2 fp8 on bf16 activations: dense_gemv_fp8_bf16), rows (cols = 4096): the runtime's stored-format GEMV
// (kernels/cpu/dense_gemv.h, the path cpu_isa() picks), rotated like the other GEMVs.
void BM_StoredGemv(benchmark::State& state) {
  const bool fp8 = state.range(0) != 1, bf16act = state.range(0) == 2;
  if (bf16act && !mpq::dense_gemv_fp8_bf16_available()) {
    state.SkipWithError("no AVX512_BF16");
    return;
  }
  const int64_t rows = state.range(1), cols = 4096;
  const int64_t bytes = rows * cols * (fp8 ? 1 : 2);
  mpq::HugeVector<uint8_t> first(static_cast<std::size_t>(bytes));  // as the runtime holds fp8
  {
    const std::vector<float> w = random_floats(rows * cols, 4);
    for (std::size_t j = 0; j < w.size(); ++j) {
      if (fp8) {
        first[j] = mpq::fp32_to_e4m3(w[j] * 4000.0f);
      } else {
        const uint16_t b = mpq::fp32_to_bf16(w[j]);
        std::memcpy(&first[2 * j], &b, 2);
      }
    }
  }
  run_rotated_gemv(state, first, bytes, rows, cols, 3, [&](const mpq::HugeVector<uint8_t>& data, const float* x, float* y) {
    mpq::DenseWeightView v;
    v.kind = fp8 ? mpq::DenseKind::kFp8 : mpq::DenseKind::kBf16;
    v.rows = rows, v.cols = cols, v.data = data.data(), v.scale = fp8 ? 2.5e-4f : 1.0f;
    if (bf16act)
      mpq::dense_gemv_fp8_bf16(v, x, y);
    else
      mpq::dense_gemv(v, x, y);
  });
  state.SetLabel(bf16act ? "fp8-bf16act" : (fp8 ? "fp8" : "bf16"));
}
BENCHMARK(BM_StoredGemv)
    ->ArgNames({"kind", "rows"})
    ->ArgsProduct({{0, 1, 2}, {128, 4096, 11008}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Args: rows (cols = 4096): nvfp4_gemv on the repacked layout (random codes, E4M3 block
// scales in [2^-4, 2^2)), rotated like the other GEMVs.
void BM_Nvfp4Gemv(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = 4096, nb = cols / 16;
  std::mt19937_64 g(11);
  std::vector<uint8_t> wq(static_cast<std::size_t>(rows * nb * 8)), ws(static_cast<std::size_t>(rows * nb));
  for (uint8_t& b : wq) b = static_cast<uint8_t>(g());
  for (uint8_t& b : ws) b = static_cast<uint8_t>(0x18 + g() % 0x30);
  mpq::Nvfp4WeightView v{rows, cols, wq.data(), ws.data(), 1e-3f};
  const mpq::Nvfp4Packed first = mpq::nvfp4_repack(v);
  run_rotated_gemv(state, first, static_cast<int64_t>(first.bytes()), rows, cols, 1,
                   [](const mpq::Nvfp4Packed& l, const float* x, float* y) { mpq::nvfp4_gemv(l, x, y); });
}
BENCHMARK(BM_Nvfp4Gemv)->ArgName("rows")->Arg(128)->Arg(512)->Arg(4096)->Arg(11008)->Unit(benchmark::kMicrosecond)->UseRealTime();

// One random int<b>-g<G> layer (kernels/cpu/int_gemv.h layout: LSB-first row bitstreams,
// fp16 scales, U8 zeros), owning its bytes.
struct IntLayer {
  int bits;
  int64_t rows, cols, group;
  mpq::HugeVector<uint8_t> q;  // as the runtime holds qweight
  std::vector<uint8_t> z;
  std::vector<uint16_t> s;
  mpq::IntWeightView view() const {
    mpq::IntWeightView v;
    v.rows = rows, v.cols = cols, v.bits = bits, v.group = group, v.groups = (cols + group - 1) / group;
    v.row_bytes = bits * ((cols + 7) / 8);
    v.qweight = q.data(), v.scales = s.data(), v.zeros = z.data();
    return v;
  }
  int64_t bytes() const { return static_cast<int64_t>(q.size() + z.size() + 2 * s.size()); }
};

IntLayer make_int_layer(int bits, int64_t rows, int64_t cols, int64_t group) {
  IntLayer L{bits, rows, cols, group, {}, {}, {}};
  const int64_t ng = (cols + group - 1) / group;
  std::mt19937_64 g(13);
  L.q.resize(static_cast<std::size_t>(rows * bits * ((cols + 7) / 8)));
  for (uint8_t& b : L.q) b = static_cast<uint8_t>(g());
  L.z.resize(static_cast<std::size_t>(rows * ng));
  for (uint8_t& b : L.z) b = static_cast<uint8_t>(g() % (1u << bits));
  L.s.resize(static_cast<std::size_t>(rows * ng));
  for (uint16_t& h : L.s) h = mpq::fp32_to_fp16(1e-3f * static_cast<float>(1 + g() % 16));
  return L;
}

// Args: kind (0 int8 activations: int_q8_gemv, 1 the fp32 loop: int_gemv), bits, rows (cols =
// 4096, group 128): the runtime's int GEMVs, rotated like the other GEMVs.
void BM_IntGemv(benchmark::State& state) {
  const bool q8 = state.range(0) == 0;
  if (q8 && !mpq::int_q8_gemv_available()) {
    state.SkipWithError("no AVX-512 VNNI/VBMI");
    return;
  }
  const IntLayer first = make_int_layer(static_cast<int>(state.range(1)), state.range(2), 4096, 128);
  run_rotated_gemv(state, first, first.bytes(), first.rows, first.cols, 1, [q8](const IntLayer& l, const float* x, float* y) {
    if (q8)
      mpq::int_q8_gemv(l.view(), x, y);
    else
      mpq::int_gemv(l.view(), x, y);
  });
  state.SetLabel(q8 ? "int8act-avx512vnni" : "fp32");
}
BENCHMARK(BM_IntGemv)
    ->ArgNames({"kind", "bits", "rows"})
    ->ArgsProduct({{0, 1}, {4, 8}, {128, 4096, 11008}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// ---------------------------------------------------------------- FGMP ------------------

// One random FGMP layer (kernels/cpu/fgmp_gemv.h layout): each block FP8 with probability
// `fp8`, random E2M1 codes, E4M3 block scales in [2^-4, 2^2), random finite E4M3 codes.
struct FgmpLayer {
  int64_t rows, cols;
  std::vector<uint8_t> map, fp4_scale;
  mpq::HugeVector<uint8_t> fp4, fp8;  // as the runtime holds them
  std::vector<int32_t> offset;

  mpq::FgmpWeightView view() const {
    mpq::FgmpWeightView v;
    v.rows = rows, v.cols = cols;
    v.block_map = map.data(), v.fp8_row_offset = offset.data();
    v.fp4 = fp4.data(), v.fp4_scale = fp4_scale.data(), v.fp4_scale_2 = 1e-3f;
    v.fp8 = fp8.data(), v.fp8_scale = 1e-4f;
    return v;
  }
  int64_t bytes() const {
    return static_cast<int64_t>(map.size() + fp4.size() + fp4_scale.size() + fp8.size() + 4 * offset.size() + 8);
  }
};

FgmpLayer make_fgmp_layer(int64_t rows, int64_t cols, double fp8) {
  FgmpLayer L{rows, cols, {}, {}, {}, {}, {}};
  std::mt19937_64 g(static_cast<uint64_t>(rows) * 7 + 1);
  std::bernoulli_distribution is8(fp8);
  const int64_t nb = (cols + 15) / 16, mb = (nb + 7) / 8;
  L.map.assign(static_cast<std::size_t>(rows * mb), 0);
  L.offset.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    int32_t n8 = 0;
    for (int64_t b = 0; b < nb; ++b) {
      if (is8(g)) {
        L.map[static_cast<std::size_t>(r * mb + b / 8)] |= static_cast<uint8_t>(1u << (b % 8));
        for (int i = 0; i < 16; ++i) L.fp8.push_back(static_cast<uint8_t>(g() % 0x7E) | static_cast<uint8_t>(g() & 0x80));
        ++n8;
      } else {
        for (int i = 0; i < 8; ++i) L.fp4.push_back(static_cast<uint8_t>(g()));
        L.fp4_scale.push_back(static_cast<uint8_t>(0x18 + g() % 0x30));
      }
    }
    L.offset.push_back(L.offset.back() + n8);
  }
  return L;
}

// Args: rows (cols = 4096): fgmp_gemv at 30% FP8 blocks, rotated like the other GEMVs.
void BM_FgmpGemv(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = 4096;
  const FgmpLayer first = make_fgmp_layer(rows, cols, 0.30);
  run_rotated_gemv(state, first, first.bytes(), rows, cols, 1,
                   [](const FgmpLayer& l, const float* x, float* y) { mpq::fgmp_gemv(l.view(), x, y); });
  state.SetLabel(mpq::fgmp_cpu_has_avx512() ? "avx512" : (mpq::fgmp_cpu_has_avx2() ? "avx2" : "scalar"));
}
BENCHMARK(BM_FgmpGemv)->ArgName("rows")->Arg(128)->Arg(4096)->Arg(11008)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Args: rows (cols = 4096): fgmp_gemv_q8, the single-token fast path (NVFP4 blocks repacked,
// on int8 activations; FP8 blocks in fp32), same layers. weight_gbps counts the stored bytes
// (the format's cost); the product reads the repack's 0.5625 bytes per weight plus the FP8
// part instead of the NVFP4 stream.
struct FgmpQ8Layer {
  FgmpLayer f;
  mpq::Nvfp4Packed p;
};
void BM_FgmpQ8Gemv(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = 4096;
  FgmpQ8Layer first{make_fgmp_layer(rows, cols, 0.30), {}};
  first.p = mpq::fgmp_repack_fp4(first.f.view());
  run_rotated_gemv(state, first, first.f.bytes(), rows, cols, 1,
                   [](const FgmpQ8Layer& l, const float* x, float* y) { mpq::fgmp_gemv_q8(l.f.view(), l.p, x, y); });
}
BENCHMARK(BM_FgmpQ8Gemv)->ArgName("rows")->Arg(128)->Arg(4096)->Arg(11008)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Args: rows (cols = 4096, T = 512): fgmp_gemm, as mpq-eval runs a window.
void BM_FgmpGemm(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = 4096;
  const FgmpLayer L = make_fgmp_layer(rows, cols, 0.30);
  const std::vector<float> X = random_floats(kWindow * cols, 5);
  std::vector<float> Y(static_cast<std::size_t>(kWindow * rows));
  for (auto _ : state) {
    mpq::fgmp_gemm(L.view(), X.data(), kWindow, Y.data());
    benchmark::DoNotOptimize(Y.data());
  }
  set_gemm_counters(state, rows, cols);
}
BENCHMARK(BM_FgmpGemm)->ArgName("rows")->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---------------------------------------------------------------- bandwidth references -

constexpr int64_t kBandwidthBytes = int64_t{1} << 30;

// [j0, j1) of n for thread t of nt: the same split wherever a buffer is touched, so pages
// are first touched by the thread that later reads them.
inline void thread_slice(int64_t n, int64_t* j0, int64_t* j1) {
  const int nt = omp_get_num_threads(), t = omp_get_thread_num();
  *j0 = n * t / nt;
  *j1 = n * (t + 1) / nt;
}

// Arg: streams per thread. Read bandwidth: 1 GiB of floats (10x the 105 MiB L3 of the
// machine in docs/results.md), each OpenMP thread summing its slice.
void BM_ReadBandwidth(benchmark::State& state) {
  const int streams = static_cast<int>(state.range(0));
  const int64_t n = kBandwidthBytes / 4;
  mpq::HugeVector<float> buf(static_cast<std::size_t>(n));  // pages as the runtime's weights
  float* a = buf.data();
#pragma omp parallel
  {
    int64_t j0, j1;
    thread_slice(n, &j0, &j1);
    for (int64_t j = j0; j < j1; ++j) a[j] = static_cast<float>(j & 1023) * 1e-3f;
  }
  for (auto _ : state) {
    float s = 0.0f;
#pragma omp parallel reduction(+ : s)
    {
      int64_t j0, j1;
      thread_slice(n, &j0, &j1);
      s += mpq::bench::read_sum(a + j0, j1 - j0, streams);
    }
    benchmark::DoNotOptimize(s);
  }
  state.counters["read_gbps"] = benchmark::Counter(
      static_cast<double>(kBandwidthBytes), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
  state.counters["threads"] = omp_get_max_threads();
}
BENCHMARK(BM_ReadBandwidth)->ArgName("streams")->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Copy bandwidth: 512 MiB -> 512 MiB, each OpenMP thread memcpy'ing its slice.
void BM_MemcpyBandwidth(benchmark::State& state) {
  const int64_t n = kBandwidthBytes / 2;
  std::unique_ptr<char[]> src(new char[static_cast<std::size_t>(n)]);
  std::unique_ptr<char[]> dst(new char[static_cast<std::size_t>(n)]);
#pragma omp parallel
  {
    int64_t j0, j1;
    thread_slice(n, &j0, &j1);
    std::memset(src.get() + j0, 1, static_cast<std::size_t>(j1 - j0));
    std::memset(dst.get() + j0, 0, static_cast<std::size_t>(j1 - j0));
  }
  for (auto _ : state) {
    mpq::bench::parallel_memcpy(dst.get(), src.get(), static_cast<std::size_t>(n));
    benchmark::DoNotOptimize(dst.get());
    benchmark::ClobberMemory();
  }
  state.counters["copy_gbps"] = benchmark::Counter(
      static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
  state.counters["stream_gbps"] = benchmark::Counter(
      2.0 * static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1000);
  state.counters["threads"] = omp_get_max_threads();
}
BENCHMARK(BM_MemcpyBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

