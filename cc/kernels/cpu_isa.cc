#include "cc/kernels/cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace tfppml {
namespace {

CpuIsa Detect() {
  CpuIsa isa = CpuIsa::kScalar;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) isa = CpuIsa::kAvx2;
  if (isa == CpuIsa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    isa = CpuIsa::kAvx512;
  }
#endif
  const char* cap = std::getenv("TFPPML_ISA");
  if (cap != nullptr) {
    // An unknown value caps nothing (the Python side validates the variable before loading the library).
    if (std::strcmp(cap, "scalar") == 0) isa = CpuIsa::kScalar;
    if (std::strcmp(cap, "avx2") == 0 && isa > CpuIsa::kAvx2) isa = CpuIsa::kAvx2;
  }
  return isa;
}

}  // namespace

CpuIsa MaxCpuIsa() {
  static const CpuIsa isa = Detect();
  return isa;
}

}  // namespace tfppml
