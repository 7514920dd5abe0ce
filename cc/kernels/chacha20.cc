// The ChaCha20 block function (see chacha20.h), eight blocks at a time: AVX2 intrinsics (one 256-bit register per
// state word, one lane per block, then a transpose into block order) in a target("avx2") function chosen at run
// time, else portable lane arrays that the compiler vectorises for baseline x86-64.  Sixteen at a time with
// AVX-512 (ChaCha20Blocks16): the same scheme in 512-bit registers, with the rotate instruction (vprold) in
// place of two shifts and an OR; measured on a Xeon (Sapphire Rapids) it produced the PRG's keystream ~2x as
// fast as the AVX2 code.
#include "cc/kernels/chacha20.h"

#include "cc/kernels/cpu_isa.h"

#include <immintrin.h>

#include <cstring>

namespace tfppml {
namespace {

inline uint32_t Rotl(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

}  // namespace

void ChaCha20Init(const uint64_t* key64, int key_words, uint64_t nonce, uint32_t state[16]) {
  uint32_t key[8] = {0};
  for (int i = 0; i < key_words; ++i) {
    key[2 * i] = static_cast<uint32_t>(key64[i]);
    key[2 * i + 1] = static_cast<uint32_t>(key64[i] >> 32);
  }
  if (key_words == 4) {  // "expand 32-byte k"
    state[0] = 0x61707865u, state[1] = 0x3320646eu, state[2] = 0x79622d32u, state[3] = 0x6b206574u;
    for (int i = 0; i < 8; ++i) state[4 + i] = key[i];
  } else {  // "expand 16-byte k": the 16-byte key fills both key halves
    state[0] = 0x61707865u, state[1] = 0x3120646eu, state[2] = 0x79622d36u, state[3] = 0x6b206574u;
    for (int i = 0; i < 4; ++i) state[4 + i] = state[8 + i] = key[i];
  }
  state[12] = state[13] = 0;
  state[14] = static_cast<uint32_t>(nonce);
  state[15] = static_cast<uint32_t>(nonce >> 32);
}

#define TFPPML_QR(a, b, c, d)              \
  for (int l = 0; l < kChaChaLanes; ++l) { \
    x[a][l] += x[b][l];                    \
    x[d][l] = Rotl(x[d][l] ^ x[a][l], 16); \
    x[c][l] += x[d][l];                    \
    x[b][l] = Rotl(x[b][l] ^ x[c][l], 12); \
    x[a][l] += x[b][l];                    \
    x[d][l] = Rotl(x[d][l] ^ x[a][l], 8);  \
    x[c][l] += x[d][l];                    \
    x[b][l] = Rotl(x[b][l] ^ x[c][l], 7);  \
  }

void ChaCha20BlocksPortable(const uint32_t state[16], uint64_t first,
                            uint64_t out[kChaChaLanes][kChaChaWordsPerBlock]) {
  uint32_t x[16][kChaChaLanes];
  uint32_t init[16][kChaChaLanes];
  for (int w = 0; w < 16; ++w) {
    for (int l = 0; l < kChaChaLanes; ++l) init[w][l] = state[w];
  }
  for (int l = 0; l < kChaChaLanes; ++l) {
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
    for (int l = 0; l < kChaChaLanes; ++l) x[w][l] += init[w][l];
  }
  // Keystream bytes are the words in little-endian order, so uint64 word j is words 2j | 2j+1 << 32.
  for (int l = 0; l < kChaChaLanes; ++l) {
    for (int j = 0; j < kChaChaWordsPerBlock; ++j) {
      out[l][j] = static_cast<uint64_t>(x[2 * j][l]) | (static_cast<uint64_t>(x[2 * j + 1][l]) << 32);
    }
  }
}

#undef TFPPML_QR

namespace {

#define TFPPML_ROTL(v, n) _mm256_or_si256(_mm256_slli_epi32(v, n), _mm256_srli_epi32(v, 32 - (n)))
#define TFPPML_QR(a, b, c, d)                                       \
  a = _mm256_add_epi32(a, b);                                       \
  d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot16);           \
  c = _mm256_add_epi32(c, d);                                       \
  b = TFPPML_ROTL(_mm256_xor_si256(b, c), 12);                      \
  a = _mm256_add_epi32(a, b);                                       \
  d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot8);            \
  c = _mm256_add_epi32(c, d);                                       \
  b = TFPPML_ROTL(_mm256_xor_si256(b, c), 7);

// Transposes eight 8-lane rows of 32-bit words and stores column l (block l's eight words) at dst[l] + offset.
#define TFPPML_TRANSPOSE_STORE(r0, r1, r2, r3, r4, r5, r6, r7, dst, offset)                     \
  {                                                                                             \
    const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);      \
    const __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);      \
    const __m256i t4 = _mm256_unpacklo_epi32(r4, r5), t5 = _mm256_unpackhi_epi32(r4, r5);      \
    const __m256i t6 = _mm256_unpacklo_epi32(r6, r7), t7 = _mm256_unpackhi_epi32(r6, r7);      \
    const __m256i s0 = _mm256_unpacklo_epi64(t0, t2), s1 = _mm256_unpackhi_epi64(t0, t2);      \
    const __m256i s2 = _mm256_unpacklo_epi64(t1, t3), s3 = _mm256_unpackhi_epi64(t1, t3);      \
    const __m256i s4 = _mm256_unpacklo_epi64(t4, t6), s5 = _mm256_unpackhi_epi64(t4, t6);      \
    const __m256i s6 = _mm256_unpacklo_epi64(t5, t7), s7 = _mm256_unpackhi_epi64(t5, t7);      \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[0] + offset), _mm256_permute2x128_si256(s0, s4, 0x20)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[1] + offset), _mm256_permute2x128_si256(s1, s5, 0x20)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[2] + offset), _mm256_permute2x128_si256(s2, s6, 0x20)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[3] + offset), _mm256_permute2x128_si256(s3, s7, 0x20)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[4] + offset), _mm256_permute2x128_si256(s0, s4, 0x31)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[5] + offset), _mm256_permute2x128_si256(s1, s5, 0x31)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[6] + offset), _mm256_permute2x128_si256(s2, s6, 0x31)); \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[7] + offset), _mm256_permute2x128_si256(s3, s7, 0x31)); \
  }

