#include "cc/kernels/cpu_isa.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace tfppml {
namespace {

CpuIsa Detect() {
  CpuIsa isa = CpuIsa::kScalar;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) isa = CpuIsa::kAvx2;
  if (isa == CpuIsa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    isa = CpuIsa::kAvx512;
    // CPUID leaf 7, sub-leaf 0: EDX bit 24 AMX-TILE, bit 25 AMX-INT8; ECX bit 1 AVX512-VBMI (the AMX GEMM's
    // packing uses its byte permutation; every CPU with AMX has it).
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 24 & 1) && (edx >> 25 & 1) && (ecx >> 1 & 1)) {
      isa = CpuIsa::kAmx;
    }
  }
#endif
  const char* cap = std::getenv("TFPPML_ISA");
  if (cap != nullptr) {
    // An unknown value caps nothing (the Python side validates the variable before loading the library).
    if (std::strcmp(cap, "scalar") == 0) isa = CpuIsa::kScalar;
    if (std::strcmp(cap, "avx2") == 0 && isa > CpuIsa::kAvx2) isa = CpuIsa::kAvx2;
    if (std::strcmp(cap, "avx512") == 0 && isa > CpuIsa::kAvx512) isa = CpuIsa::kAvx512;
  }
  return isa;
}

}  // namespace

CpuIsa MaxCpuIsa() {
  static const CpuIsa isa = Detect();
  return isa;
}

}  // namespace tfppml
