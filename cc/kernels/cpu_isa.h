// Which vector instruction sets the kernels may use: what the CPU has, capped by the environment variable
// TFPPML_ISA ("scalar", "avx2", "avx512" or "amx"; unset = no cap), read once per process.  The cap exists so that tests
// can run the narrower code paths on a machine that has the wider ones (every path must give the same bits).
#ifndef TFPPML_CC_KERNELS_CPU_ISA_H_
#define TFPPML_CC_KERNELS_CPU_ISA_H_

namespace tfppml {

enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

// The widest usable set: AMX needs AMX-TILE, AMX-INT8 and AVX512-VBMI besides AVX-512 (the OS must still grant it, see
// ring_gemm::AmxUsable), AVX-512 needs AVX-512F and AVX-512BW, AVX2 needs AVX2.
CpuIsa MaxCpuIsa();

}  // namespace tfppml

#endif  // TFPPML_CC_KERNELS_CPU_ISA_H_
