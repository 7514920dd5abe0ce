"""The ReLU: by function secret sharing (a distributed comparison function dealt by party 0) for small tensors, by
the binary adder and bit injection for large ones.  Mixed into `tfppml.mpc.context.OpContext`."""

from __future__ import annotations

import math

import numpy as np

from tfppml import ops
from tfppml.errors import ProtocolError
from tfppml.mpc.shares import SIGN_BIT, Pair, bxor, flip_bit, radd, rmul, rsub, shift_right_logical, u64

#: ReLUs of tensors up to this size use function secret sharing (OpContext.relu_fss: 2 rounds, ~4 KB per element
#: from P0, ~6 us of AES per element); larger ones the binary adder (10 rounds, ~100 bytes per element).  Measured
#: on the demo CNN at batch 1 (ReLUs of 2704 and 800 elements): 33 ms with neither, 29 ms with the smaller one,
#: 48 ms with both by FSS.
FSS_RELU_MAX_SIZE = 1024


class FunctionSecretSharing:
    """relu_fss and relu (`self` is an `OpContext`)."""

    def relu_fss(self, z: np.ndarray, label: str, trunc_bits: int) -> Pair:
        """Shares of ReLU(x) >> trunc_bits from this party's term z of a 3-out-of-3 sharing of x: 2 rounds.

        Function secret sharing (tfppml.ops.dcf) with P0 as the dealer and P1, P2 as the evaluators, after
        Boyle et al. (Eurocrypt 2021).  P0 draws r (from k1 and k0, so that P1 and P2 each miss half of it) and
        makes DCF keys for f(u) = (1, r >> d) * [u < r], whose root seeds P1 and P2 derive from the keys they
        share with P0.  Round 1: c = x + r is opened to P1 and P2 only (P0 sends z0 + r with the keys, P1 and P2
        swap z1, z2; every term carries a fresh zero-sharing).  With y = c - r mod 2^64 (x as unsigned) and
        T = 2^63, x >= 0 iff y < T iff r lies in the cyclic interval (c - T, c], so
            b = [x >= 0] = f_0(c - T) - f_0(c) + [c < T],    b * (r >> d) = f_1(c - T) - f_1(c) + [c < T] (r >> d)
        from two evaluations of the same key, and ReLU(x) >> d = b * ((c >> d) - (r >> d) + 2^(64-d) [c < r]),
        where b [c < r] = [c < T] f_0(c - T), is local: P1 and P2 end with two-party shares, and the dropped
        borrow of the low d bits rounds stochastically (+1 with probability (y mod 2^d) / 2^d), as the other
        truncations do (+-1 ulp).  Exact otherwise, over the whole ring.  Round 2: P1 and P2 swap their shares
        less y1 (from k1) and y0 (from k0), which P0 also draws, and the result is the pair sharing (y0, y1, y2).
        What each sees: P0 nothing; P1 and P2 c (uniform: r), one DCF key (pseudo-random alone), and the other
        evaluator's terms and shares under masks from the key it lacks.  P1 and P2 must not collude with P0, as
        everywhere in the protocol (any two parties can reconstruct).  Against the binary adder: 2 rounds
        instead of 10 (9 with the truncation before it), but ~4 KB per element from P0 (the keys), so it is
        for small tensors (FSS_RELU_MAX_SIZE).
        """
        i = self.i
        shape = list(np.shape(z))
        n = int(np.size(z))
        z = radd(z, self.zero_share(f"{label}/alpha", shape)).reshape(-1)
        # Multiplier of b [c < r] (2^(64 - d), which is 0 in the ring when nothing is truncated).
        wrap = u64(0 if trunc_bits == 0 else 1 << (64 - trunc_bits))
        if i == 0:
            r = radd(self.prg(1, f"{label}/r", [n]), self.prg(0, f"{label}/r", [n]))
            r_high = shift_right_logical(r, trunc_bits)
            beta = np.stack([np.ones(n, dtype=np.uint64), r_high], axis=1)
            cw = ops.dcf_gen_numpy(r, beta, self.prg(1, f"{label}/seed", [n, 2]), self.prg(0, f"{label}/seed", [n, 2]))
            opened = radd(z, r)
            # P1 draws its share of r >> d from k1; P2's is the rest.
            high2 = rsub(r_high, self.prg(1, f"{label}/rh", [n]))
            self.send(1, f"{label}/d", np.concatenate([opened, cw.reshape(-1)]))
            self.send(2, f"{label}/d", np.concatenate([opened, high2, cw.reshape(-1)]))
            return self.prg(0, f"{label}/y0", shape), self.prg(1, f"{label}/y1", shape)
        peer = 3 - i
        evaluator = i - 1
        self.send(peer, f"{label}/c{i}", z)
        other = self.recv(peer, f"{label}/c{peer}")
        dealt = self.recv(0, f"{label}/d")
        extra = 1 if i == 2 else 0
        words = ops.dcf_key_words()
        if other.shape != (n,) or dealt.shape != ((1 + extra + words) * n,):
            raise ProtocolError(
                f"ReLU {self.scope_id}/{label}: messages from parties {peer} and 0 have shapes {other.shape} and "
                f"{dealt.shape}, expected ({n},) and ({(1 + extra + words) * n},)"
            )
        opened = dealt[:n]
        high = dealt[n:2 * n] if i == 2 else self.prg(1, f"{label}/rh", [n])
        cw = dealt[(1 + extra) * n:].reshape(n, words)
        c = radd(radd(opened, z), other)
        seed = self.prg(1 if i == 1 else 0, f"{label}/seed", [n, 2])
        f = ops.dcf_eval_numpy(evaluator, seed, cw, np.stack([bxor(c, SIGN_BIT), c], axis=1))
        low = (c < SIGN_BIT).astype(np.uint64)  # [c < T], public to both evaluators
        b = rsub(f[:, 0, 0], f[:, 1, 0])
        if evaluator == 0:
            b = radd(b, low)
        b_high = radd(rsub(f[:, 0, 1], f[:, 1, 1]), rmul(low, high))
        share = radd(rsub(rmul(shift_right_logical(c, trunc_bits), b), b_high), rmul(rmul(low, wrap), f[:, 0, 0]))
        # Round 2: y2 = share_1 + share_2 - y1 - y0.
        mask = self.prg(1, f"{label}/y1", shape) if i == 1 else self.prg(0, f"{label}/y0", shape)
        part = rsub(share.reshape(shape), mask)
        self.send(peer, f"{label}/y{i}", part)
        theirs = self.recv(peer, f"{label}/y{peer}")
        if theirs.shape != part.shape:
            raise ProtocolError(
                f"ReLU {self.scope_id}/{label}: the share from party {peer} has shape {theirs.shape}, expected {part.shape}"
            )
        y2 = radd(part, theirs)
        return (mask, y2) if i == 1 else (y2, mask)

    def relu(self, x: Pair, label: str, trunc_bits: int = 0, *, terms: bool = False) -> Pair:
        """Shares of max(x, 0) >> trunc_bits for a pair sharing x, or (terms=True) this party's unshared term
        x[0] of a product.

        Tensors of up to FSS_RELU_MAX_SIZE elements take `relu_fss` (2 rounds); larger ones the binary adder:
        terms or a truncation are reshared (and truncated) first, then x * [x >= 0] = x * (1 ^ msb), the
        XOR-shared bit going straight into the product (`bit_times`, 2 rounds).  The path depends on the public
        size only (and the constant, the same on all three servers: they run the same code).
        """
        shape = list(np.shape(x[0]))
        if math.prod(shape) <= FSS_RELU_MAX_SIZE:
            # The first components of the pairs are terms of a 3-out-of-3 sharing, as a product's terms are.
            return self.relu_fss(x[0], f"{label}/fss", trunc_bits)
        if terms or trunc_bits:
            x = self.reshare(radd(x[0], self.zero_share(f"{label}/alpha", shape)), f"{label}/trunc", trunc_bits)
        nonneg = flip_bit(self.i, self.msb(x, f"{label}/ge/msb"))
        return self.bit_times(nonneg, x, f"{label}/sel")
