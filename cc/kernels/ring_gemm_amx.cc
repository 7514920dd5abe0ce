// The ring GEMM on Intel AMX (see ring_gemm.h): C = A x B mod 2^64 from 8-bit integer tile products.
//
// Why it is exact.  Split each ring element into bytes, a = sum_i a_i 2^(8i).  Then
//   a*b mod 2^64 = sum_{s=0..7} 2^(8s) * sum_{i+j=s} a_i b_j   (mod 2^64; pairs with i+j >= 8 vanish),
// so C = sum_s 2^(8s) S_s with S_s = sum_{i+j=s} A_i B_j, where A_i, B_j are the byte planes (matrices of one
// byte of every element).  Each S_s is a sum of (s+1) unsigned 8-bit matrix products, which TDPBUUD accumulates
// in 32-bit lanes, wrapping mod 2^32.  For s >= 4 only S_s mod 2^(64-8s), at most 32 bits, reaches C, so the
// wrap is harmless; for s <= 3 the sum must be exact, and it is below (s+1) * kc * 255^2 < 2^32 for kc <= 16384
// columns of k per pass (kKChunk below), so it is.  Each pass's S_s is zero-extended, shifted and added into
// 64-bit C.
//
// Why it is fast.  A TDPBUUD does 16 x 16 x 64 byte products in ~16 cycles; the 36 byte-pair products of a ring
// product still come to ~0.04 cycles per ring multiply-add, against ~0.3 for the AVX2 micro-kernel (which is
// bound by its 32-bit multipliers).  In practice the tile loads (one per TDPBUUD with 2 x 2 accumulator tiles)
// and the byte-plane packing bound it: measured on 2 vCPUs of a Sapphire Rapids Xeon, a 1024^3 ring matmul took
// 41 ms against 75 ms for the AVX2 micro-kernel (benchmarks/ring_ops.py has the current figures).
//
// Layout.  Every tile the kernel loads is 1 KiB of contiguous memory: A's planes are [8][m_pad/16][k_pad/64]
// tiles of 16 rows x 64 bytes; B's planes are in the tile unit's "VNNI" layout (four consecutive k of one column
// together), [8][n_pad/16][k_pad/4] rows of 16 columns x 4 bytes.
// Work is split into blocks of 32 x 32 outputs (2 x 2 accumulator tiles), taken by threads from a counter.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cc/kernels/cpu_isa.h"
#include "cc/kernels/ring_gemm.h"

#if defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define TFPPML_HAVE_AMX_KERNEL 1
#endif

namespace tfppml {
namespace ring_gemm {

#ifdef TFPPML_HAVE_AMX_KERNEL
namespace {

constexpr int64_t kTile = 16;           // rows of a tile; also its int32 columns
constexpr int64_t kTileK = 64;          // bytes of k per tile row
constexpr int64_t kBlock = 2 * kTile;   // outputs per block side (2 x 2 accumulator tiles)
constexpr int64_t kKChunk = 8192;       // k per pass: keeps S_0..S_3 exact (see the top of the file)
constexpr int kBytes = 8;

// Linux keeps AMX's 8 KiB register state off until a process asks for it (arch_prctl, Linux 5.16+).
bool RequestAmxPermission() {
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Byte planes of rows [row0, row1) of A (row-major [m, k] uint64) into tiles:
// planes[i][row / 16][col / 64][row % 16][col % 64] (plane stride plane_stride, k_pad columns), so that every
// 16 x 64-byte tile is 1 KiB of contiguous memory (a strided tile of rows k_pad bytes apart hit one cache set).
// Eight elements at a time: vpmovqb takes the low byte of each of eight words.
__attribute__((target("avx512f,avx512bw"))) void PackAPlanes(const uint64_t* a, int64_t k, int64_t row0,
                                                             int64_t row1, int64_t k_pad, int64_t plane_stride,
                                                             uint8_t* planes) {
  for (int64_t r = row0; r < row1; ++r) {
    const uint64_t* src = a + r * k;
    uint8_t* row_base = planes + (r / kTile) * kTile * k_pad + (r % kTile) * kTileK;
    for (int64_t c = 0; c < k; c += 8) {
      const __mmask8 valid = static_cast<__mmask8>(k - c >= 8 ? 0xff : (1u << (k - c)) - 1);
      __m512i v = _mm512_maskz_loadu_epi64(valid, src + c);
      uint8_t* dst = row_base + (c / kTileK) * kTile * kTileK + c % kTileK;
      for (int i = 0; i < kBytes; ++i, v = _mm512_srli_epi64(v, 8)) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i * plane_stride), _mm512_cvtepi64_epi8(v));
      }
    }
  }
}

// Byte planes of k-groups [group0, group1) (4 rows of B each) into tiles in the VNNI layout:
// planes[i][col / 16][group][col % 16][4] (plane stride plane_stride), so a B tile (16 groups x 16 columns x 4
// bytes) is 1 KiB of contiguous memory.  Sixteen columns of a group at a time: the low bytes of its four rows
// side by side, then one byte permutation (vpermb) interleaves them column by column.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void PackBPlanes(const uint64_t* b, int64_t k, int64_t n,
                                                                        int64_t group0, int64_t group1,
                                                                        int64_t k_pad, int64_t plane_stride,
                                                                        uint8_t* planes) {
  const int64_t strip = (k_pad / 4) * kTile * 4;  // bytes of one 16-column strip of a plane
  alignas(64) uint8_t order[64];
  for (int c = 0; c < kTile; ++c) {
    for (int q = 0; q < 4; ++q) order[4 * c + q] = static_cast<uint8_t>(q * kTile + c);
  }
  const __m512i interleave = _mm512_load_si512(order);
  for (int64_t g = group0; g < group1; ++g) {
    for (int64_t c0 = 0; c0 < n; c0 += kTile) {
      // rows[q][h]: columns c0 + 8h .. c0 + 8h + 7 of row 4g + q (zero past k or n).
      __m512i rows[4][2];
      for (int q = 0; q < 4; ++q) {
        const int64_t row = 4 * g + q;
        for (int h = 0; h < 2; ++h) {
          const int64_t c = c0 + 8 * h;
          const int64_t left = row < k ? n - c : 0;
          const __mmask8 valid = static_cast<__mmask8>(left >= 8 ? 0xff : left <= 0 ? 0 : (1u << left) - 1);
          rows[q][h] = _mm512_maskz_loadu_epi64(valid, valid ? b + row * n + c : b);
        }
      }
      uint8_t* dst = planes + (c0 / kTile) * strip + g * kTile * 4;
      for (int i = 0; i < kBytes; ++i) {
        __m512i bytes = _mm512_setzero_si512();
        for (int q = 0; q < 4; ++q) {
          const __m128i lo = _mm512_cvtepi64_epi8(rows[q][0]), hi = _mm512_cvtepi64_epi8(rows[q][1]);
          // Row q's 16 bytes into 128-bit lane q (a masked broadcast: inserti32x4 needs a constant lane).
          bytes = _mm512_mask_broadcast_i32x4(bytes, static_cast<__mmask16>(0xF << (4 * q)),
                                              _mm_unpacklo_epi64(lo, hi));
          rows[q][0] = _mm512_srli_epi64(rows[q][0], 8);
          rows[q][1] = _mm512_srli_epi64(rows[q][1], 8);
        }
        _mm512_storeu_si512(dst + i * plane_stride, _mm512_permutexvar_epi8(interleave, bytes));
      }
    }
  }
}

