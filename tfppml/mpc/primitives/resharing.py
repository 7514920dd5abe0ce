"""Resharing: a party's term of a three-way additive sharing back into a pair (with or without truncation), and
the products built on it.  Mixed into `tfppml.mpc.context.OpContext`."""

from __future__ import annotations

import math

import numpy as np

from tfppml.errors import ProtocolError
from tfppml.mpc.shares import Pair, radd, rmul, rneg, rsub, shift_right_logical

#: Truncations of tensors up to this size use the one-round protocol (latency-bound: serving a single query);
#: larger ones the two-round protocol, which sends half the bytes (bandwidth-bound: big matmuls).
ONE_ROUND_TRUNC_MAX_SIZE = 1 << 14


class Resharing:
    """reshare, product_term and multiply (`self` is an `OpContext`)."""

    def reshare(self, z: np.ndarray, label: str, trunc_bits: int = 0) -> Pair:
        """Turns this party's term z_i of a 3-out-of-3 sharing (already re-randomized) into a pair.

        Without truncation each party sends z_i to party i-1 (one message each).  With truncation by d bits,
        a SecureML-style two-party truncation of (z0 + z1, z2) is re-shared in two rounds:
        P1 sends z1 to P0 and P2 sends z2 to P1; P0 computes (z0 + z1) >> d, keeps y1 drawn from k1 (shared
        with P1) and sends y0 = ((z0 + z1) >> d) - y1 to P2; P1 and P2 compute y2 = -((-z2) >> d).
        """
        i = self.i
        if trunc_bits == 0:
            self.send(i - 1, f"{label}/reshare", z)
            return z, self.recv(i + 1, f"{label}/reshare")
        shape = list(np.shape(z))
        if math.prod(shape) <= ONE_ROUND_TRUNC_MAX_SIZE:
            return self._reshare_truncate_one_round(z, label, trunc_bits, shape)
        if i == 1:
            self.send(0, f"{label}/t1", z)
        elif i == 2:
            self.send(1, f"{label}/t1", z)
        if i == 0:
            high = shift_right_logical(radd(z, self.recv(1, f"{label}/t1")), trunc_bits)
            y1 = self.prg(1, f"{label}/y1", shape)
            y0 = rsub(high, y1)
            self.send(2, f"{label}/t2", y0)
            return y0, y1
        z2 = z if i == 2 else self.recv(2, f"{label}/t1")
        y2 = rneg(shift_right_logical(rneg(z2), trunc_bits))
        if i == 1:
            return self.prg(1, f"{label}/y1", shape), y2
        return y2, self.recv(0, f"{label}/t2")

    def _reshare_truncate_one_round(self, z: np.ndarray, label: str, d: int, shape: list[int]) -> Pair:
        """`reshare` with truncation in one round instead of two, at twice the bytes (for small tensors).

        The same SecureML two-share truncation, applied to a different two-party sharing x = c + r: r = r0 + r1
        is drawn from keys k0 (P2, P0) and k1 (P0, P1), so P0 knows r and each of P1, P2 misses one half of it;
        c = x - r = z0 + (z1 - r1) + (z2 - r0) is opened to P1 and P2 only, in the one round, together with
        P0's correction.  P0 sends z0 and corr = (r >> d) - y0 - y1 to both; P1 sends z1 - r1 to P2 and P2
        sends z2 - r0 to P1.  Then y = (y0, y1, y2) with y2 = -((-c) >> d) + corr shares x >> d (+-1 ulp).
        What each sees is uniform: z0 carries P0's zero-sharing term from k0 and k1, each of P1, P2 lacks one
        of r0, r1 (so c hides x), and corr is masked by y0 (unknown to P1) or y1 (unknown to P2).
        """
        i = self.i
        if i == 0:
            r = radd(self.prg(0, f"{label}/r0", shape), self.prg(1, f"{label}/r1", shape))
            y0, y1 = self.prg(0, f"{label}/y0", shape), self.prg(1, f"{label}/y1", shape)
            corr = rsub(rsub(shift_right_logical(r, d), y0), y1)
            both = np.stack([z, corr])
            self.send(1, f"{label}/c0", both)
            self.send(2, f"{label}/c0", both)
            return y0, y1
        if i == 1:
            own = rsub(z, self.prg(1, f"{label}/r1", shape))
            self.send(2, f"{label}/c1", own)
            other = self.recv(2, f"{label}/c2")
        else:
            own = rsub(z, self.prg(0, f"{label}/r0", shape))
            self.send(1, f"{label}/c2", own)
            other = self.recv(1, f"{label}/c1")
        both = self.recv(0, f"{label}/c0")
        if both.shape != (2, *shape):
            raise ProtocolError(f"message {label}/c0 from party 0 has shape {both.shape}, expected {(2, *shape)}")
        z0, corr = both
        c = radd(radd(z0, own), other)
        y2 = radd(rneg(shift_right_logical(rneg(c), d)), corr)
        if i == 1:
            return self.prg(1, f"{label}/y1", shape), y2
        return y2, self.prg(0, f"{label}/y0", shape)

    def product_term(self, x: Pair, y: Pair, label: str, product=None) -> np.ndarray:
        """This party's term of a fresh three-way additive sharing of product(x, y) (no message).

        The zero-sharing makes the three terms uniformly random given their sum: without it a party's term would
        be a fixed function of its shares, which whoever receives the terms (the reshare's peer, or a program's
        client) must not see."""
        product = product or rmul
        # x_i*y_i + x_i*y_{i+1} + x_{i+1}*y_i = x_i*(y_i + y_{i+1}) + x_{i+1}*y_i: two products, not three.
        z = radd(product(x[0], radd(y[0], y[1])), product(x[1], y[0]))
        return radd(z, self.zero_share(f"{label}/alpha", list(np.shape(z))))

    def multiply(self, x: Pair, y: Pair, label: str, trunc_bits: int, product=None) -> Pair:
        """Shares of product(x, y) for any bilinear `product` (elementwise by default, matmul, conv2d)."""
        return self.reshare(self.product_term(x, y, label, product), label, trunc_bits)
