// CPU kernel of TfppmlBitPlanes (registered in cc/ops/bit_planes_ops.cc) and its ctypes twin tfppml_bit_planes.
//
// Bit-slicing: word w of plane j holds bit j of elements 64w .. 64w + 63 (element 64w + b in bit b).  The MPC
// comparison runs its binary adder on planes: a shift of bit positions becomes picking other planes, and each
// level of the carry tree ANDs only the planes it needs, packed 64 elements to a word, instead of whole words
// per element of which most bits are don't-cares.
#include <cstdint>
#include <cstring>

#include "cc/kernels/parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tfppml {
namespace {

// Transposes a 64 x 64 bit matrix in place: bit c of a[r] ends up in bit r of a[c].  Six rounds of block swaps
// (32, 16, ..., 1): the top-right block of each 2j x 2j block (rows k, columns c + j) trades places with the
// bottom-left one (rows k + j, columns c), where bit c is the c-th least significant bit.
void Transpose64(uint64_t a[64]) {
  uint64_t mask = 0x00000000FFFFFFFFULL;  // the low j columns of every 2j-column block
  for (int j = 32; j != 0; j >>= 1, mask ^= mask << j) {
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {  // every row k with bit j clear
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & mask;
      a[k | j] ^= t;
      a[k] ^= t << j;
    }
  }
}

// Planes of blocks [begin, end) of x (n words): out is [64, words_per_plane], row-major.
void PlanesOfBlocks(const uint64_t* x, int64_t n, int64_t words_per_plane, int64_t begin, int64_t end,
                    uint64_t* out) {
  uint64_t block[64];
  for (int64_t w = begin; w < end; ++w) {
    const int64_t first = 64 * w;
    const int64_t count = n - first < 64 ? n - first : 64;
    std::memcpy(block, x + first, count * sizeof(uint64_t));
    if (count < 64) std::memset(block + count, 0, (64 - count) * sizeof(uint64_t));  // padding: bits 0
    Transpose64(block);
    for (int j = 0; j < 64; ++j) out[j * words_per_plane + w] = block[j];
  }
}

constexpr int64_t kBlockCost = 1500;  // cycles per 64-element block, roughly (transpose + scattered stores)

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

class BitPlanesOp : public OpKernel {
 public:
  explicit BitPlanesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int64_t n = x.NumElements();
    const int64_t words = (n + 63) / 64;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({64, words}), &out));
    if (n == 0) return;
    const uint64_t* xp = x.flat<uint64_t>().data();
    uint64_t* op = out->flat<uint64_t>().data();
    ParallelFor(ctx, words, kBlockCost,
                [&](int64_t begin, int64_t end) { PlanesOfBlocks(xp, n, words, begin, end, op); });
  }
};

REGISTER_KERNEL_BUILDER(Name("TfppmlBitPlanes").Device(DEVICE_CPU), BitPlanesOp);

}  // namespace
}  // namespace tfppml

// The same planes written into a caller's buffer of 64 * ceil(n / 64) words, for tfppml.ops.bit_planes_numpy
// (called through ctypes): the MPC runtime slices a few hundred elements per comparison round at batch 1,
// where a TF eager dispatch would cost more than the transposition.  Single threaded.  Returns 0, or -1 on a
// bad argument (nothing written).
extern "C" __attribute__((visibility("default"))) int tfppml_bit_planes(const uint64_t* x, int64_t n,
                                                                       uint64_t* out) {
  if (n < 0 || (n > 0 && (x == nullptr || out == nullptr))) return -1;
  const int64_t words = (n + 63) / 64;
  tfppml::PlanesOfBlocks(x, n, words, 0, words, out);
  return 0;
}
