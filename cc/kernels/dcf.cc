// DCF key generation and evaluation (see dcf.h), and their ctypes entries tfppml_dcf_gen / tfppml_dcf_eval.
#include "cc/kernels/dcf.h"

#include <cstring>

#include "cc/kernels/cpu_isa.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace tfppml {
namespace {

struct Block {
  uint64_t lo, hi;
};

inline Block Xor(Block a, Block b) { return {a.lo ^ b.lo, a.hi ^ b.hi}; }
inline Block ClearBit0(Block a) { return {a.lo & ~uint64_t{1}, a.hi}; }
inline Block Select(bool take, Block a) { return take ? a : Block{0, 0}; }

// ----- AES-128 -----------------------------------------------------------------------------------------------

inline uint8_t Xtime(uint8_t x) { return static_cast<uint8_t>((x << 1) ^ ((x >> 7) * 0x1b)); }

uint8_t GfMul(uint8_t a, uint8_t b) {
  uint8_t p = 0;
  for (; b != 0; b >>= 1, a = Xtime(a)) {
    if (b & 1) p ^= a;
  }
  return p;
}

inline uint8_t Rotl8(uint8_t x, int k) { return static_cast<uint8_t>((x << k) | (x >> (8 - k))); }

// The S-box computed from its definition (inverse in GF(2^8), then the affine map) rather than typed in.
struct SBox {
  uint8_t s[256];
  SBox() {
    for (int x = 0; x < 256; ++x) {
      uint8_t inv = 0;
      if (x != 0) {  // x^254 = x^-1
        uint8_t power = static_cast<uint8_t>(x), acc = 1;
        for (int e = 254; e != 0; e >>= 1, power = GfMul(power, power)) {
          if (e & 1) acc = GfMul(acc, power);
        }
        inv = acc;
      }
      s[x] = inv ^ Rotl8(inv, 1) ^ Rotl8(inv, 2) ^ Rotl8(inv, 3) ^ Rotl8(inv, 4) ^ 0x63;
    }
  }
};

const SBox& Sbox() {
  static const SBox box;
  return box;
}

// FIPS-197 key expansion: 11 round keys of 16 bytes.
void ExpandKey(const uint8_t key[16], uint8_t round_keys[11][16]) {
  const uint8_t* s = Sbox().s;
  std::memcpy(round_keys[0], key, 16);
  uint8_t rcon = 1;
  for (int r = 1; r <= 10; ++r) {
    const uint8_t* prev = round_keys[r - 1];
    uint8_t* next = round_keys[r];
    const uint8_t t[4] = {static_cast<uint8_t>(s[prev[13]] ^ rcon), s[prev[14]], s[prev[15]], s[prev[12]]};
    for (int i = 0; i < 4; ++i) next[i] = prev[i] ^ t[i];
    for (int i = 4; i < 16; ++i) next[i] = prev[i] ^ next[i - 4];
    rcon = Xtime(rcon);
  }
}

// One block, byte-oriented (state byte r + 4c is row r of column c, as in the specification).
void EncryptPortable(const uint8_t round_keys[11][16], const uint8_t in[16], uint8_t out[16]) {
  const uint8_t* s = Sbox().s;
  uint8_t st[16];
  for (int i = 0; i < 16; ++i) st[i] = in[i] ^ round_keys[0][i];
  for (int r = 1; r <= 10; ++r) {
    uint8_t t[16];
    for (int c = 0; c < 4; ++c) {
      for (int row = 0; row < 4; ++row) t[row + 4 * c] = s[st[row + 4 * ((c + row) % 4)]];  // SubBytes, ShiftRows
    }
    if (r != 10) {
      for (int c = 0; c < 4; ++c) {  // MixColumns
        const uint8_t a0 = t[4 * c], a1 = t[4 * c + 1], a2 = t[4 * c + 2], a3 = t[4 * c + 3];
        const uint8_t all = a0 ^ a1 ^ a2 ^ a3;
        t[4 * c] = a0 ^ all ^ Xtime(a0 ^ a1);
        t[4 * c + 1] = a1 ^ all ^ Xtime(a1 ^ a2);
        t[4 * c + 2] = a2 ^ all ^ Xtime(a2 ^ a3);
        t[4 * c + 3] = a3 ^ all ^ Xtime(a3 ^ a0);
      }
    }
    for (int i = 0; i < 16; ++i) st[i] = t[i] ^ round_keys[r][i];
  }
  std::memcpy(out, st, 16);
}

// The PRG's four public AES keys: arbitrary fixed constants (the hexadecimal digits of pi); MMO's security
// argument treats AES under a known key as a random permutation.
constexpr uint8_t kPrgKeys[4][16] = {
    {0x24, 0x3f, 0x6a, 0x88, 0x85, 0xa3, 0x08, 0xd3, 0x13, 0x19, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x44},
    {0xa4, 0x09, 0x38, 0x22, 0x29, 0x9f, 0x31, 0xd0, 0x08, 0x2e, 0xfa, 0x98, 0xec, 0x4e, 0x6c, 0x89},
    {0x45, 0x28, 0x21, 0xe6, 0x38, 0xd0, 0x13, 0x77, 0xbe, 0x54, 0x66, 0xcf, 0x34, 0xe9, 0x0c, 0x6c},
    {0xc0, 0xac, 0x29, 0xb7, 0xc9, 0x7c, 0x50, 0xdd, 0x3f, 0x84, 0xd5, 0xb5, 0xb5, 0x47, 0x09, 0x17},
};

struct PrgKeys {
  alignas(16) uint8_t round_keys[4][11][16];
  PrgKeys() {
    for (int j = 0; j < 4; ++j) ExpandKey(kPrgKeys[j], round_keys[j]);
  }
};

const PrgKeys& Keys() {
  static const PrgKeys keys;
  return keys;
}

bool DetectAesNi() {
#if defined(__x86_64__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  // ECX bit 25: AES-NI; bit 19: SSE4.1 (not needed, but every AES-NI CPU has it).
  return (ecx >> 25 & 1) && MaxCpuIsa() != CpuIsa::kScalar;
#else
  return false;
#endif
}

bool AesNi() {
  static const bool usable = DetectAesNi();
  return usable;
}

// Up to kMaxBlocks blocks at once: out[j] = AES_{round_keys[j]}(in[j]) ^ in[j] when mmo, else the plain
// encryption.  Many independent blocks per call keep the AES unit's pipeline full.
constexpr int kMaxBlocks = 16;

#if defined(__x86_64__)
__attribute__((target("aes,sse2"))) void BlocksAesNi(const Block* in, const uint8_t (*const* round_keys)[16],
                                                     int n, bool mmo, Block* out) {
  __m128i st[kMaxBlocks], x[kMaxBlocks];
  for (int j = 0; j < n; ++j) {
    x[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&in[j]));
    st[j] = _mm_xor_si128(x[j], _mm_load_si128(reinterpret_cast<const __m128i*>(round_keys[j][0])));
  }
  for (int r = 1; r < 10; ++r) {
    for (int j = 0; j < n; ++j) {
      st[j] = _mm_aesenc_si128(st[j], _mm_load_si128(reinterpret_cast<const __m128i*>(round_keys[j][r])));
    }
  }
  for (int j = 0; j < n; ++j) {
    __m128i y = _mm_aesenclast_si128(st[j], _mm_load_si128(reinterpret_cast<const __m128i*>(round_keys[j][10])));
    if (mmo) y = _mm_xor_si128(y, x[j]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(&out[j]), y);
  }
}
#endif

