// CPU kernels of the Gaussian noise ops (registered in cc/ops/gaussian_noise_ops.cc).
//
// Randomness: a 256-bit ChaCha20 key, drawn from the kernel's getrandom(2) at every execution unless the caller
// gives one.  The output is cut into chunks of kChunk samples; chunk c owns the ChaCha20 block counters
// [c * 2^32, (c + 1) * 2^32) under the op's nonce: the first 2^31 of them give one keystream word per sample, the
// rest feed the rare rejections.  The output is therefore a function of (key, nonce, shape) alone, whatever the
// threads do.
//
// Normals: the Ziggurat method of Marsaglia & Tsang (J. Stat. Software 5(8), 2000) with 256 layers, in double
// precision, with Marsaglia's exact method for the tail beyond R.  Layer i, sign and a 52-bit uniform come from
// disjoint bits of one keystream word (Doornik, 2005, shows why the index and the uniform must not share bits).
// The layer table is computed once, at first use, by solving for the R whose layers close exactly.  About 98.8%
// of the samples take the fast path (one word, one multiply, one compare), which runs as a separate pass over a
// chunk: AVX2 intrinsics in a target("avx2") function, chosen at run time, else baseline x86-64 code.
#include <immintrin.h>
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
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
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

namespace {

constexpr int kLayers = 256;
constexpr int64_t kChunk = 1024;                           // samples per chunk (a multiple of 64)
constexpr int64_t kMaxChunks = int64_t{1} << 32;           // chunk index lives in the counter's high word
constexpr uint64_t kFallbackBlocks = uint64_t{1} << 31;    // first fallback block of a chunk
constexpr int64_t kChunkCost = kChunk / kChaChaWordsPerBlock * kChaChaBlockCost + kChunk * 16;
constexpr int kGroupWords = kChaChaLanes * kChaChaWordsPerBlock;  // words per ChaCha20Blocks call

inline double Density(double x) { return std::exp(-0.5 * x * x); }

// The Ziggurat: layer 0 is the base strip [0, R] x [0, f(R)] plus the tail beyond R (its pseudo-width x[0] is
// V / f(R)); layer i >= 1 is the rectangle [0, x[i]] x [f(x[i]), f(x[i+1])].  Every layer has area V.
struct Ziggurat {
  double x[kLayers + 1];  // x[0] = V / f(R), x[1] = R > x[2] > ... > x[kLayers] = 0
  double f[kLayers + 1];  // f[i] = exp(-x[i]^2 / 2) for i >= 1
  double ratio[kLayers];  // x[i+1] / x[i]: u < ratio[i] puts u * x[i] under the curve for sure
  double r;

  // Layers for a trial R; returns +1 when R is too small (the layers run out of height), -1 when too large
  // (the top layer is wider than V).
  int Build(double trial_r) {
    r = trial_r;
    const double v = r * Density(r) + std::sqrt(M_PI / 2) * std::erfc(r / std::sqrt(2.0));
    x[0] = v / Density(r);
    x[1] = r;
    for (int i = 2; i < kLayers; ++i) {
      const double arg = v / x[i - 1] + Density(x[i - 1]);
      if (arg >= 1.0) return +1;
      x[i] = std::sqrt(-2.0 * std::log(arg));
    }
    x[kLayers] = 0.0;
    return x[kLayers - 1] * (1.0 - Density(x[kLayers - 1])) > v ? -1 : +1;
  }

