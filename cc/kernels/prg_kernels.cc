// CPU kernel of the ChaCha20-based PRG (registered in cc/ops/prg_ops.cc).
//
// ChaCha20 (D. J. Bernstein's original layout: 64-bit block counter in words 12-13, 64-bit nonce in 14-15,
// nonce fixed to 0 here).  A 128-bit key uses the "expand 16-byte k" constants with the key repeated, as the
// specification says.  Blocks are computed eight at a time in lane arrays so the compiler emits vector code;
// the function is cloned for AVX2 and baseline x86-64 and chosen at load time.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cc/kernels/parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tfppml {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

constexpr int kLanes = 8;             // blocks computed together
constexpr int kWordsPerBlock = 8;     // a 64-byte block is 8 uint64 words
constexpr int64_t kBlockCost = 400;   // cycles per block, roughly

inline uint32_t Rotl(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

#define TFPPML_QR(a, b, c, d)                                  \
  for (int l = 0; l < kLanes; ++l) {                           \
    x[a][l] += x[b][l];                                        \
    x[d][l] = Rotl(x[d][l] ^ x[a][l], 16);                     \
    x[c][l] += x[d][l];                                        \
    x[b][l] = Rotl(x[b][l] ^ x[c][l], 12);                     \
    x[a][l] += x[b][l];                                        \
    x[d][l] = Rotl(x[d][l] ^ x[a][l], 8);                      \
    x[c][l] += x[d][l];                                        \
    x[b][l] = Rotl(x[b][l] ^ x[c][l], 7);                      \
  }

// Writes kLanes consecutive keystream blocks, starting at block counter `first`, to out (block-major).
__attribute__((target_clones("avx2", "default"))) void ChaCha20Blocks(const uint32_t state[16], uint64_t first,
                                                                       uint64_t out[kLanes][kWordsPerBlock]) {
  uint32_t x[16][kLanes];
  uint32_t init[16][kLanes];
  for (int w = 0; w < 16; ++w) {
    for (int l = 0; l < kLanes; ++l) init[w][l] = state[w];
  }
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t counter = first + static_cast<uint64_t>(l);
    init[12][l] = static_cast<uint32_t>(counter);
    init[13][l] = static_cast<uint32_t>(counter >> 32);
  }
  std::memcpy(x, init, sizeof(x));
  for (int round = 0; round < 10; ++round) {
    TFPPML_QR(0, 4, 8, 12)
    TFPPML_QR(1, 5, 9, 13)
    TFPPML_QR(2, 6, 10, 14)
    TFPPML_QR(3, 7, 11, 15)
    TFPPML_QR(0, 5, 10, 15)
    TFPPML_QR(1, 6, 11, 12)
    TFPPML_QR(2, 7, 8, 13)
    TFPPML_QR(3, 4, 9, 14)
  }
  for (int w = 0; w < 16; ++w) {
    for (int l = 0; l < kLanes; ++l) x[w][l] += init[w][l];
  }
  // Keystream bytes are the words in little-endian order, so uint64 word j is words 2j | 2j+1 << 32.
  for (int l = 0; l < kLanes; ++l) {
    for (int j = 0; j < kWordsPerBlock; ++j) {
      out[l][j] = static_cast<uint64_t>(x[2 * j][l]) | (static_cast<uint64_t>(x[2 * j + 1][l]) << 32);
    }
  }
}

#undef TFPPML_QR

class PrgUniformOp : public OpKernel {
 public:
  explicit PrgUniformOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seed = ctx->input(0);
    const Tensor& shape_t = ctx->input(1);
    const Tensor& offset_t = ctx->input(2);
    OP_REQUIRES(ctx, seed.dims() == 1 && (seed.dim_size(0) == 2 || seed.dim_size(0) == 4),
                InvalidArgument("seed must be a vector of 2 or 4 uint64 words (a 128- or 256-bit key), got shape ",
                                seed.shape().DebugString()));
    OP_REQUIRES(ctx, shape_t.dims() == 1,
                InvalidArgument("shape must be a vector, got shape ", shape_t.shape().DebugString()));
    OP_REQUIRES(ctx, offset_t.dims() == 0,
                InvalidArgument("offset must be a scalar, got shape ", offset_t.shape().DebugString()));
    TensorShape out_shape;
    auto dims = shape_t.flat<int64_t>();
    for (int64_t i = 0; i < dims.size(); ++i) {
      OP_REQUIRES(ctx, dims(i) >= 0, InvalidArgument("shape[", i, "] must be non-negative, got ", dims(i)));
      OP_REQUIRES_OK(ctx, out_shape.AddDimWithStatus(dims(i)));
    }
    const int64_t offset = offset_t.scalar<int64_t>()();
    const int64_t n = out_shape.num_elements();
    OP_REQUIRES(ctx, offset >= 0, InvalidArgument("offset must be non-negative, got ", offset));
    OP_REQUIRES(ctx, offset <= std::numeric_limits<int64_t>::max() - n,
                InvalidArgument("offset + number of elements overflows int64: offset ", offset, ", elements ", n));

    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (n == 0) return;
    uint64_t* op = out->flat<uint64_t>().data();

    uint32_t state[16];
    const auto key64 = seed.flat<uint64_t>();
    uint32_t key[8];
    for (int i = 0; i < seed.dim_size(0); ++i) {
      key[2 * i] = static_cast<uint32_t>(key64(i));
      key[2 * i + 1] = static_cast<uint32_t>(key64(i) >> 32);
    }
    if (seed.dim_size(0) == 4) {  // "expand 32-byte k"
      state[0] = 0x61707865u, state[1] = 0x3320646eu, state[2] = 0x79622d32u, state[3] = 0x6b206574u;
      for (int i = 0; i < 8; ++i) state[4 + i] = key[i];
    } else {  // "expand 16-byte k": the 16-byte key fills both key halves
      state[0] = 0x61707865u, state[1] = 0x3120646eu, state[2] = 0x79622d36u, state[3] = 0x6b206574u;
      for (int i = 0; i < 4; ++i) state[4 + i] = state[8 + i] = key[i];
    }
    state[12] = state[13] = state[14] = state[15] = 0;

    // Work in groups of kLanes blocks; group g covers keystream words [g*64, g*64+64).
    constexpr int64_t kGroupWords = kLanes * kWordsPerBlock;
    const int64_t first_group = offset / kGroupWords;
    const int64_t last_group = (offset + n - 1) / kGroupWords;
    ParallelFor(ctx, last_group - first_group + 1, kBlockCost * kLanes, [&](int64_t b, int64_t e) {
      uint64_t words[kLanes][kWordsPerBlock];
      for (int64_t g = first_group + b; g < first_group + e; ++g) {
        ChaCha20Blocks(state, static_cast<uint64_t>(g) * kLanes, words);
        const uint64_t* flat = &words[0][0];
        const int64_t start = std::max<int64_t>(g * kGroupWords, offset);
        const int64_t stop = std::min<int64_t>((g + 1) * kGroupWords, offset + n);
        for (int64_t p = start; p < stop; ++p) op[p - offset] = flat[p - g * kGroupWords];
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(
    Name("TfppmlPrgUniform").Device(DEVICE_CPU).HostMemory("shape").HostMemory("offset"), PrgUniformOp);

}  // namespace tfppml
