// CPU kernels of TfppmlDcfGen and TfppmlDcfEval (registered in cc/ops/dcf_ops.cc); the construction is in
// cc/kernels/dcf.{h,cc}, whose ctypes entries serve the MPC runtime's small batches without a TF dispatch.
#include <cstdint>

#include "cc/kernels/dcf.h"
#include "cc/kernels/parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tfppml {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

bool FitsBits(const Tensor& t, int bits) { return DcfInDomain(bits, t.flat<uint64_t>().data(), t.NumElements()); }

bool IsPairs(const Tensor& t, int64_t n) { return t.dims() == 2 && t.dim_size(0) == n && t.dim_size(1) == 2; }

class DcfGenOp : public OpKernel {
 public:
  explicit DcfGenOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    OP_REQUIRES(ctx, bits_ >= 1 && bits_ <= 64, InvalidArgument("DcfGen: `bits` must be in [1, 64], got ", bits_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& alpha = ctx->input(0);
    const Tensor& beta = ctx->input(1);
    const Tensor& seed0 = ctx->input(2);
    const Tensor& seed1 = ctx->input(3);
    OP_REQUIRES(ctx, alpha.dims() == 1, InvalidArgument("DcfGen: `alpha` must be a vector, got rank ", alpha.dims()));
    const int64_t n = alpha.dim_size(0);
    OP_REQUIRES(ctx, IsPairs(beta, n) && IsPairs(seed0, n) && IsPairs(seed1, n),
                InvalidArgument("DcfGen: `beta`, `seed0` and `seed1` must have shape [", n, ", 2]"));
    OP_REQUIRES(ctx, FitsBits(alpha, bits_), InvalidArgument("DcfGen: `alpha` has values of more than ", bits_, " bits"));
    Tensor* cw = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, DcfKeyWords(bits_)}), &cw));
    const uint64_t* a = alpha.flat<uint64_t>().data();
    const uint64_t* b = beta.flat<uint64_t>().data();
    const uint64_t* s0 = seed0.flat<uint64_t>().data();
    const uint64_t* s1 = seed1.flat<uint64_t>().data();
    uint64_t* out = cw->flat<uint64_t>().data();
    const int bits = bits_;
    ParallelFor(ctx, n, kDcfGenCost, [&](int64_t begin, int64_t end) { DcfGen(bits, begin, end, a, b, s0, s1, out); });
  }

 private:
  int bits_;
};

class DcfEvalOp : public OpKernel {
 public:
  explicit DcfEvalOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("party", &party_));
    OP_REQUIRES(ctx, bits_ >= 1 && bits_ <= 64, InvalidArgument("DcfEval: `bits` must be in [1, 64], got ", bits_));
    OP_REQUIRES(ctx, party_ == 0 || party_ == 1, InvalidArgument("DcfEval: `party` must be 0 or 1, got ", party_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seed = ctx->input(0);
    const Tensor& cw = ctx->input(1);
    const Tensor& x = ctx->input(2);
    OP_REQUIRES(ctx, x.dims() == 2, InvalidArgument("DcfEval: `x` must have shape [elements, points], got rank ", x.dims()));
    const int64_t n = x.dim_size(0), points = x.dim_size(1);
    OP_REQUIRES(ctx, IsPairs(seed, n), InvalidArgument("DcfEval: `seed` must have shape [", n, ", 2]"));
    OP_REQUIRES(ctx, cw.dims() == 2 && cw.dim_size(0) == n && cw.dim_size(1) == DcfKeyWords(bits_),
                InvalidArgument("DcfEval: `cw` must have shape [", n, ", ", DcfKeyWords(bits_), "]"));
    OP_REQUIRES(ctx, FitsBits(x, bits_), InvalidArgument("DcfEval: `x` has values of more than ", bits_, " bits"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, points, kDcfPayloadWords}), &out));
    const uint64_t* s = seed.flat<uint64_t>().data();
    const uint64_t* k = cw.flat<uint64_t>().data();
    const uint64_t* xs = x.flat<uint64_t>().data();
    uint64_t* o = out->flat<uint64_t>().data();
    const int bits = bits_, party = party_;
    ParallelFor(ctx, n, kDcfEvalCost * points,
                [&](int64_t begin, int64_t end) { DcfEval(bits, party, points, begin, end, s, k, xs, o); });
  }

 private:
  int bits_;
  int party_;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlDcfGen").Device(DEVICE_CPU), DcfGenOp);
REGISTER_KERNEL_BUILDER(Name("TfppmlDcfEval").Device(DEVICE_CPU), DcfEvalOp);

}  // namespace
}  // namespace tfppml
