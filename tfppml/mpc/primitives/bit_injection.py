"""Bit injection: the product of an XOR-shared bit and an additively shared value by two three-party oblivious
transfers (ABY3, section 5.4).  Mixed into `tfppml.mpc.context.OpContext`."""

from __future__ import annotations


import numpy as np

from tfppml.errors import ProtocolError
from tfppml.mpc.shares import NUM_PARTIES, Pair, bxor, radd, rmul, rsub


class BitInjection:
    """bit_times (`self` is an `OpContext`)."""

    def bit_times(self, c: Pair, v: Pair, label: str) -> Pair:
        """Shares of c * v for XOR-shared bits c (0/1 per element) and additively shared v: 2 rounds.

        Bit injection by two three-party oblivious transfers in one round (as in ABY3, section 5.4), then a
        reshare.  With roles R0, R1, R2 (rotated, so that no party always does the most): R0 knows
        c0 ^ c1 = s and v0 + v1 = u, and R1, R2 both know c2, so c * u = (s ^ c2) * u is R1's choice among R0's
        two messages m_j = (s ^ j) * u - r, masked by w_j that R0 shares with R2; R2 sends R1 the mask w_{c2}.
        Likewise R1 (knowing c1 ^ c2 and v2) sends R2 the pair for c * v2 with the choice c0, which R0 and R2
        know, masks shared with R0.  Then R0 holds r, R1 holds c*u - r + r', R2 holds c*v2 - r': terms of c*v.
        Each receiver sees one message it can unmask and one under a mask it lacks, and unmasks only a value
        hidden by r or r' (drawn from a key it does not hold); the reshare's zero-sharing re-randomises the terms.
        Against bit_to_arith and a product (3 rounds, 3 elements per party), this is 2 rounds and 4, 3 and 2
        elements sent by R0, R1 and R2.  Roles: see `rot` below.
        """
        # Roles rotate with the tensor's size: layers of different sizes spread R0's extra work, and who sends
        # what depends on public shapes only (not on random operation ids), as everywhere else.
        rot = int(np.size(v[0])) % NUM_PARTIES
        role = (self.i - rot) % NUM_PARTIES
        shape = list(np.shape(v[0]))
        # Relative to the roles, this party holds (c'_role, c'_role+1) and (v'_role, v'_role+1).  Keys: the one
        # R2 and R0 hold is rot (prg index role 0 for R0, role 1 for R2), the one R0 and R1 hold is rot + 1.
        k02, k01 = rot, rot + 1

        def masks(key: int, step: str) -> tuple[np.ndarray, np.ndarray]:
            # The sender and the helper of a transfer draw the same two masks from the key they share.
            return self.prg(key, f"{label}/{step}/w0", shape), self.prg(key, f"{label}/{step}/w1", shape)

        def masked_pair(chooser_known: np.ndarray, value: np.ndarray, key: int, step: str) -> np.ndarray:
            r = self.prg(key, f"{label}/{step}/r", shape)
            w0, w1 = masks(key, step)
            sv = rmul(chooser_known, value)
            m0 = rsub(sv, r)  # (s ^ 0) * value - r
            m1 = rsub(rsub(value, sv), r)  # (s ^ 1) * value - r
            return np.stack([radd(m0, w0), radd(m1, w1)]), r

        def chosen(pair: np.ndarray, choice: np.ndarray, mask: np.ndarray, frm: int, step: str) -> np.ndarray:
            if pair.shape != (2, *shape):
                raise ProtocolError(f"message {step} from party {frm % NUM_PARTIES} has shape {pair.shape}, expected {(2, *shape)}")
            return rsub(np.where(choice.astype(bool), pair[1], pair[0]), mask)

        def helper_mask(choice: np.ndarray, key: int, step: str) -> np.ndarray:
            w0, w1 = masks(key, step)
            return np.where(choice.astype(bool), w1, w0)

        if role == 0:
            pair, r = masked_pair(bxor(c[0], c[1]), radd(v[0], v[1]), k02, "a")
            self.send(self.i + 1, f"{label}/a", pair)
            # Helper of the second transfer: R2's choice is c0, which this party holds as its first bit share.
            self.send(self.i + 2, f"{label}/bw", helper_mask(c[0], k01, "b"))
            term = r
        elif role == 1:
            # Sender of the second transfer: c1 ^ c2 and v2 are this party's pair.
            pair, r_b = masked_pair(bxor(c[0], c[1]), v[1], k01, "b")
            self.send(self.i + 1, f"{label}/b", pair)
            got = chosen(self.recv(self.i - 1, f"{label}/a"), c[1], self.recv(self.i + 1, f"{label}/aw"), self.i - 1, "a")
            term = radd(got, r_b)
        else:
            # Helper of the first transfer: R1's choice is c2, this party's first bit share.
            self.send(self.i - 1, f"{label}/aw", helper_mask(c[0], k02, "a"))
            term = chosen(self.recv(self.i - 1, f"{label}/b"), c[1], self.recv(self.i + 1, f"{label}/bw"), self.i - 1, "b")
        return self.reshare(radd(term, self.zero_share(f"{label}/alpha", shape)), label)