// One 32 x 32 block of C from the planes: C[rows, cols] (+)= sum_s 2^(8s) sum_{i+j=s} A_i B_j over k in
// [k0, k0 + kc).  Needs the tile configuration of ConfigureTiles loaded in this thread.
__attribute__((target("amx-tile,amx-int8,avx512f"))) void Block(
    const uint8_t* a_planes, int64_t a_stride, int64_t k_pad, const uint8_t* b_planes, int64_t b_stride,
    int64_t row0, int64_t col0, int64_t k0, int64_t kc, uint64_t acc[kBlock][kBlock]) {
  alignas(64) int32_t s_tile[kBlock][kBlock];
  constexpr int64_t kTileBytes = kTile * kTileK;
  const int64_t a_rows = kTile * k_pad;          // bytes of 16 rows of an A plane
  const int64_t b_strip = (k_pad / 4) * kTile * 4;  // bytes of 16 columns of a B plane
  for (int s = 0; s < kBytes; ++s) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int i = 0; i <= s; ++i) {
      const int j = s - i;
      const uint8_t* a_i = a_planes + i * a_stride + (row0 / kTile) * a_rows;
      const uint8_t* b_j = b_planes + j * b_stride + (col0 / kTile) * b_strip;
      for (int64_t kk = k0; kk < k0 + kc; kk += kTileK) {
        const uint8_t* a_tile = a_i + (kk / kTileK) * kTileBytes;
        const uint8_t* b_tile = b_j + (kk / kTileK) * kTileBytes;  // 16 groups of 4 k = 64 k per tile
        _tile_loadd(4, a_tile, kTileK);
        _tile_loadd(5, a_tile + a_rows, kTileK);
        _tile_loadd(6, b_tile, kTileK);
        _tile_loadd(7, b_tile + b_strip, kTileK);
        _tile_dpbuud(0, 4, 6);
        _tile_dpbuud(1, 4, 7);
        _tile_dpbuud(2, 5, 6);
        _tile_dpbuud(3, 5, 7);
      }
    }
    _tile_stored(0, &s_tile[0][0], kBlock * 4);
    _tile_stored(1, &s_tile[0][kTile], kBlock * 4);
    _tile_stored(2, &s_tile[kTile][0], kBlock * 4);
    _tile_stored(3, &s_tile[kTile][kTile], kBlock * 4);
    // Zero-extend each 32-bit sum, shift it to its byte position and add: 8 lanes per step.
    for (int64_t r = 0; r < kBlock; ++r) {
      for (int64_t c = 0; c < kBlock; c += 8) {
        const __m512i sums =
            _mm512_cvtepu32_epi64(_mm256_load_si256(reinterpret_cast<const __m256i*>(&s_tile[r][c])));
        __m512i* dst = reinterpret_cast<__m512i*>(&acc[r][c]);
        _mm512_store_si512(dst, _mm512_add_epi64(_mm512_load_si512(dst), _mm512_slli_epi64(sums, 8 * s)));
      }
    }
  }
}

