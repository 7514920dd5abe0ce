// CPU kernels of the ring-arithmetic ops (registered in cc/ops/ring_ops.cc).
//
// All arithmetic is on uint64_t, where C++ defines wrap-around modulo 2^64; that is exactly the ring Z_2^64
// the secret-sharing protocols need.  Fixed-point values are two's-complement int64 seen as uint64.
#include <cstdint>
#include <vector>

#include "cc/kernels/parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/bcast.h"

namespace tfppml {

using ::tensorflow::BCast;
using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

// Rough per-element costs (cycles) that tell TF's pool how finely to split elementwise work.
constexpr int64_t kElementwiseCost = 4;

struct AddFn {
  static uint64_t Apply(uint64_t a, uint64_t b) { return a + b; }
};
struct SubFn {
  static uint64_t Apply(uint64_t a, uint64_t b) { return a - b; }
};
struct MulFn {
  static uint64_t Apply(uint64_t a, uint64_t b) { return a * b; }
};

// z = Fn(x, y) with NumPy broadcasting.
template <typename Fn>
class RingBinaryOp : public OpKernel {
 public:
  explicit RingBinaryOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& y = ctx->input(1);
    BCast bcast(BCast::FromShape(x.shape()), BCast::FromShape(y.shape()));
    OP_REQUIRES(ctx, bcast.IsValid(),
                InvalidArgument("x and y cannot be broadcast together: x has shape ", x.shape().DebugString(),
                                ", y has shape ", y.shape().DebugString()));
    Tensor* z = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, BCast::ToShape(bcast.output_shape()), &z));
    const int64_t n = z->NumElements();
    if (n == 0) return;
    const uint64_t* xp = x.flat<uint64_t>().data();
    const uint64_t* yp = y.flat<uint64_t>().data();
    uint64_t* zp = z->flat<uint64_t>().data();

    if (x.NumElements() == n && y.NumElements() == n) {
      ParallelFor(ctx, n, kElementwiseCost, [=](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) zp[i] = Fn::Apply(xp[i], yp[i]);
      });
      return;
    }
    if (y.NumElements() == 1) {
      const uint64_t s = yp[0];
      ParallelFor(ctx, n, kElementwiseCost, [=](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) zp[i] = Fn::Apply(xp[i], s);
      });
      return;
    }
    if (x.NumElements() == 1) {
      const uint64_t s = xp[0];
      ParallelFor(ctx, n, kElementwiseCost, [=](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) zp[i] = Fn::Apply(s, yp[i]);
      });
      return;
    }

    // General case on BCast's collapsed shapes: each input is the result shape with some dimensions of
    // size 1 (stride 0).  The innermost dimension is looped over directly; outer rows run in parallel.
    const BCast::Vec& result = bcast.result_shape();
    const BCast::Vec& xr = bcast.x_reshape();
    const BCast::Vec& yr = bcast.y_reshape();
    const int rank = static_cast<int>(result.size());
    std::vector<int64_t> x_stride(rank), y_stride(rank);
    int64_t xs = 1, ys = 1;
    for (int d = rank - 1; d >= 0; --d) {
      x_stride[d] = xr[d] == 1 ? 0 : xs;
      y_stride[d] = yr[d] == 1 ? 0 : ys;
      xs *= xr[d];
      ys *= yr[d];
    }
    const int64_t inner = result[rank - 1];
    const int64_t rows = n / inner;
    const int64_t xi = x_stride[rank - 1], yi = y_stride[rank - 1];
    ParallelFor(ctx, rows, inner * kElementwiseCost, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        int64_t xo = 0, yo = 0, rem = row;
        for (int d = rank - 2; d >= 0; --d) {
          const int64_t idx = rem % result[d];
          rem /= result[d];
          xo += idx * x_stride[d];
          yo += idx * y_stride[d];
        }
        uint64_t* out = zp + row * inner;
        for (int64_t i = 0; i < inner; ++i) out[i] = Fn::Apply(xp[xo + i * xi], yp[yo + i * yi]);
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("TfppmlRingAdd").Device(DEVICE_CPU), RingBinaryOp<AddFn>);
REGISTER_KERNEL_BUILDER(Name("TfppmlRingSub").Device(DEVICE_CPU), RingBinaryOp<SubFn>);
REGISTER_KERNEL_BUILDER(Name("TfppmlRingMul").Device(DEVICE_CPU), RingBinaryOp<MulFn>);

class RingNegOp : public OpKernel {
 public:
  explicit RingNegOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const uint64_t* xp = x.flat<uint64_t>().data();
    uint64_t* yp = y->flat<uint64_t>().data();
    ParallelFor(ctx, x.NumElements(), kElementwiseCost, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) yp[i] = uint64_t{0} - xp[i];
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("TfppmlRingNeg").Device(DEVICE_CPU), RingNegOp);

