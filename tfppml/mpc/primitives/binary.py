"""Binary sharings: AND of XOR-shared words, the sign bit of an additive sharing by a bit-plane adder, and the
conversion of a shared bit back to an additive sharing.  Mixed into `tfppml.mpc.context.OpContext`."""

from __future__ import annotations


import numpy as np

from tfppml import ops
from tfppml.mpc.shares import NUM_PARTIES, ALL_ONES, Pair, band, bxor, one_minus, public_term, radd, rmul, rsub, u64


class Binary:
    """and_, msb, bit_to_arith and nonnegative (`self` is an `OpContext`)."""

    def and_(self, x: Pair, y: Pair, label: str) -> Pair:
        """Bitwise AND of XOR-shared words (64 AND gates per element, one message per party)."""
        z = bxor(bxor(band(x[0], y[0]), band(x[0], y[1])), band(x[1], y[0]))
        z = bxor(z, self.zero_share_xor(f"{label}/beta", list(np.shape(z))))
        self.send(self.i - 1, f"{label}/and", z)
        return z, self.recv(self.i + 1, f"{label}/and")

    def msb(self, x: Pair, label: str) -> Pair:
        """XOR shares of the most significant bit (the sign) of an additively shared x, as 0/1 per element.

        The adder runs on bit planes (`tfppml.ops.bit_planes`: plane j holds bit j of 64 elements per word), so
        shifting bit positions is picking other planes and every AND round sends only the planes it needs,
        packed.  The three additive terms are XOR-shared as they stand (x_j known to the two parties holding
        it) and added with a carry-save step, x0 + x1 + x2 = s + 2*maj (maj: 1 round; generate g = s & c with
        c = maj shifted up: 1 round).  The carry into bit 63 then comes from a binary tree of the carry operator
        (g, p)_hi o (g, p)_lo = (g_hi ^ p_hi g_lo, p_hi p_lo) over the 64 positions, position 63 set to its
        identity (g = 0, p = 1): 6 rounds, one AND of all the level's planes each.  Per element: maj 63 bits,
        generate 62, tree 64 + 32 + 16 + 8 + 4 + 1: 250 bits in 8 rounds (whole words per level sent 512).
        """
        size = int(np.size(x[0]))
        planes = [ops.bit_planes_numpy(np.asarray(x[k])) for k in range(2)]  # [64, words] each
        zero = np.zeros_like(planes[0])
        # Party i's pairs of the XOR sharings of x_i, x_{i+1}, x_{i+2}.
        terms = [(planes[0], zero), (zero, planes[1]), (zero, zero)]
        by_index = {(self.i + k) % NUM_PARTIES: terms[k] for k in range(NUM_PARTIES)}
        t0, t1, t2 = by_index[0], by_index[1], by_index[2]

        def xor(p: Pair, q: Pair) -> Pair:
            return bxor(p[0], q[0]), bxor(p[1], q[1])

        s = xor(xor(t0, t1), t2)
        # maj = ((x0^x1) & (x0^x2)) ^ x0, planes 0..62 only: the carry c = 2*maj drops maj's bit 63.
        a, b = xor(t0, t1), xor(t0, t2)
        maj = self.and_((a[0][:63], a[1][:63]), (b[0][:63], b[1][:63]), f"{label}/maj")
        maj = bxor(maj[0], t0[0][:63]), bxor(maj[1], t0[1][:63])
        # c = plane j-1 of maj at position j (c_0 = 0), so p = s ^ c and g = s & c, which is 0 at position 0 and
        # needs no AND there.  Position 63 only contributes p_63 to the sign and becomes the tree's identity.
        generate = self.and_((s[0][1:63], s[1][1:63]), (maj[0][:62], maj[1][:62]), f"{label}/g")
        top = bxor(s[0][63], maj[0][62]), bxor(s[1][63], maj[1][62])
        one = public_term(self.i, ALL_ONES, zero[:1])
        g = tuple(np.concatenate([zero[:1], generate[k], zero[:1]]) for k in range(2))
        p = tuple(np.concatenate([s[k][:1], bxor(s[k][1:63], maj[k][:62]), one[k]]) for k in range(2))
        # Tree: m groups (planes) -> m/2; group q of the next level is (hi, lo) = groups (2q+1, 2q).  One AND of
        # p_hi (broadcast) with the stacked (g_lo, p_lo) gives both products of the level.
        while g[0].shape[0] > 2:
            half = g[0].shape[0] // 2
            both = self.and_(tuple(p[k][None, 1::2] for k in range(2)),
                             tuple(np.stack([g[k][0::2], p[k][0::2]]) for k in range(2)), f"{label}/tree{half}")
            g = tuple(bxor(g[k][1::2], both[k][0]) for k in range(2))
            p = tuple(both[k][1] for k in range(2))
        # The root: only g_hi ^ p_hi g_lo is needed (the carry into bit 63).
        last = self.and_((p[0][1], p[1][1]), (g[0][0], g[1][0]), f"{label}/tree1")
        carry = bxor(g[0][1], last[0]), bxor(g[1][1], last[1])
        shape = np.shape(x[0])
        return tuple(ops.plane_bits_numpy(bxor(top[k], carry[k]), size).reshape(shape) for k in range(2))

    def bit_to_arith(self, bit: Pair, label: str) -> Pair:
        """Additive shares of b = b0 ^ b1 ^ b2 from XOR shares of a single bit (2 rounds)."""
        zero = np.zeros_like(bit[0])
        terms = [(bit[0], zero), (zero, bit[1]), (zero, zero)]
        by_index = {(self.i + k) % NUM_PARTIES: terms[k] for k in range(NUM_PARTIES)}
        b0, b1, b2 = by_index[0], by_index[1], by_index[2]
        two = u64(2)

        def xor_arith(p: Pair, q: Pair, step: str) -> Pair:
            pq = self.multiply(p, q, f"{label}/{step}", 0)
            return tuple(rsub(radd(p[k], q[k]), rmul(pq[k], two)) for k in range(2))

        return xor_arith(xor_arith(b0, b1, "x01"), b2, "x012")


    def nonnegative(self, x: Pair, label: str) -> Pair:
        """Additive shares of [x >= 0] (as the integer 0 or 1) for additively shared x."""
        b = self.bit_to_arith(self.msb(x, f"{label}/msb"), f"{label}/b2a")
        # 1 - b: the public 1 enters as the term of index 0 (held by parties 0 and 2).
        return one_minus(self.i, b)