__attribute__((target("amx-tile,amx-int8"))) void ConfigureTiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTile;
    config.colsb[t] = 64;  // 64 bytes: 64 int8 of A or B, 16 int32 of an accumulator
  }
  // GCC's _tile_loadconfig tells the compiler it reads only the first 8 bytes, which let it drop the stores of
  // rows and colsb above (ldtilecfg then faults on a palette with no tiles): make them all visible first.
  __asm__ __volatile__("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

__attribute__((target("amx-tile"))) void ReleaseTiles() { _tile_release(); }

}  // namespace

bool AmxUsable() {
  static const bool usable = [] {
    if (MaxCpuIsa() < CpuIsa::kAmx) return false;
    return RequestAmxPermission();
  }();
  return usable;
}

void BatchedMatMulAmx(const BatchedMatMulArgs& args, int num_threads, const ParallelForFn& pf) {
  const int64_t m = args.m, k = args.k, n = args.n;
  const int64_t m_pad = RoundUp(m, kBlock), n_pad = RoundUp(n, kBlock), k_pad = RoundUp(std::max<int64_t>(k, 1), kTileK);
  const int64_t a_count = [&] {
    if (args.a_index == nullptr) return args.batches;
    int64_t most = 0;
    for (int64_t g = 0; g < args.batches; ++g) most = std::max(most, args.a_index[g] + 1);
    return most;
  }();
  const int64_t a_plane = m_pad * k_pad, b_plane = (k_pad / 4) * n_pad * 4;
  // Zero-initialised: the padding rows, columns and k stay zero.
  std::vector<uint8_t> a_planes(static_cast<size_t>(a_count * kBytes * a_plane), 0);
  std::vector<uint8_t> b_planes(static_cast<size_t>(args.b_count * kBytes * b_plane), 0);
  const int64_t threads = std::max(1, num_threads);

  // Planes, in parallel over blocks of 16 rows of A and 16 k-groups of B.
  const int64_t a_per = CeilDiv(m, kTile), b_groups = k_pad / 4, b_per = CeilDiv(b_groups, kTile);
  const int64_t a_units = a_count * a_per, b_units = args.b_count * b_per;
  RunWorkers(pf, threads, a_units + b_units, kTile * std::max(k, n) * 8, [&](std::atomic<int64_t>& next) {
    for (int64_t u = next++; u < a_units + b_units; u = next++) {
      if (u < a_units) {
        const int64_t g = u / a_per, r0 = (u % a_per) * kTile;
        PackAPlanes(args.a + g * m * k, k, r0, std::min(m, r0 + kTile), k_pad, a_plane,
                    a_planes.data() + g * kBytes * a_plane);
      } else {
        const int64_t g = (u - a_units) / b_per, q0 = ((u - a_units) % b_per) * kTile;
        PackBPlanes(args.b + g * k * n, k, n, q0, std::min(b_groups, q0 + kTile), k_pad, b_plane,
                    b_planes.data() + g * kBytes * b_plane);
      }
    }
  });

  const int64_t row_blocks = m_pad / kBlock, col_blocks = n_pad / kBlock;
  const int64_t units = args.batches * row_blocks * col_blocks;
  RunWorkers(pf, threads, units, 36 * k_pad * kBlock * kBlock / 64, [&](std::atomic<int64_t>& next) {
    ConfigureTiles();
    alignas(64) uint64_t acc[kBlock][kBlock];
    for (int64_t u = next++; u < units; u = next++) {
      const int64_t g = u / (row_blocks * col_blocks);
      const int64_t rb = (u / col_blocks) % row_blocks, cb = u % col_blocks;
      const int64_t ag = args.a_index ? args.a_index[g] : g;
      const int64_t bg = args.b_index ? args.b_index[g] : g;
      std::memset(acc, 0, sizeof(acc));
      for (int64_t k0 = 0; k0 < k_pad; k0 += kKChunk) {
        Block(a_planes.data() + ag * kBytes * a_plane, a_plane, k_pad, b_planes.data() + bg * kBytes * b_plane,
              b_plane, rb * kBlock, cb * kBlock, k0, std::min(kKChunk, k_pad - k0), acc);
      }
      uint64_t* c = args.c + g * m * n;
      const int64_t rows = std::min(kBlock, m - rb * kBlock), cols = std::min(kBlock, n - cb * kBlock);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(c + (rb * kBlock + r) * n + cb * kBlock, acc[r], cols * sizeof(uint64_t));
      }
    }
    ReleaseTiles();
  });
}

#else  // no AMX kernel on this platform

bool AmxUsable() { return false; }

void BatchedMatMulAmx(const BatchedMatMulArgs&, int, const ParallelForFn&) {}

#endif  // TFPPML_HAVE_AMX_KERNEL

}  // namespace ring_gemm
}  // namespace tfppml
