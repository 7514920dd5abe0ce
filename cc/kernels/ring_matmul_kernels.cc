// CPU kernels of TfppmlRingMatMul and TfppmlRingConv2D (registered in cc/ops/ring_matmul_ops.cc).
//
// Both reduce to the ring GEMM of cc/kernels/ring_gemm.h: the matmul directly (batch dimensions broadcast as
// in tf.matmul), the convolution as im2col x filters, with the im2col rows packed straight from the image.
// Work runs on TensorFlow's intra-op thread pool.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "cc/kernels/parallel.h"
#include "cc/kernels/ring_gemm.h"
#include "tensorflow/core/framework/kernel_shape_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/matmul_bcast.h"
#include "tensorflow/core/util/padding.h"

namespace tfppml {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::MatMulBCast;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

// The micro-kernel for this op instance: AVX2 when the CPU has it, unless the op asks for the portable one.
ring_gemm::Isa ChooseIsa(bool force_scalar) {
  static const ring_gemm::Isa best = ring_gemm::BestIsa();
  return force_scalar ? ring_gemm::Isa::kScalar : best;
}

int NumThreads(OpKernelContext* ctx) { return ctx->device()->tensorflow_cpu_worker_threads()->num_threads; }

ring_gemm::ParallelForFn PoolParallelFor(OpKernelContext* ctx) {
  return [ctx](int64_t total, int64_t cost_per_unit, const std::function<void(int64_t, int64_t)>& fn) {
    ParallelFor(ctx, total, cost_per_unit, fn);
  };
}

}  // namespace

class RingMatMulOp : public OpKernel {
 public:
  explicit RingMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("force_scalar", &force_scalar_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& a = ctx->input(0);
    const Tensor& b = ctx->input(1);
    OP_REQUIRES(ctx, a.dims() >= 2,
                InvalidArgument("a must have rank >= 2 ([..., m, k]), got shape ", a.shape().DebugString()));
    OP_REQUIRES(ctx, b.dims() >= 2,
                InvalidArgument("b must have rank >= 2 ([..., k, n]), got shape ", b.shape().DebugString()));
    const int64_t m = a.dim_size(a.dims() - 2);
    const int64_t k = a.dim_size(a.dims() - 1);
    const int64_t n = b.dim_size(b.dims() - 1);
    OP_REQUIRES(ctx, b.dim_size(b.dims() - 2) == k,
                InvalidArgument("inner dimensions differ: a has shape ", a.shape().DebugString(), " (k = ", k,
                                ") but b has shape ", b.shape().DebugString(),
                                " (k = ", b.dim_size(b.dims() - 2), ")"));
    MatMulBCast bcast(a.shape().dim_sizes(), b.shape().dim_sizes());
    OP_REQUIRES(ctx, bcast.IsValid(),
                InvalidArgument("batch dimensions of a ", a.shape().DebugString(), " and b ",
                                b.shape().DebugString(), " cannot be broadcast together"));
    TensorShape out_shape = bcast.output_batch_shape();
    out_shape.AddDim(m);
    out_shape.AddDim(n);
    Tensor* c = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &c));
    if (c->NumElements() == 0) return;

    ring_gemm::BatchedMatMulArgs args;
    args.a = a.flat<uint64_t>().data();
    args.b = b.flat<uint64_t>().data();
    args.c = c->flat<uint64_t>().data();
    args.batches = bcast.output_batch_size();
    args.m = m;
    args.k = k;
    args.n = n;
    args.b_count = bcast.y_batch_size();
    if (args.b_count == 1 && bcast.x_batch_size() == args.batches) {
      // One right-hand matrix for every batch: a single GEMM with batches * m rows.
      args.m *= args.batches;
      args.batches = 1;
    } else if (bcast.IsBroadcastingRequired()) {
      args.a_index = bcast.x_batch_indices().data();
      args.b_index = bcast.y_batch_indices().data();
    }
    // The packed right-hand matrices, from TF's allocator so that running out of memory is an error status.
    Tensor workspace;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_temp(::tensorflow::DT_UINT64,
                                TensorShape({ring_gemm::BatchedMatMulWorkspaceWords(args)}), &workspace));
    ring_gemm::BatchedMatMul(args, workspace.flat<uint64_t>().data(), ChooseIsa(force_scalar_),
                             NumThreads(ctx), PoolParallelFor(ctx));
  }

 private:
  bool force_scalar_ = false;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlRingMatMul").Device(DEVICE_CPU), RingMatMulOp);

