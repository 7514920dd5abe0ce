// CPU kernels of fixed-point encode/decode (registered in cc/ops/fixed_point_ops.cc).
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>

#include "cc/kernels/parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfppml {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::errors::InvalidArgument;

// Beyond 62 fractional bits not even 1.0 is representable.
constexpr int kMaxFracBits = 62;
constexpr int64_t kCodecCost = 8;

template <typename T>
class FixedPointEncodeOp : public OpKernel {
 public:
  explicit FixedPointEncodeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("frac_bits", &frac_bits_));
    OP_REQUIRES(ctx, frac_bits_ <= kMaxFracBits,
                InvalidArgument("frac_bits must be in [0, ", kMaxFracBits, "], got ", frac_bits_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const T* xp = x.flat<T>().data();
    uint64_t* yp = y->flat<uint64_t>().data();
    const double scale = std::ldexp(1.0, frac_bits_);
    // int64 holds [-2^63, 2^63); both bounds are exact doubles.
    const double lo = -std::ldexp(1.0, 63);
    const double hi = std::ldexp(1.0, 63);

    // The first offending index over all shards, so the error names a deterministic element.
    std::mutex mu;
    int64_t bad = std::numeric_limits<int64_t>::max();
    ParallelFor(ctx, x.NumElements(), kCodecCost, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        // nearbyint rounds half to even under the default rounding mode, like numpy.round.
        const double v = std::nearbyint(static_cast<double>(xp[i]) * scale);
        if (!(v >= lo && v < hi)) {  // also catches NaN
          std::lock_guard<std::mutex> lock(mu);
          if (i < bad) bad = i;
          return;
        }
        yp[i] = static_cast<uint64_t>(static_cast<int64_t>(v));
      }
    });
    if (bad != std::numeric_limits<int64_t>::max()) {
      const double v = static_cast<double>(xp[bad]);
      if (std::isnan(v) || std::isinf(v)) {
        ctx->SetStatus(InvalidArgument("fixed_point_encode: x contains ", v, " at flat index ", bad,
                                       "; only finite values can be encoded"));
      } else {
        ctx->SetStatus(InvalidArgument("fixed_point_encode: x[", bad, "] = ", v,
                                       " is out of range for frac_bits=", frac_bits_,
                                       ": |x| must be below 2^", 63 - frac_bits_, " = ",
                                       std::ldexp(1.0, 63 - frac_bits_), " so that the encoding does not wrap"));
      }
    }
  }

 private:
  int frac_bits_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlFixedPointEncode").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        FixedPointEncodeOp<float>);
REGISTER_KERNEL_BUILDER(Name("TfppmlFixedPointEncode").Device(DEVICE_CPU).TypeConstraint<double>("T"),
                        FixedPointEncodeOp<double>);

template <typename T>
class FixedPointDecodeOp : public OpKernel {
 public:
  explicit FixedPointDecodeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("frac_bits", &frac_bits_));
    OP_REQUIRES(ctx, frac_bits_ <= kMaxFracBits,
                InvalidArgument("frac_bits must be in [0, ", kMaxFracBits, "], got ", frac_bits_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const uint64_t* xp = x.flat<uint64_t>().data();
    T* yp = y->flat<T>().data();
    const double inv_scale = std::ldexp(1.0, -frac_bits_);
    ParallelFor(ctx, x.NumElements(), kCodecCost, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        yp[i] = static_cast<T>(static_cast<double>(static_cast<int64_t>(xp[i])) * inv_scale);
      }
    });
  }

 private:
  int frac_bits_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlFixedPointDecode").Device(DEVICE_CPU).TypeConstraint<float>("out_type"),
                        FixedPointDecodeOp<float>);
REGISTER_KERNEL_BUILDER(Name("TfppmlFixedPointDecode").Device(DEVICE_CPU).TypeConstraint<double>("out_type"),
                        FixedPointDecodeOp<double>);

}  // namespace tfppml