__attribute__((target("avx2"))) void ChaCha20BlocksAvx2(const uint32_t state[16], uint64_t first,
                                                        uint64_t out[kChaChaLanes][kChaChaWordsPerBlock]) {
  // Byte shuffles that rotate every 32-bit word left by 16 and by 8.
  const __m256i rot16 = _mm256_set_epi8(13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2, 13, 12, 15, 14, 9, 8,
                                        11, 10, 5, 4, 7, 6, 1, 0, 3, 2);
  const __m256i rot8 = _mm256_set_epi8(14, 13, 12, 15, 10, 9, 8, 11, 6, 5, 4, 7, 2, 1, 0, 3, 14, 13, 12, 15, 10, 9,
                                       8, 11, 6, 5, 4, 7, 2, 1, 0, 3);
  alignas(32) uint32_t counter_lo[kChaChaLanes], counter_hi[kChaChaLanes];
  for (int l = 0; l < kChaChaLanes; ++l) {
    const uint64_t counter = first + static_cast<uint64_t>(l);
    counter_lo[l] = static_cast<uint32_t>(counter);
    counter_hi[l] = static_cast<uint32_t>(counter >> 32);
  }
  const __m256i c12 = _mm256_load_si256(reinterpret_cast<const __m256i*>(counter_lo));
  const __m256i c13 = _mm256_load_si256(reinterpret_cast<const __m256i*>(counter_hi));
#define TFPPML_BROADCAST(w) _mm256_set1_epi32(static_cast<int>(state[w]))
  __m256i x0 = TFPPML_BROADCAST(0), x1 = TFPPML_BROADCAST(1), x2 = TFPPML_BROADCAST(2), x3 = TFPPML_BROADCAST(3);
  __m256i x4 = TFPPML_BROADCAST(4), x5 = TFPPML_BROADCAST(5), x6 = TFPPML_BROADCAST(6), x7 = TFPPML_BROADCAST(7);
  __m256i x8 = TFPPML_BROADCAST(8), x9 = TFPPML_BROADCAST(9), x10 = TFPPML_BROADCAST(10);
  __m256i x11 = TFPPML_BROADCAST(11), x12 = c12, x13 = c13, x14 = TFPPML_BROADCAST(14);
  __m256i x15 = TFPPML_BROADCAST(15);
  for (int round = 0; round < 10; ++round) {
    TFPPML_QR(x0, x4, x8, x12)
    TFPPML_QR(x1, x5, x9, x13)
    TFPPML_QR(x2, x6, x10, x14)
    TFPPML_QR(x3, x7, x11, x15)
    TFPPML_QR(x0, x5, x10, x15)
    TFPPML_QR(x1, x6, x11, x12)
    TFPPML_QR(x2, x7, x8, x13)
    TFPPML_QR(x3, x4, x9, x14)
  }
  x0 = _mm256_add_epi32(x0, TFPPML_BROADCAST(0)), x1 = _mm256_add_epi32(x1, TFPPML_BROADCAST(1));
  x2 = _mm256_add_epi32(x2, TFPPML_BROADCAST(2)), x3 = _mm256_add_epi32(x3, TFPPML_BROADCAST(3));
  x4 = _mm256_add_epi32(x4, TFPPML_BROADCAST(4)), x5 = _mm256_add_epi32(x5, TFPPML_BROADCAST(5));
  x6 = _mm256_add_epi32(x6, TFPPML_BROADCAST(6)), x7 = _mm256_add_epi32(x7, TFPPML_BROADCAST(7));
  x8 = _mm256_add_epi32(x8, TFPPML_BROADCAST(8)), x9 = _mm256_add_epi32(x9, TFPPML_BROADCAST(9));
  x10 = _mm256_add_epi32(x10, TFPPML_BROADCAST(10)), x11 = _mm256_add_epi32(x11, TFPPML_BROADCAST(11));
  x12 = _mm256_add_epi32(x12, c12), x13 = _mm256_add_epi32(x13, c13);
  x14 = _mm256_add_epi32(x14, TFPPML_BROADCAST(14)), x15 = _mm256_add_epi32(x15, TFPPML_BROADCAST(15));
#undef TFPPML_BROADCAST
  // Block l is words x0[l] .. x15[l] in order, i.e. eight uint64 words: transpose rows 0-7 into its first half
  // and rows 8-15 into its second half.
  TFPPML_TRANSPOSE_STORE(x0, x1, x2, x3, x4, x5, x6, x7, out, 0)
  TFPPML_TRANSPOSE_STORE(x8, x9, x10, x11, x12, x13, x14, x15, out, 4)
}

