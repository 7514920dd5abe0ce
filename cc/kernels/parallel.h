// Small helpers shared by the tfppml CPU kernels.
#ifndef TFPPML_CC_KERNELS_PARALLEL_H_
#define TFPPML_CC_KERNELS_PARALLEL_H_

#include <cstdint>
#include <functional>

#include "tensorflow/core/framework/op_kernel.h"

namespace tfppml {

// Runs fn(begin, end) over [0, total) on TensorFlow's intra-op thread pool (CONVENTIONS.md, 3: no private
// pools).  cost_per_unit is a rough cycle count per unit; the pool uses it to decide how finely to split.
inline void ParallelFor(tensorflow::OpKernelContext* ctx, int64_t total, int64_t cost_per_unit,
                        const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  workers->ParallelFor(total, cost_per_unit, fn);
}

}  // namespace tfppml

#endif  // TFPPML_CC_KERNELS_PARALLEL_H_
