// See ring_gemm.h.  Notation: the product of two ring elements a = ah*2^32 + al and b = bh*2^32 + bl is
//   a*b mod 2^64 = al*bl + ((al*bh + ah*bl) mod 2^32) * 2^32,
// so a sum of products needs the 64-bit sum of al*bl and only the low 32 bits of the sum of the cross terms.
#include "cc/kernels/ring_gemm.h"

#include "cc/kernels/cpu_isa.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define TFPPML_HAVE_AVX2_KERNEL 1
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

namespace tfppml {
namespace ring_gemm {
namespace {

// Cache blocking (tuned on a 2-core AMD EPYC (Zen 3) with 32 KiB L1d and 512 KiB L2 per core): a kc x kNr
// micro-panel of B (12 KiB at kc = 384) stays in L1 while the kMr-row panels of an mc x kc block of A (about
// 300 KiB) stream from L2.  Each C tile is loaded and stored once per kc block.
constexpr int64_t kKc = 384;
constexpr int64_t kMc = 96;     // a multiple of kMr
constexpr int64_t kMinMc = 32;  // the smallest row block made just to have more units of work

// A micro-kernel computes a kRows x kNr tile: c[r][j] (+)= sum_{p < kc} a[p*kMr + r] * b[p*kNr + j], where a
// is a packed kMr-row panel of A and b a packed kNr-column strip of B.
using MicroKernel = void (*)(int64_t kc, const uint64_t* a, const uint64_t* b, uint64_t* c, int64_t ldc,
                             bool accumulate);

// The portable micro-kernel, in uint64_t (wraps mod 2^64).
template <int kRows>
void MicroKernelScalar(int64_t kc, const uint64_t* a, const uint64_t* b, uint64_t* c, int64_t ldc,
                       bool accumulate) {
  uint64_t acc[kRows][kNr] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const uint64_t* ap = a + p * kMr;
    const uint64_t* bp = b + p * kNr;
    for (int r = 0; r < kRows; ++r) {
      for (int64_t j = 0; j < kNr; ++j) acc[r][j] += ap[r] * bp[j];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    uint64_t* cr = c + r * ldc;
    for (int64_t j = 0; j < kNr; ++j) cr[j] = accumulate ? cr[j] + acc[r][j] : acc[r][j];
  }
}

#ifdef TFPPML_HAVE_AVX2_KERNEL
// The AVX2 micro-kernel.  Per row r it keeps two accumulators: lo[r] += al*bl (vpmuludq, full 64 bits) and
// cross[r] += (al*bh, ah*bl) mod 2^32 in the two 32-bit halves of each lane (vpmulld against B with its
// halves swapped).  The two halves are folded and shifted into place once per tile, not once per k.  With
// kRows = 4 it uses 8 accumulators + 4 temporaries of the 16 ymm registers (6 rows spill with GCC 12), and
// its speed is bounded by the multipliers: per k, 4 vpmuludq + 4 vpmulld for 16 products.
template <int kRows>
__attribute__((target("avx2"))) void MicroKernelAvx2(int64_t kc, const uint64_t* a, const uint64_t* b,
                                                     uint64_t* c, int64_t ldc, bool accumulate) {
  // The C tile is read and written only after the k loop: start fetching it now (rows are far apart).
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
  __m256i lo[kRows];
  __m256i cross[kRows];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) lo[r] = cross[r] = _mm256_setzero_si256();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kNr * p));
    const __m256i bs = _mm256_shuffle_epi32(bv, 0xB1);  // the 32-bit halves of each lane swapped
    const uint64_t* ap = a + kMr * p;
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m256i av = _mm256_set1_epi64x(static_cast<long long>(ap[r]));
      lo[r] = _mm256_add_epi64(lo[r], _mm256_mul_epu32(av, bv));
      cross[r] = _mm256_add_epi32(cross[r], _mm256_mullo_epi32(av, bs));
    }
  }
  // A cross lane is L + H*2^32; it contributes (L + H)*2^32 = (cross << 32) + (cross & 0xffffffff00000000).
  const __m256i hi_mask = _mm256_set1_epi64x(static_cast<long long>(0xffffffff00000000ULL));
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    __m256i v = _mm256_add_epi64(
        lo[r], _mm256_add_epi64(_mm256_slli_epi64(cross[r], 32), _mm256_and_si256(cross[r], hi_mask)));
    __m256i* cp = reinterpret_cast<__m256i*>(c + r * ldc);
    if (accumulate) v = _mm256_add_epi64(v, _mm256_loadu_si256(cp));
    _mm256_storeu_si256(cp, v);
  }
}

