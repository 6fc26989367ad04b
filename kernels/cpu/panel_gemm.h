// The window product of every packed format on bf16 tensor hardware: Y = s * X W^T with W
// decoded, a block of rows at a time, into a bf16 "panel" by the format's decoder, X
// rounded to bf16 once per call, and an AMX (Sapphire Rapids and later) or AVX512_BF16
// (Zen 4, Cooper Lake) microkernel accumulating in fp32.
//
// Panel layout (the VNNI / AMX "B" layout, Intel SDM "TDPBF16PS", in whole tiles): for a
// block of n rows (n a multiple of 16) and kp columns (a multiple of 32, zero-padded past
// cols), bf16(W[r0 + j, c]) is at panel_index(c, j, n):
//   tile (c / 32, j / 16), 1 KiB = 512 bf16, at ((c / 32) * (n / 16) + j / 16) * 512;
//   within it line (c % 32) / 2 (64 bytes: the column pair of 16 rows), then row j % 16,
//   then c % 2.
// One 64-byte line is both an AMX B-tile row and the operand of one vdpbf16ps for 16
// output rows; a tile is contiguous, so tile loads run with a 64-byte stride (a larger
// power-of-two stride puts the 16 rows into one L1 set).
// X is rounded to bf16 once per call into the A-tile layout: element (t, c) at
// ((t / 16) * (kp / 32) + c / 32) * 512 + (t % 16) * 32 + c % 32.
//
// Work split (panel_gemm):
//   Xb = bf16(X), [Tp, kp], Tp = T rounded up to 32, zero-padded  -- once per call
//   row blocks of nb rows (64, 32 when kp > 8192) -- OpenMP static over blocks
//     | decode(r0, nb, kp, panel)                              (the format's decoder)
//     | for tokens t0 in steps of 32, rows j0 in steps of 32:
//     |   AMX: C[2 x 2 tiles of 16 x 16 fp32] += A(Xb[t0.., k..k+32]) * B(panel[k/2.., j0..])
//     |   AVX512_BF16: 8 tokens x 32 rows of fp32 accumulators, vdpbf16ps per column pair
//     |   Y[t, r] = s * C  (valid t < T, r < rows)
// The products and sums are fp32; the only roundings are bf16(X) and, where the format's
// values are not bf16-exact, bf16(W) (round to nearest even).
#pragma once

#include <cstdint>
#include <functional>

namespace mpq {

/// Writes rows [r0, r0 + n) of W (n a multiple of 16; rows >= the tensor's rows as 0) as a
/// bf16 panel of kp columns (layout above) to `panel` (kp * n bf16).
using PanelDecoder = std::function<void(int64_t r0, int64_t n, int64_t kp, uint16_t* panel)>;

/// The microkernels the CPU offers (cpu_isa(): AMX, else AVX512_BF16), or none.
enum class PanelKernel { kNone, kAvx512Bf16, kAmx };

/// The kernel window products use on this CPU: kAmx with AMX; kAvx512Bf16 with AVX512_BF16
/// where vdpbf16ps is fast (CpuFeatures::bf16_dot_fast) or MPQ_CPU_ISA=avx512bf16 forces
/// it; else kNone (the exact fp32 path).
PanelKernel panel_kernel();

/// "amx-bf16", "avx512-bf16" or "none".
const char* panel_kernel_name(PanelKernel k);

/// Y [T, rows] = scale * X [T, cols] W^T with `kernel` (not kNone; the CPU must support it).
/// X and Y fp32 row-major. OpenMP over row blocks when not inside a parallel region.
void panel_gemm(int64_t rows, int64_t cols, const PanelDecoder& decode, float scale, const float* X, int64_t T,
                float* Y, PanelKernel kernel);

/// Fills a panel from fp32 rows: src [n_valid, ld] (ld >= kp; columns [cols, kp) must be 0),
/// rows [n_valid, n) of the panel 0; bf16 round to nearest even. Vector code when the CPU has
/// AVX-512 (identical bytes).
void panel_from_rows(const float* src, int64_t n_valid, int64_t ld, int64_t n, int64_t kp, uint16_t* panel);
void panel_from_rows_scalar(const float* src, int64_t n_valid, int64_t ld, int64_t n, int64_t kp, uint16_t* panel);

/// Columns rounded up to the panel width (a multiple of 32).
inline int64_t panel_cols(int64_t cols) { return (cols + 31) / 32 * 32; }

/// Offset (bf16 elements) of the 64-byte line holding column pair q (columns 2q, 2q + 1) of
/// panel rows j0 .. j0 + 15 (j0 a multiple of 16) in a panel of n rows.
inline int64_t panel_line(int64_t q, int64_t j0, int64_t n) { return ((q / 16) * (n / 16) + j0 / 16) * 512 + (q % 16) * 32; }

/// Offset (bf16 elements) of W[r0 + j, c] in a panel of n rows (layout above).
inline int64_t panel_index(int64_t c, int64_t j, int64_t n) { return panel_line(c / 2, j / 16 * 16, n) + (j % 16) * 2 + c % 2; }

}  // namespace mpq
