// The GEMM core of the ring matmul and conv2d kernels: C = A x B over Z_2^64 (uint64_t, wrap-around).
//
// GotoBLAS-style: B is packed into column strips of kNr (once and shared by all threads, or, when a single
// block of rows uses it, block by block just before use), A is packed per thread into micro-panels of kMr
// rows (for conv2d the A packer reads the image directly, so im2col is never materialised), and a
// register-blocked kMr x kNr micro-kernel does the arithmetic.  The micro-kernel is chosen at run time: an
// AVX2 one (compiled with a function-level target attribute, so the library itself needs only baseline
// x86-64) when the CPU has AVX2, a portable scalar one otherwise or on request.  Threads take units of work
// (batch x row block x column block) from a shared counter.
//
// This file knows nothing of TensorFlow: the caller passes a parallel-for callback (TF's intra-op pool in
// the kernels, std::thread in a standalone harness).
#ifndef TFPPML_CC_KERNELS_RING_GEMM_H_
#define TFPPML_CC_KERNELS_RING_GEMM_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>

namespace tfppml {
namespace ring_gemm {

// Micro-tile: kMr rows x kNr columns (one 256-bit vector of uint64).
inline constexpr int64_t kMr = 4;
inline constexpr int64_t kNr = 4;

// kAmx: BatchedMatMul runs on the AMX tile unit (ring_gemm_amx.cc) where the shapes are large enough, and
// everything else on the AVX2 micro-kernel.
enum class Isa { kScalar, kAvx2, kAmx };

// AMX when the CPU has it and Linux grants it, else AVX2 when the CPU has it, else scalar (capped by TFPPML_ISA,
// see cpu_isa.h).
Isa BestIsa();

const char* IsaName(Isa isa);

// Runs fn(begin, end) over [0, total), possibly in parallel; cost_per_unit is a rough cycle count.
using ParallelForFn = std::function<void(int64_t total, int64_t cost_per_unit,
                                         const std::function<void(int64_t, int64_t)>& fn)>;

// Helpers shared by the GEMM back ends (ring_gemm.cc, ring_gemm_amx.cc).
inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t RoundUp(int64_t a, int64_t b) { return CeilDiv(a, b) * b; }

// Runs `worker` on up to `threads` threads of the pool; each worker takes units of work one at a time from a
// shared counter until none is left.  So a thread that other load on the machine delays does not hold the
// rest up, and no more threads are busy than the pool has (the pool's own splitting may also run shards on
// the calling thread).  worker(next) must loop: for (u = next++; u < units; u = next++).
template <class Worker>
void RunWorkers(const ParallelForFn& pf, int64_t threads, int64_t units, int64_t cost_per_unit,
                const Worker& worker) {
  if (units <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min(threads, units));
  pf(workers, std::max<int64_t>(1, cost_per_unit * units / workers), [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) worker(next);
  });
}

// Batched matrix product C[g] = A[a_index[g]] x B[b_index[g]], g in [0, batches).  A holds row-major [m, k]
// matrices (as many as a_index refers to), B holds b_count row-major [k, n] matrices, C holds `batches`
// row-major [m, n] matrices, all contiguous.  A null a_index / b_index means the identity (g itself).
struct BatchedMatMulArgs {
  const uint64_t* a = nullptr;
  const uint64_t* b = nullptr;
  uint64_t* c = nullptr;
  int64_t batches = 1;
  int64_t m = 0;
  int64_t k = 0;
  int64_t n = 0;
  int64_t b_count = 1;
  const int64_t* a_index = nullptr;
  const int64_t* b_index = nullptr;
};

// Whether AMX may run: MaxCpuIsa() allows it and the kernel granted this process the tile state (asked once).
bool AmxUsable();

// BatchedMatMul on AMX (needs AmxUsable()); the caller checked the arguments.
void BatchedMatMulAmx(const BatchedMatMulArgs& args, int num_threads, const ParallelForFn& parallel_for);

// Words of scratch BatchedMatMul needs for the shared packed B matrices (0 when it packs B block by block;
// the caller allocates them).
int64_t BatchedMatMulWorkspaceWords(const BatchedMatMulArgs& args);
void BatchedMatMul(const BatchedMatMulArgs& args, uint64_t* workspace, Isa isa, int num_threads,
                   const ParallelForFn& parallel_for);

// A 2-D convolution, NHWC input, HWIO filters, NHWC output, with tf.nn.conv2d's conventions: the caller
// computes out_h/out_w and the leading (top/left) padding exactly as TensorFlow does.
struct Conv2DArgs {
  const uint64_t* input = nullptr;    // [batch, in_h, in_w, in_c]
  const uint64_t* filters = nullptr;  // [filter_h, filter_w, in_c, out_c]
  uint64_t* output = nullptr;         // [batch, out_h, out_w, out_c]
  int64_t batch = 0;
  int64_t in_h = 0;
  int64_t in_w = 0;
  int64_t in_c = 0;
  int64_t filter_h = 0;
  int64_t filter_w = 0;
  int64_t out_c = 0;
  int64_t stride_h = 1;
  int64_t stride_w = 1;
  int64_t out_h = 0;
  int64_t out_w = 0;
  int64_t pad_top = 0;
  int64_t pad_left = 0;
};

// Words of scratch Conv2D needs for the packed filters (the caller allocates them).
int64_t Conv2DWorkspaceWords(const Conv2DArgs& args);
void Conv2D(const Conv2DArgs& args, uint64_t* workspace, Isa isa, int num_threads,
            const ParallelForFn& parallel_for);

}  // namespace ring_gemm
}  // namespace tfppml

#endif  // TFPPML_CC_KERNELS_RING_GEMM_H_
