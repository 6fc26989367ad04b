// What the CPU (and the OS) let mpq's kernels use, detected once at run time, and the cap a
// user or a test puts on it (MPQ_CPU_ISA).
//
// Every vector path in kernels/cpu is compiled with a function target attribute (the library
// itself is built -march=native -mno-avx512f, see CMakeLists.txt) and only called when the
// feature below is present, so a portable build runs everywhere and uses what it finds.
// Detection: CPUID leaves 1 and 7 for the instruction sets, XGETBV for the register state
// the OS saves (YMM for AVX2; opmask/ZMM for AVX-512; XTILECFG/XTILEDATA for AMX), and for
// AMX the Linux permission request arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
// (Linux kernel docs, "Using XSTATE features in user space applications"), made once.
#pragma once

namespace mpq {

/// Instruction-set levels, lowest first. A level includes the ones below it.
enum class CpuIsa {
  kScalar = 0,
  kAvx2 = 1,        ///< AVX2 + FMA + F16C
  kAvx512 = 2,      ///< + AVX-512 F, BW, VL, VBMI and VNNI (Ice Lake, Zen 4 and later)
  kAvx512Bf16 = 3,  ///< + AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4)
  kAmx = 4,         ///< + AMX-TILE and AMX-BF16 with the OS permission (Sapphire Rapids and later)
};

/// Features of this CPU (each also checks the OS saves the registers it needs).
struct CpuFeatures {
  bool avx2 = false;         ///< AVX2, FMA, F16C, YMM state enabled
  bool avx512 = false;       ///< AVX-512 F, BW, VL, VBMI, VNNI, ZMM/opmask state enabled
  bool avx512_bf16 = false;  ///< AVX512_BF16 (with avx512)
  bool amx = false;          ///< AMX-TILE + AMX-BF16, tile state enabled and permission granted
  /// vdpbf16ps at least at the fp32 FMA's instruction rate, so that bf16 window products beat
  /// fp32 ones: AMD (Zen 4 and later). Intel's Sapphire / Emerald Rapids run it at about a
  /// quarter of the FMA rate (measured on the machine of docs/results.md), so without AMX
  /// they take the exact fp32 path.
  bool bf16_dot_fast = false;
};

/// The detected features (computed on first call, thread-safe).
const CpuFeatures& cpu_features();

/// The highest level this CPU supports, capped by the environment variable MPQ_CPU_ISA
/// ("scalar", "avx2", "avx512", "avx512bf16", "amx"; unset = no cap) so that a slower
/// path can be measured or forced on purpose. An unknown value is ignored with a one-line
/// warning on stderr. Read once.
CpuIsa cpu_isa();

/// The level MPQ_CPU_ISA names, whatever this CPU supports (kAmx when unset or unknown).
/// Kernels that check their own narrower feature sets (the fp32 LUT and FGMP kernels need
/// only AVX-512F for their AVX-512 paths) take a path only when it is not above this cap.
CpuIsa cpu_isa_cap();

/// The path of a kernel that checks its own feature sets (`has_avx512`, `has_avx2`: what its
/// AVX-512 and AVX2 paths need): kAvx512, kAvx2 or kScalar, the widest it has that is not
/// above cpu_isa_cap(). cpu_isa_name() of it names the path.
CpuIsa kernel_isa_capped(bool has_avx512, bool has_avx2);

/// "scalar", "avx2", "avx512", "avx512bf16", "amx".
const char* cpu_isa_name(CpuIsa isa);

/// True when MPQ_CPU_ISA names exactly `isa` (a path forced on purpose, e.g. avx512bf16 on
/// a CPU where bf16_dot_fast is false).
bool cpu_isa_forced(CpuIsa isa);

}  // namespace mpq
