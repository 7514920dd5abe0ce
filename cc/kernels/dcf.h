// Distributed comparison functions (DCF): two-party function secret sharing of the comparison
//
//     f(x) = beta   if x < alpha   (unsigned, on `bits`-bit integers)
//            0      otherwise,
//
// with beta a pair of ring elements (Z_2^64 x Z_2^64).  A dealer who knows alpha and beta makes two keys; each
// alone is pseudo-random, and for every x the two parties' outputs Eval(0, k0, x) + Eval(1, k1, x) = f(x) mod 2^64.
// The MPC ReLU (tfppml/mpc/runtime.py) uses it to get a sign bit and a product with it from one opened value:
// one round instead of a binary adder's eight.
//
// Construction: the tree of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumaraswamy and Tomar, "Function Secret
// Sharing for Mixed-Mode and Fixed-Point Secure Computation" (Eurocrypt 2021), DCF of Figure 1: 127-bit seeds
// and a control bit per node; a correction word per level (seed, two control bits, a payload correction).
// PRG: fixed-key AES-128 in Matyas-Meyer-Oseas form, G_j(s) = AES_{K_j}(s) ^ s for four public keys K_0..3
// (left seed, right seed, left payload, right payload), so evaluating a level costs two AES blocks.
//
// Key layout (uint64 words, DcfKeyWords(bits) per element): the party's root seed is not in it (each party
// derives its own from a key it shares with the dealer); the correction words, common to both parties, are
//   [4i, 4i+4)   level i (i = 0 is the most significant bit): seed correction (lo, hi), payload correction (2)
//   4*bits       left control-bit corrections, bit i for level i
//   4*bits + 1   right control-bit corrections
//   4*bits + 2   final payload correction (2 words)
#ifndef TFPPML_CC_KERNELS_DCF_H_
#define TFPPML_CC_KERNELS_DCF_H_

#include <cstdint>

namespace tfppml {

constexpr int kDcfPayloadWords = 2;
constexpr int64_t kDcfGenCost = 64 * 8 * 30;   // cycles per element at 64 bits, roughly (eight AES per level)
constexpr int64_t kDcfEvalCost = 64 * 2 * 30;  // cycles per evaluation point at 64 bits (two AES per level)

inline int64_t DcfKeyWords(int bits) { return 4 * static_cast<int64_t>(bits) + 4; }

// Whether the AES rounds run on AES-NI: the CPU has it and TFPPML_ISA is not "scalar".  Both paths give the
// same bits (the portable one is a plain table-driven AES, not constant time).
bool DcfUsesAesNi();

// Correction words of elements [begin, end): alpha[e] < 2^bits, beta[e] is 2 words, seed0/seed1[e] the two
// parties' root seeds (2 words each; bit 0 is ignored), cw[e] gets DcfKeyWords(bits) words.
void DcfGen(int bits, int64_t begin, int64_t end, const uint64_t* alpha, const uint64_t* beta,
            const uint64_t* seed0, const uint64_t* seed1, uint64_t* cw);

// Party `party` (0 or 1) evaluates its key of element e at points x[e * points + p], p < points, for elements
// [begin, end); out[(e * points + p) * 2 + c] gets payload word c of its share.
void DcfEval(int bits, int party, int64_t points, int64_t begin, int64_t end, const uint64_t* seed,
             const uint64_t* cw, const uint64_t* x, uint64_t* out);

// Whether all n values fit in `bits` bits (the domain of a `bits`-bit DCF).
bool DcfInDomain(int bits, const uint64_t* values, int64_t n);

// AES-128 encryption of n 16-byte blocks under `key` (FIPS-197), on the same path the DCF uses; for tests.
void Aes128Encrypt(const uint8_t key[16], const uint64_t* in, int64_t n, uint64_t* out);

}  // namespace tfppml

#endif  // TFPPML_CC_KERNELS_DCF_H_