static_assert(kNr == 4, "MicroKernelAvx2 handles one 256-bit vector of columns");
#endif  // TFPPML_HAVE_AVX2_KERNEL

static_assert(kMr == 4, "the kernel tables below list kRows = 1 .. 4");

// Micro-kernels by number of rows (index 1 .. kMr) for one instruction set.
const MicroKernel* KernelsFor(Isa isa) {
  static constexpr MicroKernel kScalar[] = {nullptr, MicroKernelScalar<1>, MicroKernelScalar<2>,
                                            MicroKernelScalar<3>, MicroKernelScalar<4>};
#ifdef TFPPML_HAVE_AVX2_KERNEL
  static constexpr MicroKernel kAvx2[] = {nullptr, MicroKernelAvx2<1>, MicroKernelAvx2<2>, MicroKernelAvx2<3>,
                                          MicroKernelAvx2<4>};
  if (isa == Isa::kAvx2 || isa == Isa::kAmx) return kAvx2;
#endif
  return kScalar;
}

// A 64-byte aligned scratch buffer (a std::vector underneath: allocation failure behaves as elsewhere in TF).
class Scratch {
 public:
  explicit Scratch(int64_t words) : storage_(words + 8) {
    auto address = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = storage_.data() + ((64 - address % 64) % 64) / sizeof(uint64_t);
  }
  uint64_t* data() { return data_; }

 private:
  std::vector<uint64_t> storage_;
  uint64_t* data_;
};

int64_t NumStrips(int64_t n) { return CeilDiv(n, kNr); }
int64_t PackedBWords(int64_t k, int64_t n) { return NumStrips(n) * kNr * k; }

// Strips of B packed or read at a time: a row of them is 512 bytes of B, read contiguously.
constexpr int64_t kStripBlock = 16;

// Packs rows [p0, p0 + kc) of column strips [strip0, strip1) of a row-major B [k, n] into dst: strip s goes
// to dst + (s - strip0) * strip_words and holds, for p in [0, kc), the kNr values B[p0 + p][s*kNr .. s*kNr +
// kNr) (zero past column n).  Rows are read left to right, so the hardware prefetcher sees plain streams.
void PackBBlock(const uint64_t* b, int64_t n, int64_t p0, int64_t kc, int64_t strip0, int64_t strip1,
                int64_t strip_words, uint64_t* dst) {
  const int64_t full_end = std::min(strip1, n / kNr);  // strips [strip0, full_end) lie inside B
  for (int64_t p = 0; p < kc; ++p) {
    const uint64_t* row = b + (p0 + p) * n;
    uint64_t* out = dst + p * kNr;
    int64_t s = strip0;
    for (; s < full_end; ++s, out += strip_words) std::memcpy(out, row + s * kNr, kNr * sizeof(uint64_t));
    for (; s < strip1; ++s, out += strip_words) {
      for (int64_t j = 0; j < kNr; ++j) out[j] = s * kNr + j < n ? row[s * kNr + j] : 0;
    }
  }
}

// Packs `count` row-major [k, n] matrices (one after the other) whole into `packed`, each as NumStrips(n)
// strips of k x kNr (so any kc-block of a strip is contiguous), in parallel over blocks of strips.
void PackB(const uint64_t* b, int64_t count, int64_t k, int64_t n, uint64_t* packed, int64_t threads,
           const ParallelForFn& pf) {
  const int64_t strips = NumStrips(n);
  const int64_t blocks = CeilDiv(strips, kStripBlock);
  const int64_t words = PackedBWords(k, n);
  RunWorkers(pf, threads, count * blocks, k * kNr * kStripBlock, [&](std::atomic<int64_t>& next) {
    for (int64_t u = next++; u < count * blocks; u = next++) {
      const int64_t g = u / blocks;
      const int64_t strip0 = (u % blocks) * kStripBlock;
      PackBBlock(b + g * k * n, n, 0, k, strip0, std::min(strips, strip0 + kStripBlock), k * kNr,
                 packed + g * words + strip0 * k * kNr);
    }
  });
}

