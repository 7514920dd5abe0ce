// CPU kernel of the ChaCha20-based PRG (registered in cc/ops/prg_ops.cc).
//
// The ChaCha20 core lives in cc/kernels/chacha20.{h,cc} (shared with the Gaussian noise kernels): 64-bit block
// counter in words 12-13, 64-bit nonce in words 14-15, nonce fixed to 0 here.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "cc/kernels/chacha20.h"
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

constexpr int kLanes = kChaChaLanes;                // blocks computed together
constexpr int kWordsPerBlock = kChaChaWordsPerBlock;  // a 64-byte block is 8 uint64 words
constexpr int64_t kBlockCost = kChaChaBlockCost;      // cycles per block, roughly
// Work goes in groups of kLanes blocks; group g covers keystream words [g*64, g*64+64).
constexpr int64_t kGroupWords = kLanes * kWordsPerBlock;

// Writes the keystream words of groups [begin_group, end_group) that fall in [offset, offset + n) to
// out[word - offset].  Shared by the kernel (one call per shard) and tfppml_prg_fill (one call for all).
void WriteKeystreamGroups(const uint32_t state[16], int64_t offset, int64_t n, int64_t begin_group,
                          int64_t end_group, uint64_t* out) {
  // Two groups per call where there are two (ChaCha20Blocks16 is twice as wide with AVX-512); the words are
  // those of one group at a time either way.
  uint64_t words[2 * kLanes][kWordsPerBlock];
  for (int64_t g = begin_group; g < end_group;) {
    const int64_t groups = g + 1 < end_group ? 2 : 1;
    if (groups == 2) {
      ChaCha20Blocks16(state, static_cast<uint64_t>(g) * kLanes, words);
    } else {
      ChaCha20Blocks(state, static_cast<uint64_t>(g) * kLanes, words);
    }
    const uint64_t* flat = &words[0][0];
    const int64_t start = std::max<int64_t>(g * kGroupWords, offset);
    const int64_t stop = std::min<int64_t>((g + groups) * kGroupWords, offset + n);
    for (int64_t p = start; p < stop; ++p) out[p - offset] = flat[p - g * kGroupWords];
    g += groups;
  }
}

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
    ChaCha20Init(seed.flat<uint64_t>().data(), static_cast<int>(seed.dim_size(0)), /*nonce=*/0, state);

    const int64_t first_group = offset / kGroupWords;
    const int64_t last_group = (offset + n - 1) / kGroupWords;
    ParallelFor(ctx, last_group - first_group + 1, kBlockCost * kLanes, [&](int64_t b, int64_t e) {
      WriteKeystreamGroups(state, offset, n, first_group + b, first_group + e, op);
    });
  }
};

REGISTER_KERNEL_BUILDER(
    Name("TfppmlPrgUniform").Device(DEVICE_CPU).HostMemory("shape").HostMemory("offset"), PrgUniformOp);

}  // namespace tfppml

// The same keystream written into a caller's buffer, for tfppml.ops.prg_uniform_numpy (called through ctypes).
// Why: the MPC parties draw many small masks per protocol round, and a TF eager op dispatch costs ~100-200 us
// where this call costs ~2 us; for small tensors that dispatch was a large part of each round.  Single
// threaded; the Python wrapper has already checked the arguments, this re-checks what would corrupt memory.
// Returns 0 on success, -1 on a bad argument (nothing written).
extern "C" __attribute__((visibility("default"))) int tfppml_prg_fill(const uint64_t* key, int key_words,
                                                                     int64_t offset, uint64_t* out,
                                                                     int64_t n) {
  if (key == nullptr || (key_words != 2 && key_words != 4) || offset < 0 || n < 0 ||
      offset > std::numeric_limits<int64_t>::max() - n || (n > 0 && out == nullptr)) {
    return -1;
  }
  if (n == 0) return 0;
  uint32_t state[16];
  tfppml::ChaCha20Init(key, key_words, /*nonce=*/0, state);
  tfppml::WriteKeystreamGroups(state, offset, n, offset / tfppml::kGroupWords,
                               (offset + n - 1) / tfppml::kGroupWords + 1, out);
  return 0;
}