void BlocksPortable(const Block* in, const uint8_t (*const* round_keys)[16], int n, bool mmo, Block* out) {
  for (int j = 0; j < n; ++j) {
    uint8_t bytes[16], enc[16];
    std::memcpy(bytes, &in[j], 16);  // little-endian words: byte 0 is the low byte of lo, as _mm_loadu reads it
    EncryptPortable(round_keys[j], bytes, enc);
    Block y;
    std::memcpy(&y, enc, 16);
    out[j] = mmo ? Xor(y, in[j]) : y;
  }
}

void Blocks(const Block* in, const uint8_t (*const* round_keys)[16], int n, bool mmo, Block* out) {
#if defined(__x86_64__)
  if (AesNi()) return BlocksAesNi(in, round_keys, n, mmo, out);
#endif
  BlocksPortable(in, round_keys, n, mmo, out);
}

// G_j(s) for n (seed, j) pairs.
void Prg(const Block* seeds, const uint8_t* which, int n, Block* out) {
  const uint8_t(*keys[kMaxBlocks])[16];
  for (int j = 0; j < n; ++j) keys[j] = Keys().round_keys[which[j]];
  Blocks(seeds, keys, n, /*mmo=*/true, out);
}

inline uint64_t Sign(bool negative, uint64_t v) { return negative ? uint64_t{0} - v : v; }