// Packs rows [row0, row0 + rows) x columns [col0, col0 + cols) of a row-major matrix into kMr-row panels:
// panel i holds, for p in [0, cols), the kMr values A[row0 + i*kMr + r][col0 + p] (zero past the last row).
class DenseAPacker {
 public:
  DenseAPacker(const uint64_t* a, int64_t m, int64_t k, const int64_t* a_index)
      : a_(a), m_(m), k_(k), a_index_(a_index) {}

  void Pack(int64_t g, int64_t row0, int64_t rows, int64_t col0, int64_t cols, uint64_t* dst) const {
    const uint64_t* a = a_ + (a_index_ ? a_index_[g] : g) * m_ * k_ + col0;
    for (int64_t i = 0; i < rows; i += kMr, dst += cols * kMr) {
      const int64_t panel_rows = std::min(kMr, rows - i);
      const uint64_t* src[kMr];
      for (int64_t r = 0; r < kMr; ++r) src[r] = a + (row0 + i + std::min(r, panel_rows - 1)) * k_;
      if (panel_rows == kMr) {
        for (int64_t p = 0; p < cols; ++p) {
          for (int64_t r = 0; r < kMr; ++r) dst[p * kMr + r] = src[r][p];
        }
      } else {
        for (int64_t p = 0; p < cols; ++p) {
          for (int64_t r = 0; r < kMr; ++r) dst[p * kMr + r] = r < panel_rows ? src[r][p] : 0;
        }
      }
    }
  }

 private:
  const uint64_t* a_;
  int64_t m_, k_;
  const int64_t* a_index_;
};

// The im2col matrix of a convolution, packed straight from the image: row (b, oh, ow), column (kh, kw, ci)
// holds input[b, oh*sh - pad_top + kh, ow*sw - pad_left + kw, ci], or 0 in the padding.
class Im2ColAPacker {
 public:
  explicit Im2ColAPacker(const Conv2DArgs& args) : g_(args), k_(args.filter_h * args.filter_w * args.in_c) {}

  void Pack(int64_t /*g*/, int64_t row0, int64_t rows, int64_t col0, int64_t cols, uint64_t* dst) const {
    // Output coordinates of row0, then advanced row by row (no division per row).
    const int64_t out_hw = g_.out_h * g_.out_w;
    int64_t b = row0 / out_hw;
    int64_t oh = (row0 % out_hw) / g_.out_w;
    int64_t ow = row0 % g_.out_w;
    const bool whole_rows = col0 == 0 && cols == k_;
    const int64_t tap_run = g_.filter_w * g_.in_c;  // one filter row of the window, contiguous in the image
    for (int64_t i = 0; i < rows; i += kMr, dst += cols * kMr) {
      for (int64_t r = 0; r < kMr; ++r) {
        uint64_t* out = dst + r;
        if (i + r >= rows) {
          for (int64_t p = 0; p < cols; ++p) out[p * kMr] = 0;
          continue;
        }
        const int64_t ih0 = oh * g_.stride_h - g_.pad_top;
        const int64_t iw0 = ow * g_.stride_w - g_.pad_left;
        const uint64_t* image = g_.input + b * g_.in_h * g_.in_w * g_.in_c;
        if (whole_rows && ih0 >= 0 && ih0 + g_.filter_h <= g_.in_h && iw0 >= 0 &&
            iw0 + g_.filter_w <= g_.in_w) {
          // The window lies inside the image: filter_h contiguous runs.
          for (int64_t kh = 0; kh < g_.filter_h; ++kh, out += tap_run * kMr) {
            const uint64_t* src = image + ((ih0 + kh) * g_.in_w + iw0) * g_.in_c;
            for (int64_t t = 0; t < tap_run; ++t) out[t * kMr] = src[t];
          }
        } else {
          PackRowGeneral(image, ih0, iw0, col0, cols, out);
        }
        if (++ow == g_.out_w) {
          ow = 0;
          if (++oh == g_.out_h) {
            oh = 0;
            ++b;
          }
        }
      }
    }
  }