  Ziggurat() {
    double lo = 2.0, hi = 5.0;  // R = 3.6541528853610088 for 256 layers (Marsaglia & Tsang)
    for (int it = 0; it < 200 && lo < hi; ++it) {
      const double mid = 0.5 * (lo + hi);
      if (mid == lo || mid == hi) break;
      (Build(mid) > 0 ? lo : hi) = mid;
    }
    Build(lo);  // the largest R whose top layer is not wider than V: the layers close to rounding error
    x[kLayers] = 0.0;
    for (int i = 1; i <= kLayers; ++i) f[i] = Density(x[i]);
    f[0] = 0.0;
    for (int i = 0; i < kLayers; ++i) ratio[i] = x[i + 1] / x[i];
  }
};

const Ziggurat& Table() {
  static const Ziggurat* const table = new Ziggurat();
  return *table;
}

// A uniform double in [0, 1) from the top 52 bits of w (exact: 1.x with a random mantissa, minus 1).
inline double Unit(uint64_t w) {
  const uint64_t bits = (w >> 12) | 0x3FF0000000000000ull;
  double d;
  std::memcpy(&d, &bits, sizeof(d));
  return d - 1.0;
}

// A uniform double in (0, 1].
inline double OpenUnit(uint64_t w) { return 1.0 - Unit(w); }

using BlocksFn = void (*)(const uint32_t*, uint64_t, uint64_t (*)[kChaChaWordsPerBlock]);

// Keystream words from consecutive ChaCha20 blocks, starting at a given block counter.
class Keystream {
 public:
  Keystream(BlocksFn blocks, const uint32_t* state, uint64_t first_block)
      : blocks_(blocks), state_(state), next_block_(first_block) {}

  uint64_t Next() {
    if (pos_ == kGroupWords) {
      blocks_(state_, next_block_, reinterpret_cast<uint64_t(*)[kChaChaWordsPerBlock]>(buffer_));
      next_block_ += kChaChaLanes;
      pos_ = 0;
    }
    return buffer_[pos_++];
  }

 private:
  BlocksFn blocks_;
  const uint32_t* state_;
  uint64_t next_block_;
  int pos_ = kGroupWords;
  uint64_t buffer_[kGroupWords];
};

// Marsaglia (1964): the standard normal conditioned on x > r, exactly.
double Tail(double r, Keystream& stream) {
  for (;;) {
    const double x = -std::log(OpenUnit(stream.Next())) / r;
    const double y = -std::log(OpenUnit(stream.Next()));
    if (2.0 * y > x * x) return r + x;
  }
}

// Finishes a sample whose first attempt (layer i, uniform u) missed the fast path; returns |z|.
double SlowPath(const Ziggurat& t, int i, double u, Keystream& stream) {
  for (;;) {
    if (i == 0) return Tail(t.r, stream);
    const double x = u * t.x[i];
    const double y = t.f[i] + Unit(stream.Next()) * (t.f[i + 1] - t.f[i]);
    if (y < Density(x)) return x;
    const uint64_t w = stream.Next();
    i = static_cast<int>(w & 0xFF);
    u = Unit(w);
    if (u < t.ratio[i]) return u * t.x[i];
  }
}

// Fast pass over m words: z[j] = +-u * x[i] for every j, and the indices j where that is not yet the sample (the
// fast path does not apply) in misses[0 .. returned count).  Word layout: bits 0-7 layer i, bit 8 sign, bits
// 12-63 the uniform u.
int64_t FastPassScalar(const Ziggurat& t, const uint64_t* words, int64_t m, double* z, int32_t* misses) {
  int64_t count = 0;
  for (int64_t j = 0; j < m; ++j) {
    const uint64_t w = words[j];
    const int i = static_cast<int>(w & 0xFF);
    const double u = Unit(w);
    const double x = u * t.x[i];
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    bits |= (w & 0x100) << 55;
    std::memcpy(&z[j], &bits, sizeof(bits));
    misses[count] = static_cast<int32_t>(j);
    count += u >= t.ratio[i];
  }
  return count;
}

__attribute__((target("avx2"))) int64_t FastPassAvx2(const Ziggurat& t, const uint64_t* words, int64_t m,
                                                     double* z, int32_t* misses) {
  const __m256i one_bits = _mm256_set1_epi64x(0x3FF0000000000000ll);
  const __m256i layer_mask = _mm256_set1_epi64x(0xFF);
  const __m256i sign_mask = _mm256_set1_epi64x(0x100);
  const __m256d one = _mm256_set1_pd(1.0);
  int64_t count = 0;
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + j));
    const __m256i layer = _mm256_and_si256(w, layer_mask);
    const __m256d u =
        _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(w, 12), one_bits)), one);
    const __m256d width = _mm256_i64gather_pd(t.x, layer, 8);
    const __m256d ratio = _mm256_i64gather_pd(t.ratio, layer, 8);
    const __m256i sign = _mm256_slli_epi64(_mm256_and_si256(w, sign_mask), 55);
    const __m256d x = _mm256_castsi256_pd(_mm256_or_si256(_mm256_castpd_si256(_mm256_mul_pd(u, width)), sign));
    _mm256_storeu_pd(z + j, x);
    int miss = _mm256_movemask_pd(_mm256_cmp_pd(u, ratio, _CMP_GE_OQ));
    while (miss != 0) {
      misses[count++] = static_cast<int32_t>(j + __builtin_ctz(miss));
      miss &= miss - 1;
    }
  }
  if (j < m) {
    const int64_t rest = FastPassScalar(t, words + j, m - j, z + j, misses + count);
    for (int64_t k = count; k < count + rest; ++k) misses[k] += static_cast<int32_t>(j);
    count += rest;
  }
  return count;
}

