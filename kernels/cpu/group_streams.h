// The work split of the row-group GEMV kernels that stream their packed weights once from
// DRAM: each thread reads its static share of the groups as S concurrent sequential streams
// instead of one.
//
// Thread t of n takes groups [t0, t1) = [G t / n, G (t + 1) / n) (OpenMP's static split),
// cuts them into S consecutive parts of h = ceil((t1 - t0) / S) groups, and at step i runs the
// groups t0 + i, t0 + h + i, ..., t0 + (S - 1) h + i (those below t1) together, so that its
// loads walk S address streams at once. On this project's 2-vCPU Xeon one sequential stream
// per thread does not reach the read bandwidth (BM_ReadBandwidth streams:1 27.0, streams:8
// 32.2 GB/s); the row-major kernels (dense bf16 / fp8, int) already read 4 or more rows at a
// time, the repacked ones read one group after another. Running the groups of one stream
// after another's instead (no lockstep) was slower: nvfp4 22-23.6 against 25.7-26.8 GB/s.
// Every group is run exactly once, by
// one thread, with the same arithmetic as in a one-stream walk, so results do not depend on S
// or on the thread count.
#pragma once

#include <omp.h>

#include <cstdint>
#include <type_traits>  // std::integral_constant

namespace mpq {

/// Streams per thread of the kernels that use for_group_streams (the AVX-512 and AVX2 paths
/// of lut_q8_gemv and nvfp4_gemv). GB/s at 11008 x 4096, 2 threads, on the 480 MB-L3 host, three passes, for
/// S = 1 / 2 / 3 / 4: nvfp4 23.6-24.6 / 26.8-27.2 / 26.9-28.8 / 28.2-29.2; squeezellm 4-bit
/// 17.0-20.3 / 26.0-27.1 / 27.1-28.1 / 27.9-28.2; squeezellm 3-bit 20.5-21.8 / 21.9-26.3 /
/// 26.6-27.5 / 25.7-27.0 (docs/results.md section 11, "Several weight streams per thread").
constexpr int kWeightStreams = 3;

/// Runs body(const int64_t* g, int n) over groups [0, groups): g[0..n) (1 <= n <= S) are
/// groups to run together, in the order above. par: split over the OpenMP threads (a
/// parallel region of the default size), else one thread walks all groups as S streams.
/// S >= 1 (compile-time).
template <int S, typename Body>
void for_group_streams(int64_t groups, bool par, Body body) {
  static_assert(S >= 1, "at least one stream");
#pragma omp parallel if (par)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t t0 = groups * t / nt, t1 = groups * (t + 1) / nt, h = (t1 - t0 + S - 1) / S;
    for (int64_t i = 0; i < h; ++i) {
      int64_t g[S];
      int n = 0;
      for (int s = 0; s < S; ++s)
        if (t0 + s * h + i < t1) g[n++] = t0 + s * h + i;
      body(static_cast<const int64_t*>(g), n);
    }
  }
}

/// for_group_streams with the lockstep kernel and the per-group epilogue every user of it
/// has: run(std::integral_constant<int, N>, g, out) computes N groups g[0..N) into
/// out [N * Stride] floats (N = S on a full step, N = 1 for each group of a partial one),
/// then done(g[k], out + Stride * k) once per group, in order.
template <int S, int Stride, typename Run, typename Done>
void run_group_streams(int64_t groups, bool par, Run run, Done done) {
  for_group_streams<S>(groups, par, [&](const int64_t* g, int n) {
    alignas(64) float out[S * Stride];
    if (n == S)
      run(std::integral_constant<int, S>{}, g, out);
    else
      for (int k = 0; k < n; ++k) run(std::integral_constant<int, 1>{}, g + k, out + Stride * k);
    for (int k = 0; k < n; ++k) done(g[k], out + Stride * k);
  });
}

}  // namespace mpq