 private:
  // Columns [col0, col0 + cols) of one im2col row, walked as runs of consecutive channels at one tap.
  void PackRowGeneral(const uint64_t* image, int64_t ih0, int64_t iw0, int64_t col0, int64_t cols,
                      uint64_t* out) const {
    int64_t kh = col0 / (g_.filter_w * g_.in_c);
    int64_t kw = (col0 / g_.in_c) % g_.filter_w;
    int64_t ci = col0 % g_.in_c;
    for (int64_t p = 0; p < cols;) {
      const int64_t run = std::min(g_.in_c - ci, cols - p);
      const int64_t ih = ih0 + kh;
      const int64_t iw = iw0 + kw;
      uint64_t* o = out + p * kMr;
      if (ih >= 0 && ih < g_.in_h && iw >= 0 && iw < g_.in_w) {
        const uint64_t* src = image + (ih * g_.in_w + iw) * g_.in_c + ci;
        for (int64_t t = 0; t < run; ++t) o[t * kMr] = src[t];
      } else {
        for (int64_t t = 0; t < run; ++t) o[t * kMr] = 0;
      }
      p += run;
      ci = 0;
      if (++kw == g_.filter_w) {
        kw = 0;
        ++kh;
      }
    }
  }

  Conv2DArgs g_;
  int64_t k_;
};

// The right-hand matrices: packed whole before the product and shared by all threads, or (when only one row
// panel of A uses each of them, so that a shared copy would not be reused) packed by each thread, a block of
// kStripBlock strips x kc rows at a time, just before use.
struct BOperand {
  const uint64_t* data = nullptr;  // packed strips, or the row-major input matrices
  bool packed = true;
  const int64_t* index = nullptr;  // batch -> matrix; null for the identity
};

template <class APacker>
void Drive(const APacker& a, const BOperand& b, int64_t batches, int64_t m, int64_t k, int64_t n, uint64_t* c,
           Isa isa, int num_threads, const ParallelForFn& pf) {
  if (batches == 0 || m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(c, c + batches * m * n, uint64_t{0});
    return;
  }
  const MicroKernel* kernels = KernelsFor(isa);
  const int64_t threads = std::max(1, num_threads);
  const int64_t k_blocks = CeilDiv(k, kKc);
  const int64_t kc = CeilDiv(k, k_blocks);
  // Row blocks of at most kMc rows; smaller ones (down to kMinMc) when that is needed for about 8 units per
  // thread, so that the workers' dynamic sharing of units evens out.
  const int64_t wanted_units = 8 * threads;
  int64_t row_blocks = CeilDiv(m, kMc);
  if (batches * row_blocks < wanted_units) {
    row_blocks = std::max(row_blocks, std::min(CeilDiv(wanted_units, batches), CeilDiv(m, kMinMc)));
  }
  const int64_t mc = RoundUp(CeilDiv(m, row_blocks), kMr);
  row_blocks = CeilDiv(m, mc);
  // Column blocks only when rows and batches alone give too few units.
  const int64_t strips = NumStrips(n);
  int64_t col_blocks = 1;
  if (batches * row_blocks < 2 * threads) {
    col_blocks = std::min(strips, CeilDiv(2 * threads, batches * row_blocks));
  }
  const int64_t strips_per_block = CeilDiv(strips, col_blocks);
  col_blocks = CeilDiv(strips, strips_per_block);
  const int64_t b_stride = b.packed ? PackedBWords(k, n) : k * n;
  const int64_t strip_block = b.packed ? strips_per_block : kStripBlock;
  const int64_t units = batches * row_blocks * col_blocks;
  const int64_t cost = std::max<int64_t>(1, mc * k * strips_per_block);

  RunWorkers(pf, threads, units, cost, [&](std::atomic<int64_t>& next) {
    Scratch a_buffer(mc * kc);
    Scratch b_buffer(b.packed ? 0 : kStripBlock * kc * kNr);
    uint64_t c_edge[kMr * kNr];
    for (int64_t u = next++; u < units; u = next++) {
      const int64_t g = u / (row_blocks * col_blocks);
      const int64_t rb = (u / col_blocks) % row_blocks;
      const int64_t cb = u % col_blocks;
      const int64_t row0 = rb * mc;
      const int64_t rows = std::min(mc, m - row0);
      const int64_t strip0 = cb * strips_per_block;
      const int64_t strip1 = std::min(strips, strip0 + strips_per_block);
      const uint64_t* b_g = b.data + (b.index ? b.index[g] : g) * b_stride;
      uint64_t* c_g = c + g * m * n;
      for (int64_t p0 = 0; p0 < k; p0 += kc) {
        const int64_t kcur = std::min(kc, k - p0);
        const bool accumulate = p0 > 0;
        a.Pack(g, row0, rows, p0, kcur, a_buffer.data());
        for (int64_t sb = strip0; sb < strip1; sb += strip_block) {
          const int64_t sb_end = std::min(strip1, sb + strip_block);
          const uint64_t* b_block = b_g + sb * kNr * k + p0 * kNr;
          int64_t strip_words = kNr * k;
          if (!b.packed) {
            PackBBlock(b_g, n, p0, kcur, sb, sb_end, kNr * kcur, b_buffer.data());
            b_block = b_buffer.data();
            strip_words = kNr * kcur;
          }
          for (int64_t s = sb; s < sb_end; ++s) {
            const uint64_t* b_panel = b_block + (s - sb) * strip_words;
            const int64_t col = s * kNr;
            const int64_t cols = std::min(kNr, n - col);
            for (int64_t i = 0; i < rows; i += kMr) {
              const uint64_t* a_panel = a_buffer.data() + i * kcur;
              uint64_t* c_tile = c_g + (row0 + i) * n + col;
              const int64_t tile_rows = std::min(kMr, rows - i);
              const MicroKernel kernel = kernels[tile_rows];
              if (cols == kNr) {
                kernel(kcur, a_panel, b_panel, c_tile, n, accumulate);
                continue;
              }
              kernel(kcur, a_panel, b_panel, c_edge, kNr, false);
              for (int64_t r = 0; r < tile_rows; ++r) {
                for (int64_t j = 0; j < cols; ++j) {
                  uint64_t& out = c_tile[r * n + j];
                  out = accumulate ? out + c_edge[r * kNr + j] : c_edge[r * kNr + j];
                }
              }
            }
          }
        }
      }
    }
  });
}

