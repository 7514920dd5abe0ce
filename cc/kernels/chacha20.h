// The ChaCha20 block function, shared by the PRG (cc/kernels/prg_kernels.cc) and the Gaussian noise kernels
// (cc/kernels/gaussian_noise_kernels.cc).
//
// D. J. Bernstein's original layout: a 64-bit block counter in state words 12-13 and a 64-bit nonce in words
// 14-15.  A 256-bit key uses the "expand 32-byte k" constants; a 128-bit key uses "expand 16-byte k" with the
// key repeated, as the specification says.
#ifndef TFPPML_CC_KERNELS_CHACHA20_H_
#define TFPPML_CC_KERNELS_CHACHA20_H_

#include <cstdint>

namespace tfppml {

constexpr int kChaChaLanes = 8;          // blocks computed together by ChaCha20Blocks
constexpr int kChaChaWordsPerBlock = 8;  // a 64-byte block is 8 uint64 words
constexpr int64_t kChaChaBlockCost = 400;  // cycles per block, roughly (for ParallelFor cost hints)

// Fills `state` for a key of `key_words` uint64 words (2: 128-bit key, 4: 256-bit key; little-endian bytes),
// block counter 0 and the given 64-bit nonce.
void ChaCha20Init(const uint64_t* key, int key_words, uint64_t nonce, uint32_t state[16]);

// Writes kChaChaLanes consecutive keystream blocks, block counters first .. first + kChaChaLanes - 1, to out
// (block-major).  Keystream bytes are read as little-endian uint64 words.  Uses AVX2 when MaxCpuIsa() allows it.
void ChaCha20Blocks(const uint32_t state[16], uint64_t first, uint64_t out[kChaChaLanes][kChaChaWordsPerBlock]);

// 2 * kChaChaLanes consecutive blocks (the same words as two ChaCha20Blocks calls): sixteen at a time in 512-bit
// registers when MaxCpuIsa() allows AVX-512, else two calls of ChaCha20Blocks.
void ChaCha20Blocks16(const uint32_t state[16], uint64_t first, uint64_t out[2 * kChaChaLanes][kChaChaWordsPerBlock]);

// The same blocks from portable (baseline x86-64) code, whatever the CPU; for tests of both paths.
void ChaCha20BlocksPortable(const uint32_t state[16], uint64_t first,
                            uint64_t out[kChaChaLanes][kChaChaWordsPerBlock]);

}  // namespace tfppml

#endif  // TFPPML_CC_KERNELS_CHACHA20_H_