// ----- Gen ---------------------------------------------------------------------------------------------------
constexpr int kGenLanes = 2;  // elements per PRG call: 8 blocks each

void GenGroup(int bits, int lanes, const uint64_t* alpha, const uint64_t* beta, const uint64_t* seed0,
              const uint64_t* seed1, uint64_t* cw) {
  const int64_t key_words = DcfKeyWords(bits);
  Block s[kGenLanes][2];
  bool t[kGenLanes][2];
  uint64_t acc[kGenLanes][kDcfPayloadWords] = {};  // the on-path sum of both parties' outputs so far
  for (int l = 0; l < lanes; ++l) {
    s[l][0] = ClearBit0({seed0[2 * l], seed0[2 * l + 1]});
    s[l][1] = ClearBit0({seed1[2 * l], seed1[2 * l + 1]});
    t[l][0] = false;
    t[l][1] = true;
    cw[l * key_words + 4 * bits] = 0;
    cw[l * key_words + 4 * bits + 1] = 0;
  }
  Block in[kMaxBlocks], out[kMaxBlocks];
  uint8_t which[kMaxBlocks];
  for (int i = 0; i < bits; ++i) {
    for (int l = 0; l < lanes; ++l) {
      for (int b = 0; b < 2; ++b) {
        for (int j = 0; j < 4; ++j) {
          in[8 * l + 4 * b + j] = s[l][b];
          which[8 * l + 4 * b + j] = static_cast<uint8_t>(j);
        }
      }
    }
    Prg(in, which, 8 * lanes, out);
    for (int l = 0; l < lanes; ++l) {
      uint64_t* level = cw + l * key_words + 4 * i;
      const int a = static_cast<int>(alpha[l] >> (bits - 1 - i) & 1);
      const int keep = a, lose = 1 - a;  // 0 = left, 1 = right
      const Block* o0 = out + 8 * l;      // party 0: seed L, seed R, payload L, payload R
      const Block* o1 = out + 8 * l + 4;
      const Block s_cw = Xor(ClearBit0(o0[lose]), ClearBit0(o1[lose]));
      const bool neg = t[l][1];  // (-1)^{t1}: which party's control bit is set on the path
      for (int c = 0; c < kDcfPayloadWords; ++c) {
        auto word = [c](const Block& v) { return c == 0 ? v.lo : v.hi; };
        // Leaving the path to the left at a 1 bit of alpha means x < alpha: the outputs must sum to beta there.
        const uint64_t target = a == 1 ? beta[2 * l + c] : 0;
        const uint64_t v_cw = Sign(neg, target - acc[l][c] - word(o0[2 + lose]) + word(o1[2 + lose]));
        level[2 + c] = v_cw;
        acc[l][c] += word(o0[2 + keep]) - word(o1[2 + keep]) + Sign(neg, v_cw);
      }
      level[0] = s_cw.lo;
      level[1] = s_cw.hi;
      const bool t_left = ((o0[0].lo ^ o1[0].lo) & 1) ^ a ^ 1;
      const bool t_right = ((o0[1].lo ^ o1[1].lo) & 1) ^ a;
      cw[l * key_words + 4 * bits] |= static_cast<uint64_t>(t_left) << i;
      cw[l * key_words + 4 * bits + 1] |= static_cast<uint64_t>(t_right) << i;
      const bool t_keep_cw = keep ? t_right : t_left;
      for (int b = 0; b < 2; ++b) {
        const Block* o = b == 0 ? o0 : o1;
        const bool t_next = (o[keep].lo & 1) ^ (t[l][b] && t_keep_cw);
        s[l][b] = Xor(ClearBit0(o[keep]), Select(t[l][b], s_cw));
        t[l][b] = t_next;
      }
    }
  }
  for (int l = 0; l < lanes; ++l) {
    uint64_t* last = cw + l * key_words + 4 * bits + 2;
    const bool neg = t[l][1];
    last[0] = Sign(neg, uint64_t{0} - acc[l][0] - s[l][0].lo + s[l][1].lo);
    last[1] = Sign(neg, uint64_t{0} - acc[l][1] - s[l][0].hi + s[l][1].hi);
  }
}