#undef TFPPML_TRANSPOSE_STORE
#undef TFPPML_QR
#undef TFPPML_ROTL

#define TFPPML_QR(a, b, c, d)                                  \
  a = _mm512_add_epi32(a, b);                                  \
  d = _mm512_rol_epi32(_mm512_xor_si512(d, a), 16);            \
  c = _mm512_add_epi32(c, d);                                  \
  b = _mm512_rol_epi32(_mm512_xor_si512(b, c), 12);            \
  a = _mm512_add_epi32(a, b);                                  \
  d = _mm512_rol_epi32(_mm512_xor_si512(d, a), 8);             \
  c = _mm512_add_epi32(c, d);                                  \
  b = _mm512_rol_epi32(_mm512_xor_si512(b, c), 7);

__attribute__((target("avx512f"))) void ChaCha20BlocksAvx512(
    const uint32_t state[16], uint64_t first, uint64_t out[2 * kChaChaLanes][kChaChaWordsPerBlock]) {
  constexpr int kLanes = 2 * kChaChaLanes;
  alignas(64) uint32_t counter_lo[kLanes], counter_hi[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t counter = first + static_cast<uint64_t>(l);
    counter_lo[l] = static_cast<uint32_t>(counter);
    counter_hi[l] = static_cast<uint32_t>(counter >> 32);
  }
  // x[w] holds state word w of the sixteen blocks, one 32-bit lane per block.
  __m512i init[16], x[16];
  for (int w = 0; w < 16; ++w) init[w] = _mm512_set1_epi32(static_cast<int>(state[w]));
  init[12] = _mm512_load_si512(counter_lo);
  init[13] = _mm512_load_si512(counter_hi);
  for (int w = 0; w < 16; ++w) x[w] = init[w];
  for (int round = 0; round < 10; ++round) {
    TFPPML_QR(x[0], x[4], x[8], x[12])
    TFPPML_QR(x[1], x[5], x[9], x[13])
    TFPPML_QR(x[2], x[6], x[10], x[14])
    TFPPML_QR(x[3], x[7], x[11], x[15])
    TFPPML_QR(x[0], x[5], x[10], x[15])
    TFPPML_QR(x[1], x[6], x[11], x[12])
    TFPPML_QR(x[2], x[7], x[8], x[13])
    TFPPML_QR(x[3], x[4], x[9], x[14])
  }
  for (int w = 0; w < 16; ++w) x[w] = _mm512_add_epi32(x[w], init[w]);
  // Transpose the 16 x 16 words (row w, lane l) into blocks (block l = row l of the result).  Unpacks work
  // within 128-bit chunks: after the 32- and 64-bit unpacks, c[W/4][p] holds in chunk q the words W .. W+3 of
  // block 4q + p (W = 0, 4, 8, 12); two rounds of 128-bit chunk shuffles then gather block 4q + p's four chunks.
  __m512i c[4][4];
  for (int W = 0; W < 16; W += 4) {
    const __m512i a0 = _mm512_unpacklo_epi32(x[W], x[W + 1]), b0 = _mm512_unpackhi_epi32(x[W], x[W + 1]);
    const __m512i a2 = _mm512_unpacklo_epi32(x[W + 2], x[W + 3]), b2 = _mm512_unpackhi_epi32(x[W + 2], x[W + 3]);
    c[W / 4][0] = _mm512_unpacklo_epi64(a0, a2);
    c[W / 4][1] = _mm512_unpackhi_epi64(a0, a2);
    c[W / 4][2] = _mm512_unpacklo_epi64(b0, b2);
    c[W / 4][3] = _mm512_unpackhi_epi64(b0, b2);
  }
  for (int p = 0; p < 4; ++p) {
    // _mm512_shuffle_i32x4(a, b, imm): chunks (a[imm & 3], a[imm >> 2 & 3], b[imm >> 4 & 3], b[imm >> 6]).
    const __m512i u0 = _mm512_shuffle_i32x4(c[0][p], c[1][p], 0x44);  // c0.0 c0.1 c1.0 c1.1
    const __m512i u1 = _mm512_shuffle_i32x4(c[2][p], c[3][p], 0x44);  // c2.0 c2.1 c3.0 c3.1
    const __m512i u2 = _mm512_shuffle_i32x4(c[0][p], c[1][p], 0xEE);  // c0.2 c0.3 c1.2 c1.3
    const __m512i u3 = _mm512_shuffle_i32x4(c[2][p], c[3][p], 0xEE);  // c2.2 c2.3 c3.2 c3.3
    _mm512_storeu_si512(out[p], _mm512_shuffle_i32x4(u0, u1, 0x88));       // chunk 0 of each: block p
    _mm512_storeu_si512(out[4 + p], _mm512_shuffle_i32x4(u0, u1, 0xDD));   // chunk 1: block 4 + p
    _mm512_storeu_si512(out[8 + p], _mm512_shuffle_i32x4(u2, u3, 0x88));   // chunk 2: block 8 + p
    _mm512_storeu_si512(out[12 + p], _mm512_shuffle_i32x4(u2, u3, 0xDD));  // chunk 3: block 12 + p
  }
}

#undef TFPPML_QR

}  // namespace

void ChaCha20Blocks(const uint32_t state[16], uint64_t first, uint64_t out[kChaChaLanes][kChaChaWordsPerBlock]) {
  static const bool avx2 = MaxCpuIsa() >= CpuIsa::kAvx2;
  if (avx2) {
    ChaCha20BlocksAvx2(state, first, out);
  } else {
    ChaCha20BlocksPortable(state, first, out);
  }
}

void ChaCha20Blocks16(const uint32_t state[16], uint64_t first,
                      uint64_t out[2 * kChaChaLanes][kChaChaWordsPerBlock]) {
  static const bool avx512 = MaxCpuIsa() >= CpuIsa::kAvx512;
  if (avx512) {
    ChaCha20BlocksAvx512(state, first, out);
  } else {
    ChaCha20Blocks(state, first, out);
    ChaCha20Blocks(state, first + kChaChaLanes, out + kChaChaLanes);
  }
}

}  // namespace tfppml