class RingShiftRightOp : public OpKernel {
 public:
  explicit RingShiftRightOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bits", &bits_));
    OP_REQUIRES(ctx, bits_ >= 0 && bits_ <= 63, InvalidArgument("bits must be in [0, 63], got ", bits_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const uint64_t* xp = x.flat<uint64_t>().data();
    uint64_t* yp = y->flat<uint64_t>().data();
    const int bits = bits_;
    // GCC (and C++20) define >> of a negative int64 as the arithmetic shift, which keeps the sign.
    ParallelFor(ctx, x.NumElements(), kElementwiseCost, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        yp[i] = static_cast<uint64_t>(static_cast<int64_t>(xp[i]) >> bits);
      }
    });
  }

 private:
  int bits_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlRingShiftRight").Device(DEVICE_CPU), RingShiftRightOp);

// Sum over a set of axes.  Adjacent axes of the same kind (kept/reduced) are merged first, so the common
// patterns become [rows, cols] row sums, column sums, or a strided loop over at most a few dimensions.
class RingReduceSumOp : public OpKernel {
 public:
  explicit RingReduceSumOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("keep_dims", &keep_dims_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& axis = ctx->input(1);
    OP_REQUIRES(ctx, axis.dims() <= 1,
                InvalidArgument("axis must be a scalar or a vector, got shape ", axis.shape().DebugString()));
    const int rank = x.dims();
    std::vector<bool> reduced(rank, false);
    auto axes = axis.flat<int32_t>();
    for (int64_t i = 0; i < axes.size(); ++i) {
      int a = axes(i);
      OP_REQUIRES(ctx, a >= -rank && a < rank,
                  InvalidArgument("axis ", a, " is out of range for x of rank ", rank));
      reduced[a < 0 ? a + rank : a] = true;
    }

    TensorShape out_shape;
    for (int d = 0; d < rank; ++d) {
      if (!reduced[d]) {
        out_shape.AddDim(x.dim_size(d));
      } else if (keep_dims_) {
        out_shape.AddDim(1);
      }
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &y));
    uint64_t* yp = y->flat<uint64_t>().data();
    const int64_t out_n = y->NumElements();
    for (int64_t i = 0; i < out_n; ++i) yp[i] = 0;
    if (x.NumElements() == 0) return;
    const uint64_t* xp = x.flat<uint64_t>().data();

    // Merge runs of dimensions that are all kept or all reduced; drop size-1 dimensions.
    std::vector<int64_t> size;
    std::vector<bool> red;
    for (int d = 0; d < rank; ++d) {
      const int64_t s = x.dim_size(d);
      if (s == 1) continue;
      if (!size.empty() && red.back() == reduced[d]) {
        size.back() *= s;
      } else {
        size.push_back(s);
        red.push_back(reduced[d]);
      }
    }
    const int groups = static_cast<int>(size.size());
    if (groups == 0) {  // a single element
      yp[0] = xp[0];
      return;
    }
    // Input strides of the merged shape, and each group's stride into the output (0 if reduced).
    std::vector<int64_t> in_stride(groups), out_stride(groups);
    int64_t is = 1, os = 1;
    for (int g = groups - 1; g >= 0; --g) {
      in_stride[g] = is;
      is *= size[g];
      out_stride[g] = red[g] ? 0 : os;
      if (!red[g]) os *= size[g];
    }

    if (!red[0]) {
      // Each index of the outermost (kept) group owns a disjoint block of the output: run them in parallel.
      const int64_t per_outer = x.NumElements() / size[0];
      ParallelFor(ctx, size[0], per_outer * 2, [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; ++o) {
          Accumulate(xp + o * in_stride[0], yp + o * out_stride[0], size, in_stride, out_stride, 1);
        }
      });
    } else {
      Accumulate(xp, yp, size, in_stride, out_stride, 0);
    }
  }

 private:
  // y[...] += x[...] over groups [g, end); the innermost group is a tight loop.
  static void Accumulate(const uint64_t* x, uint64_t* y, const std::vector<int64_t>& size,
                         const std::vector<int64_t>& in_stride, const std::vector<int64_t>& out_stride,
                         int g) {
    const int groups = static_cast<int>(size.size());
    if (g == groups) {
      *y += *x;
      return;
    }
    if (g == groups - 1) {
      const int64_t n = size[g];
      if (out_stride[g] == 0) {
        uint64_t acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += x[i];
        *y += acc;
      } else {
        for (int64_t i = 0; i < n; ++i) y[i] += x[i];
      }
      return;
    }
    for (int64_t i = 0; i < size[g]; ++i) {
      Accumulate(x + i * in_stride[g], y + i * out_stride[g], size, in_stride, out_stride, g + 1);
    }
  }

  bool keep_dims_ = false;
};

REGISTER_KERNEL_BUILDER(Name("TfppmlRingReduceSum").Device(DEVICE_CPU).HostMemory("axis"), RingReduceSumOp);

}  // namespace tfppml