// ----- Eval --------------------------------------------------------------------------------------------------
constexpr int kEvalLanes = 8;  // evaluation points per PRG call: 2 blocks each

void EvalGroup(int bits, int party, int lanes, const Block* roots, const uint64_t* const* keys,
               const uint64_t* x, uint64_t* out) {
  Block s[kEvalLanes];
  bool t[kEvalLanes];
  uint64_t v[kEvalLanes][kDcfPayloadWords] = {};
  for (int l = 0; l < lanes; ++l) {
    s[l] = ClearBit0(roots[l]);
    t[l] = party == 1;
  }
  Block in[kMaxBlocks], prg[kMaxBlocks];
  uint8_t which[kMaxBlocks];
  for (int i = 0; i < bits; ++i) {
    for (int l = 0; l < lanes; ++l) {
      const int dir = static_cast<int>(x[l] >> (bits - 1 - i) & 1);
      in[2 * l] = in[2 * l + 1] = s[l];
      which[2 * l] = static_cast<uint8_t>(dir);
      which[2 * l + 1] = static_cast<uint8_t>(2 + dir);
    }
    Prg(in, which, 2 * lanes, prg);
    for (int l = 0; l < lanes; ++l) {
      const uint64_t* level = keys[l] + 4 * i;
      const int dir = which[2 * l];
      Block next = ClearBit0(prg[2 * l]);
      bool t_next = prg[2 * l].lo & 1;
      if (t[l]) {
        next = Xor(next, Block{level[0], level[1]});
        t_next ^= keys[l][4 * bits + dir] >> i & 1;
        v[l][0] += level[2];
        v[l][1] += level[3];
      }
      v[l][0] += prg[2 * l + 1].lo;
      v[l][1] += prg[2 * l + 1].hi;
      s[l] = next;
      t[l] = t_next;
    }
  }
  for (int l = 0; l < lanes; ++l) {
    const uint64_t* last = keys[l] + 4 * bits + 2;
    uint64_t w0 = v[l][0] + s[l].lo + (t[l] ? last[0] : 0);
    uint64_t w1 = v[l][1] + s[l].hi + (t[l] ? last[1] : 0);
    out[2 * l] = Sign(party == 1, w0);
    out[2 * l + 1] = Sign(party == 1, w1);
  }
}

}  // namespace

bool DcfUsesAesNi() { return AesNi(); }

void DcfGen(int bits, int64_t begin, int64_t end, const uint64_t* alpha, const uint64_t* beta,
            const uint64_t* seed0, const uint64_t* seed1, uint64_t* cw) {
  const int64_t key_words = DcfKeyWords(bits);
  for (int64_t e = begin; e < end; e += kGenLanes) {
    const int lanes = static_cast<int>(end - e < kGenLanes ? end - e : kGenLanes);
    GenGroup(bits, lanes, alpha + e, beta + 2 * e, seed0 + 2 * e, seed1 + 2 * e, cw + e * key_words);
  }
}