bool HaveAvx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
}

// The first m (<= kChunk) standard normals of chunk `chunk`, into z.  `vector` selects the AVX2 code (the
// caller checks that the CPU has it); both paths give the same numbers.
void ChunkNormals(const uint32_t* state, int64_t chunk, int64_t m, bool vector, double* z) {
  const BlocksFn blocks = vector ? ChaCha20Blocks : ChaCha20BlocksPortable;
  const Ziggurat& t = Table();
  alignas(64) uint64_t words[kChunk];
  int32_t misses[kChunk];
  const uint64_t base = static_cast<uint64_t>(chunk) << 32;
  for (int64_t g = 0; g * kGroupWords < m; ++g) {
    blocks(state, base + static_cast<uint64_t>(g) * kChaChaLanes,
           reinterpret_cast<uint64_t(*)[kChaChaWordsPerBlock]>(words + g * kGroupWords));
  }
  const int64_t count = vector ? FastPassAvx2(t, words, m, z, misses) : FastPassScalar(t, words, m, z, misses);
  Keystream fallback(blocks, state, base + kFallbackBlocks);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t j = misses[k];
    const uint64_t w = words[j];
    const double magnitude = SlowPath(t, static_cast<int>(w & 0xFF), Unit(w), fallback);
    z[j] = (w & 0x100) ? -magnitude : magnitude;
  }
}

Status OsKey(uint64_t key[4]) {
  auto* bytes = reinterpret_cast<unsigned char*>(key);
  size_t got = 0;
  while (got < 4 * sizeof(uint64_t)) {
    const ssize_t r = getrandom(bytes + got, 4 * sizeof(uint64_t) - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ::tensorflow::errors::Unavailable("getrandom() failed (", std::strerror(errno),
                                               "); refusing to draw DP noise without a cryptographic key");
    }
    got += static_cast<size_t>(r);
  }
  return ::tensorflow::OkStatus();
}