class RingConv2DOp : public OpKernel {
 public:
  explicit RingConv2DOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("force_scalar", &force_scalar_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES(ctx, strides_.size() == 2 && strides_[0] >= 1 && strides_[1] >= 1,
                InvalidArgument("strides must be two positive ints [stride_h, stride_w], got [",
                                absl::StrJoin(strides_, ", "), "]"));
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ::tensorflow::GetPaddingFromString(padding, &padding_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& filters = ctx->input(1);
    OP_REQUIRES(ctx, input.dims() == 4,
                InvalidArgument("input must have rank 4 (NHWC), got shape ", input.shape().DebugString()));
    OP_REQUIRES(
        ctx, filters.dims() == 4,
        InvalidArgument("filters must have rank 4 (HWIO), got shape ", filters.shape().DebugString()));
    OP_REQUIRES(ctx, filters.dim_size(2) == input.dim_size(3),
                InvalidArgument("filters have ", filters.dim_size(2), " input channels (shape ",
                                filters.shape().DebugString(), ") but input has ", input.dim_size(3),
                                " (shape ", input.shape().DebugString(), ")"));
    ring_gemm::Conv2DArgs args;
    args.batch = input.dim_size(0);
    args.in_h = input.dim_size(1);
    args.in_w = input.dim_size(2);
    args.in_c = input.dim_size(3);
    args.filter_h = filters.dim_size(0);
    args.filter_w = filters.dim_size(1);
    args.out_c = filters.dim_size(3);
    args.stride_h = strides_[0];
    args.stride_w = strides_[1];
    int64_t pad_bottom = 0;
    int64_t pad_right = 0;
    OP_REQUIRES_OK(
        ctx, ::tensorflow::GetWindowedOutputSizeVerbose(args.in_h, args.filter_h, 1, args.stride_h, padding_,
                                                        &args.out_h, &args.pad_top, &pad_bottom));
    OP_REQUIRES_OK(
        ctx, ::tensorflow::GetWindowedOutputSizeVerbose(args.in_w, args.filter_w, 1, args.stride_w, padding_,
                                                        &args.out_w, &args.pad_left, &pad_right));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(0, TensorShape({args.batch, args.out_h, args.out_w, args.out_c}), &output));
    if (output->NumElements() == 0) return;
    args.input = input.flat<uint64_t>().data();
    args.filters = filters.flat<uint64_t>().data();
    args.output = output->flat<uint64_t>().data();
    Tensor workspace;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_UINT64,
                                           TensorShape({ring_gemm::Conv2DWorkspaceWords(args)}), &workspace));
    ring_gemm::Conv2D(args, workspace.flat<uint64_t>().data(), ChooseIsa(force_scalar_), NumThreads(ctx),
                      PoolParallelFor(ctx));
  }

 private:
  bool force_scalar_ = false;
  std::vector<int32_t> strides_;
  ::tensorflow::Padding padding_ = ::tensorflow::VALID;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlRingConv2D").Device(DEVICE_CPU), RingConv2DOp);

}  // namespace tfppml

// The same product of two row-major matrices into a caller's buffer, for tfppml.ops.ring_matmul_numpy (called
// through ctypes).  Why: a protocol round of a single private query multiplies a row by a layer's weights, and
// the TF eager dispatch (with the conversion of both NumPy operands to tensors, a copy of the weights) cost more
// than the product.  Single threaded (the caller keeps it for small products); the Python wrapper has already
// checked the arguments, this re-checks what would corrupt memory.  Returns 0, or -1 on a bad argument.
extern "C" __attribute__((visibility("default"))) int tfppml_ring_matmul_fill(const uint64_t* a, const uint64_t* b,
                                                                             uint64_t* c, int64_t m, int64_t k,
                                                                             int64_t n) {
  if (m < 0 || k < 0 || n < 0 || (m * n > 0 && c == nullptr) || (m * k > 0 && a == nullptr) ||
      (k * n > 0 && b == nullptr)) {
    return -1;
  }
  if (m == 0 || n == 0) return 0;
  tfppml::ring_gemm::BatchedMatMulArgs args;
  args.a = a;
  args.b = b;
  args.c = c;
  args.m = m;
  args.k = k;
  args.n = n;
  std::vector<uint64_t> workspace(static_cast<size_t>(tfppml::ring_gemm::BatchedMatMulWorkspaceWords(args)));
  const tfppml::ring_gemm::ParallelForFn serial =
      [](int64_t total, int64_t, const std::function<void(int64_t, int64_t)>& fn) { fn(0, total); };
  tfppml::ring_gemm::BatchedMatMul(args, workspace.data(), tfppml::ChooseIsa(false), 1, serial);
  return 0;
}