void DcfEval(int bits, int party, int64_t points, int64_t begin, int64_t end, const uint64_t* seed,
             const uint64_t* cw, const uint64_t* x, uint64_t* out) {
  const int64_t key_words = DcfKeyWords(bits);
  const int64_t first = begin * points, stop = end * points;  // evaluation lanes: (element, point) pairs
  for (int64_t q = first; q < stop; q += kEvalLanes) {
    const int lanes = static_cast<int>(stop - q < kEvalLanes ? stop - q : kEvalLanes);
    Block roots[kEvalLanes];
    const uint64_t* keys[kEvalLanes];
    for (int l = 0; l < lanes; ++l) {
      const int64_t e = (q + l) / points;
      roots[l] = {seed[2 * e], seed[2 * e + 1]};
      keys[l] = cw + e * key_words;
    }
    EvalGroup(bits, party, lanes, roots, keys, x + q, out + 2 * q);
  }
}

void Aes128Encrypt(const uint8_t key[16], const uint64_t* in, int64_t n, uint64_t* out) {
  alignas(16) uint8_t round_keys[11][16];
  ExpandKey(key, round_keys);
  const uint8_t(*keys[kMaxBlocks])[16];
  for (int j = 0; j < kMaxBlocks; ++j) keys[j] = round_keys;
  for (int64_t b = 0; b < n; b += kMaxBlocks) {
    const int count = static_cast<int>(n - b < kMaxBlocks ? n - b : kMaxBlocks);
    Blocks(reinterpret_cast<const Block*>(in + 2 * b), keys, count, /*mmo=*/false,
           reinterpret_cast<Block*>(out + 2 * b));
  }
}

bool DcfInDomain(int bits, const uint64_t* values, int64_t n) {
  if (bits == 64) return true;
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] >> bits != 0) return false;
  }
  return true;
}

}  // namespace tfppml

// ctypes entries for tfppml.ops.dcf (single threaded; the TF kernels in dcf_kernels.cc shard across cores).
// Each returns 0, or -1 on a bad argument (nothing written): bits outside [1, 64], a party other than 0 and 1,
// a negative count, or an alpha / point that does not fit in `bits` bits.
extern "C" __attribute__((visibility("default"))) int tfppml_dcf_gen(int bits, int64_t n, const uint64_t* alpha,
                                                                    const uint64_t* beta, const uint64_t* seed0,
                                                                    const uint64_t* seed1, uint64_t* cw) {
  if (bits < 1 || bits > 64 || n < 0 || !tfppml::DcfInDomain(bits, alpha, n)) return -1;
  tfppml::DcfGen(bits, 0, n, alpha, beta, seed0, seed1, cw);
  return 0;
}

extern "C" __attribute__((visibility("default"))) int tfppml_dcf_eval(int bits, int party, int64_t n,
                                                                     int64_t points, const uint64_t* seed,
                                                                     const uint64_t* cw, const uint64_t* x,
                                                                     uint64_t* out) {
  if (bits < 1 || bits > 64 || (party != 0 && party != 1) || n < 0 || points < 1) return -1;
  if (!tfppml::DcfInDomain(bits, x, n * points)) return -1;
  tfppml::DcfEval(bits, party, points, 0, n, seed, cw, x, out);
  return 0;
}

extern "C" __attribute__((visibility("default"))) int tfppml_aes128_encrypt(const uint8_t* key, const uint64_t* in,
                                                                           int64_t n, uint64_t* out) {
  if (n < 0) return -1;
  tfppml::Aes128Encrypt(key, in, n, out);
  return 0;
}

extern "C" __attribute__((visibility("default"))) int tfppml_dcf_uses_aes_ni() { return tfppml::DcfUsesAesNi() ? 1 : 0; }