// Shared by both ops: checks stddev (input 1), seed (input 2) and nonce (input 3), then writes
// out[k] = T((in ? in[k] : 0) + stddev * z[k]) for k in [0, n).  force_scalar skips the AVX2 code.
template <typename T>
void FillNoise(OpKernelContext* ctx, bool force_scalar, int64_t n, const T* in, T* out) {
  const Tensor& stddev_t = ctx->input(1);
  const Tensor& seed_t = ctx->input(2);
  const Tensor& nonce_t = ctx->input(3);
  OP_REQUIRES(ctx, stddev_t.dims() == 0,
              InvalidArgument("stddev must be a scalar, got shape ", stddev_t.shape().DebugString()));
  OP_REQUIRES(ctx, seed_t.dims() == 1 && (seed_t.dim_size(0) == 0 || seed_t.dim_size(0) == 4),
              InvalidArgument("seed must be an empty vector (fresh key from the OS) or 4 uint64 words (a 256-bit "
                              "key), got shape ",
                              seed_t.shape().DebugString()));
  OP_REQUIRES(ctx, nonce_t.dims() == 0,
              InvalidArgument("nonce must be a scalar, got shape ", nonce_t.shape().DebugString()));
  const double stddev = stddev_t.scalar<double>()();
  OP_REQUIRES(ctx, std::isfinite(stddev) && stddev >= 0.0,
              InvalidArgument("stddev must be finite and >= 0, got ", stddev));
  OP_REQUIRES(ctx, (n + kChunk - 1) / kChunk <= kMaxChunks,
              InvalidArgument("too many samples requested: ", n, " (at most ", kMaxChunks * kChunk, ")"));
  if (n == 0) return;

  uint64_t key[4];
  if (seed_t.dim_size(0) == 0) {
    OP_REQUIRES_OK(ctx, OsKey(key));
  } else {
    std::memcpy(key, seed_t.flat<uint64_t>().data(), sizeof(key));
  }
  uint32_t state[16];
  ChaCha20Init(key, 4, static_cast<uint64_t>(nonce_t.scalar<int64_t>()()), state);
  std::memset(key, 0, sizeof(key));

  const bool vector = !force_scalar && HaveAvx2();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  ParallelFor(ctx, chunks, kChunkCost, [&](int64_t b, int64_t e) {
    alignas(64) double z[kChunk];
    for (int64_t c = b; c < e; ++c) {
      const int64_t start = c * kChunk;
      const int64_t m = std::min<int64_t>(kChunk, n - start);
      ChunkNormals(state, c, m, vector, z);
      T* dst = out + start;
      if (in == nullptr) {
        for (int64_t j = 0; j < m; ++j) dst[j] = static_cast<T>(stddev * z[j]);
      } else {
        const T* src = in + start;
        for (int64_t j = 0; j < m; ++j) dst[j] = static_cast<T>(static_cast<double>(src[j]) + stddev * z[j]);
      }
    }
  });
  std::memset(state, 0, sizeof(state));
}

template <typename T>
class GaussianNoiseOp : public OpKernel {
 public:
  explicit GaussianNoiseOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("force_scalar", &force_scalar_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& shape_t = ctx->input(0);
    OP_REQUIRES(ctx, shape_t.dims() == 1,
                InvalidArgument("shape must be a vector, got shape ", shape_t.shape().DebugString()));
    TensorShape out_shape;
    const auto dims = shape_t.flat<int64_t>();
    for (int64_t i = 0; i < dims.size(); ++i) {
      OP_REQUIRES(ctx, dims(i) >= 0, InvalidArgument("shape[", i, "] must be non-negative, got ", dims(i)));
      OP_REQUIRES_OK(ctx, out_shape.AddDimWithStatus(dims(i)));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    FillNoise<T>(ctx, force_scalar_, out_shape.num_elements(), nullptr, out->flat<T>().data());
  }

 private:
  bool force_scalar_;
};

template <typename T>
class AddGaussianNoiseOp : public OpKernel {
 public:
  explicit AddGaussianNoiseOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("force_scalar", &force_scalar_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &out));
    FillNoise<T>(ctx, force_scalar_, x.NumElements(), x.flat<T>().data(), out->flat<T>().data());
  }

 private:
  bool force_scalar_;
};

}  // namespace

#define TFPPML_REGISTER_NOISE(T)                                                                            \
  REGISTER_KERNEL_BUILDER(Name("TfppmlGaussianNoise")                                                       \
                              .Device(DEVICE_CPU)                                                           \
                              .HostMemory("shape")                                                          \
                              .HostMemory("stddev")                                                         \
                              .HostMemory("seed")                                                           \
                              .HostMemory("nonce")                                                          \
                              .TypeConstraint<T>("T"),                                                      \
                          GaussianNoiseOp<T>);                                                              \
  REGISTER_KERNEL_BUILDER(Name("TfppmlAddGaussianNoise")                                                    \
                              .Device(DEVICE_CPU)                                                           \
                              .HostMemory("stddev")                                                         \
                              .HostMemory("seed")                                                           \
                              .HostMemory("nonce")                                                          \
                              .TypeConstraint<T>("T"),                                                      \
                          AddGaussianNoiseOp<T>);

TFPPML_REGISTER_NOISE(float);
TFPPML_REGISTER_NOISE(double);

#undef TFPPML_REGISTER_NOISE

}  // namespace tfppml