// A shared packed copy of B (written once, then read by every row block) pays when more than one row block or
// batch uses each B; when a single row block does, packing each block of B just before use reads B as often
// and skips writing and re-reading the copy.
bool PackRightHandSide(const BatchedMatMulArgs& args) {
  return args.m > kMinMc || args.b_count < args.batches;
}

}  // namespace

Isa BestIsa() {
  if (AmxUsable()) return Isa::kAmx;
#ifdef TFPPML_HAVE_AVX2_KERNEL
  if (MaxCpuIsa() >= CpuIsa::kAvx2) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

const char* IsaName(Isa isa) { return isa == Isa::kAmx ? "amx" : isa == Isa::kAvx2 ? "avx2" : "scalar"; }

int64_t BatchedMatMulWorkspaceWords(const BatchedMatMulArgs& args) {
  return PackRightHandSide(args) ? args.b_count * PackedBWords(args.k, args.n) : 0;
}

void BatchedMatMul(const BatchedMatMulArgs& args, uint64_t* workspace, Isa isa, int num_threads,
                   const ParallelForFn& parallel_for) {
  if (args.batches == 0 || args.m == 0 || args.n == 0) return;
  // The tile unit pays once a product fills its 32 x 32 blocks and 64-byte k rows; thin ones (a single query's
  // row, ten logits) stay on the micro-kernel.
  if (isa == Isa::kAmx && args.m >= 32 && args.n >= 32 && args.k >= 64) {
    BatchedMatMulAmx(args, num_threads, parallel_for);
    return;
  }
  BOperand b;
  b.index = args.b_index;
  b.packed = PackRightHandSide(args);
  if (b.packed) {
    PackB(args.b, args.b_count, args.k, args.n, workspace, num_threads, parallel_for);
    b.data = workspace;
  } else {
    b.data = args.b;
  }
  DenseAPacker packer(args.a, args.m, args.k, args.a_index);
  Drive(packer, b, args.batches, args.m, args.k, args.n, args.c, isa, num_threads, parallel_for);
}

int64_t Conv2DWorkspaceWords(const Conv2DArgs& args) {
  return PackedBWords(args.filter_h * args.filter_w * args.in_c, args.out_c);
}

void Conv2D(const Conv2DArgs& args, uint64_t* workspace, Isa isa, int num_threads,
            const ParallelForFn& parallel_for) {
  const int64_t m = args.batch * args.out_h * args.out_w;
  const int64_t k = args.filter_h * args.filter_w * args.in_c;
  if (m == 0 || args.out_c == 0) return;
  PackB(args.filters, 1, k, args.out_c, workspace, num_threads, parallel_for);
  BOperand b;
  b.data = workspace;
  Im2ColAPacker packer(args);
  Drive(packer, b, 1, m, k, args.out_c, args.output, isa, num_threads, parallel_for);
}

}  // namespace ring_gemm
}  // namespace tfppml
