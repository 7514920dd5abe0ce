"""The party side of the three-party replicated-secret-sharing protocol (ABY3-style, semi-honest).

Each of the three servers runs a `PartyRuntime`.  A driver (the data owner, a model owner, a client) sends it
commands; the runtime keeps the shares, computes on them with the ring kernels and exchanges protocol
messages with the other two parties over a `Channel` (in-process queues or gRPC with mutual TLS).  The same
code runs in both back ends.

Sharing: a value x in Z_2^64 is split as x = x0 + x1 + x2 and party i holds the pair (x_i, x_{i+1}) (indices
mod 3), so any two parties can reconstruct and any single party sees two uniformly random ring elements.
Binary (XOR) sharings of 64-bit words use the same layout with XOR in place of +.

Correlated randomness: at set-up party i draws a 256-bit key k_i and gives it to party i-1, so party i holds
k_i and k_{i+1} and each key is known to exactly two parties.  Every random draw is ChaCha20 under a key derived
from (k_j, operation id, label) with SHA-256, so draws never repeat across operations and the two holders of a
key draw the same values without talking.  A zero-sharing alpha_i = F(k_i) - F(k_{i+1}) re-randomizes products,
so a multiplication costs one message per party.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from typing import Any, Callable

import numpy as np

from tfppml import ops
from tfppml.errors import PolicyDenied, ProtocolError
from tfppml.ops.prg import new_seed

NUM_PARTIES = 3
_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")

Pair = tuple[np.ndarray, np.ndarray]
OpFunction = Callable[["OpContext", dict, dict], tuple[dict, dict]]
PARTY_OPS: dict[str, OpFunction] = {}
# Operations a driver may not send directly (none yet: every step of a program is also a plain operation).
PROGRAM_ONLY_OPS: frozenset[str] = frozenset()
# Operations a served program may consist of: local and interactive computation, never data movement to or
# from a driver (no input, reveal, free, stats or program management).
PROGRAM_STEP_OPS = frozenset(
    {"add", "sub", "neg", "mul", "matmul", "conv2d", "truncate", "scale_up", "reshape", "transpose", "getitem",
     "concat", "sum", "relu", "nonnegative", "window_sum", "max_pool2d", "argmax"}
)


#: Truncations of tensors up to this size use the one-round protocol (latency-bound: serving a single query);
#: larger ones the two-round protocol, which sends half the bytes (bandwidth-bound: big matmuls).
ONE_ROUND_TRUNC_MAX_SIZE = 1 << 14

#: ReLUs of tensors up to this size use function secret sharing (OpContext.relu_fss: 2 rounds, ~4 KB per element
#: from P0, ~6 us of AES per element); larger ones the binary adder (10 rounds, ~100 bytes per element).  Measured
#: on the demo CNN at batch 1 (ReLUs of 2704 and 800 elements): 33 ms with neither, 29 ms with the smaller one,
#: 48 ms with both by FSS.
FSS_RELU_MAX_SIZE = 1024

#: Masks of at least this many elements are drawn with the multi-threaded TF kernel instead of the direct call.
_PRG_KERNEL_MIN_SIZE = 1 << 18
#: Key words are little-endian whatever the machine (read-only views of the digest are fine: the PRG only reads).
_SEED_DTYPE = np.dtype("<u8")
_ALL_ONES = np.uint64(2**64 - 1)
_SIGN_BIT = np.uint64(2**63)


def party_op(name: str) -> Callable[[OpFunction], OpFunction]:
    """Registers a party-side operation under `name` (the command a driver sends)."""

    def register(fn: OpFunction) -> OpFunction:
        if name in PARTY_OPS:
            raise ValueError(f"party operation {name!r} is registered twice")
        PARTY_OPS[name] = fn
        return fn

    return register


# Shares are NumPy uint64 arrays: NumPy's integer ufuncs wrap modulo 2**64 (no overflow checks on arrays), and
# for the many small elementwise steps of a protocol they cost microseconds where an eager TF op costs a
# hundred.  The heavy kernels (matmul, conv2d, the ChaCha20 PRG) are tfppml's C++ TF ops.
U64 = np.uint64
radd, rsub, rmul, rneg = np.add, np.subtract, np.multiply, np.negative
band, bxor = np.bitwise_and, np.bitwise_xor


def _u64(value: int) -> np.uint64:
    return np.uint64(value)


def _array(tensor: Any) -> np.ndarray:
    """A kernel's result as a read-only NumPy view of the tensor's memory.  `.numpy()` copies (to hand out a
    writable array), which for the large masks and products of a batch was ~5% of a server's CPU; the party
    code never writes into an array in place, and a read-only one makes a write fail loudly."""
    return np.asarray(tensor)


def shift_left(x: np.ndarray, bits: int) -> np.ndarray:
    return np.left_shift(x, np.uint64(bits))


def shift_right_logical(x: np.ndarray, bits: int) -> np.ndarray:
    return np.right_shift(x, np.uint64(bits))


def ring_sum(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    return np.asarray(np.sum(x, axis=None if axis is None else tuple(axis) if isinstance(axis, list) else axis,
                             dtype=np.uint64, keepdims=keepdims))


class Share:
    """One party's view of a shared tensor: its two components, whether they are additive or XOR shares (or a
    plaintext revealed to this party), and the identity that owns it (only the owner may use or reveal it).

    kind "terms" is a product left unshared (a program's last layer, `reshare=False`): `a` is this party's term
    of a three-way additive sharing (no pair: `b` is empty), so it can only be added to, reshaped, passed to relu
    and returned.
    """

    __slots__ = ("a", "b", "kind", "owner")

    def __init__(self, a: np.ndarray, b: np.ndarray, kind: str = "arith") -> None:
        self.a, self.b, self.kind = np.asarray(a), np.asarray(b), kind
        self.owner = ""

    @property
    def shape(self) -> list[int]:
        return list(self.a.shape)


class PartyRuntime:
    """One of the three servers.

    Args:
        index: 0, 1 or 2.
        names: the three parties' names, in index order.
        channel: a `tfppml.net` Channel with send(to, tag, array) / recv(frm, tag, timeout).
    """

    def __init__(self, index: int, names: list[str], channel: Any) -> None:
        if index not in range(NUM_PARTIES):
            raise ValueError(f"PartyRuntime: argument `index` must be 0, 1 or 2, got {index!r}")
        if len(names) != NUM_PARTIES or len(set(names)) != NUM_PARTIES:
            raise ValueError(f"PartyRuntime: argument `names` must be three distinct names, got {names!r}")
        self.index = index
        self.names = list(names)
        self.channel = channel
        self.store: dict[str, Share] = {}
        self.keys: dict[int, bytes] | None = None
        self._setup_lock = threading.Lock()
        self._seen_ops: set[str] = set()
        self._ops_lock = threading.Lock()
        # Communication counters, read (and reset) by the "stats" operation for benchmarks.
        self.stats = {"messages_sent": 0, "bytes_sent": 0, "messages_received": 0}
        self._stats_lock = threading.Lock()
        # Registered programs (served models): name -> Program.
        self.programs: dict[str, Program] = {}
        self._programs_lock = threading.Lock()

    def count(self, key: str, amount: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += amount

    # The service interface of tfppml.net: one command in, one answer out.
    def handle(self, caller: str, meta: dict, tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
        op = meta.get("op")
        op_id = meta.get("op_id")
        args = meta.get("args", {})
        if op not in PARTY_OPS:
            raise ProtocolError(f"unknown operation {op!r}; known: {sorted(PARTY_OPS)}")
        if not isinstance(op_id, str) or not _ID.match(op_id):
            raise ProtocolError(f"operation id must be a short identifier string, got {op_id!r}")
        if not isinstance(args, dict):
            raise ProtocolError(f"operation arguments must be a mapping, got {type(args).__name__}")
        with self._ops_lock:
            # A reused operation id would reuse PRG draws and message tags: refuse it.
            if op_id in self._seen_ops:
                raise ProtocolError(f"operation id {op_id!r} was used before")
            self._seen_ops.add(op_id)
        release = meta.get("release", [])
        if not isinstance(release, list):
            raise ProtocolError(f"'release' must be a list of shared tensor ids, got {type(release).__name__}")
        for share_id in release:
            share = self.store.get(share_id) if isinstance(share_id, str) else None
            if share is not None and share.owner == caller:
                del self.store[share_id]
        if op != "setup" and self.keys is None:
            raise ProtocolError("the party has not been set up: run the 'setup' operation first")
        if op in PROGRAM_ONLY_OPS:
            raise PolicyDenied(f"operation {op!r} only runs inside a served program")
        tensors = {k: np.asarray(v) for k, v in tensors.items()}
        return PARTY_OPS[op](OpContext(self, op_id, caller), args, tensors)


class OpContext:
    """Per-operation helpers: message tags, derived PRG keys and the sub-protocols."""

    def __init__(self, party: PartyRuntime, op_id: str, caller: str, privileged: bool = False) -> None:
        self.party = party
        self.op_id = op_id
        self.i = party.index
        self.caller = caller
        # Inside a served program the steps may read the model owner's weights and the client's input.
        self.privileged = privileged

    # --- the share store, with ownership ----------------------------------------------------------------
    def get(self, share_id: Any, kind: str | None = "arith") -> Share:
        store = self.party.store
        if not isinstance(share_id, str) or share_id not in store:
            raise ProtocolError(f"party {self.party.names[self.i]} holds no shared tensor {share_id!r}")
        share = store[share_id]
        if not self.privileged and share.owner != self.caller:
            raise PolicyDenied(f"{self.caller!r} may not use shared tensor {share_id!r}: it belongs to another identity")
        if kind is not None and share.kind != kind:
            raise ProtocolError(f"shared tensor {share_id!r} is a {share.kind} sharing, expected {kind}")
        return share

    def get_additive(self, share_id: Any) -> Share:
        """`get` for operations that also take a product's unshared terms (kind "terms"): add, reshape, window
        sums, relu and a program's output."""
        share = self.get(share_id, kind=None)
        if share.kind not in ("arith", "terms"):
            raise ProtocolError(f"shared tensor {share_id!r} is a {share.kind} sharing, expected arith")
        return share

    def put(self, share_id: Any, share: Share) -> dict:
        if not isinstance(share_id, str) or not _ID.match(share_id):
            raise ProtocolError(f"shared tensor ids must be short identifier strings, got {share_id!r}")
        existing = self.party.store.get(share_id)
        if existing is not None and existing.owner != self.caller:
            raise PolicyDenied(f"{self.caller!r} may not overwrite shared tensor {share_id!r}")
        share.owner = self.caller
        self.party.store[share_id] = share
        return {"shape": share.shape}

    # --- messages -------------------------------------------------------------------------------------------
    def send(self, to: int, label: str, value: np.ndarray) -> None:
        array = np.asarray(value)
        self.party.channel.send(self.party.names[to % NUM_PARTIES], f"{self.op_id}/{label}", array)
        self.party.count("messages_sent")
        self.party.count("bytes_sent", array.nbytes)

    def recv(self, frm: int, label: str) -> np.ndarray:
        array = self.party.channel.recv(self.party.names[frm % NUM_PARTIES], f"{self.op_id}/{label}")
        self.party.count("messages_received")
        if array.dtype != np.uint64:
            raise ProtocolError(f"message {label!r} from party {frm % NUM_PARTIES} is {array.dtype}, expected uint64")
        return array

    # --- randomness -----------------------------------------------------------------------------------------
    def prg(self, key: int, label: str, shape: list[int]) -> np.ndarray:
        """ChaCha20 output under key k_key, held by parties key-1 and key; only they can call this."""
        key %= NUM_PARTIES
        keys = self.party.keys
        if keys is None or key not in keys:
            raise ProtocolError(f"party {self.i} does not hold key {key}")
        digest = hashlib.sha256(keys[key] + f"|{self.op_id}|{label}".encode()).digest()
        seed = np.frombuffer(digest, dtype=_SEED_DTYPE)
        if _SEED_DTYPE != np.uint64:  # a big-endian machine: the kernel reads native words
            seed = seed.astype(np.uint64)
        # Small masks (every round of a comparison draws some) skip the TF op dispatch, which cost more than
        # the keystream itself; large ones use the kernel, which shards across cores.  Same words either way.
        if math.prod(shape) < _PRG_KERNEL_MIN_SIZE:
            return ops.prg_uniform_numpy(seed, list(shape))
        return _array(ops.prg_uniform(seed, list(shape)))

    def zero_share(self, label: str, shape: list[int]) -> np.ndarray:
        """This party's term of a three-way additive sharing of zero."""
        return rsub(self.prg(self.i, label, shape), self.prg(self.i + 1, label, shape))

    def zero_share_xor(self, label: str, shape: list[int]) -> np.ndarray:
        return bxor(self.prg(self.i, label, shape), self.prg(self.i + 1, label, shape))

    # --- sub-protocols --------------------------------------------------------------------------------------
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
        one = public_term(self.i, _ALL_ONES, zero[:1])
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
        two = _u64(2)

        def xor_arith(p: Pair, q: Pair, step: str) -> Pair:
            pq = self.multiply(p, q, f"{label}/{step}", 0)
            return tuple(rsub(radd(p[k], q[k]), rmul(pq[k], two)) for k in range(2))

        return xor_arith(xor_arith(b0, b1, "x01"), b2, "x012")

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
        wrap = _u64(0 if trunc_bits == 0 else 1 << (64 - trunc_bits))
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
                f"ReLU {self.op_id}/{label}: messages from parties {peer} and 0 have shapes {other.shape} and "
                f"{dealt.shape}, expected ({n},) and ({(1 + extra + words) * n},)"
            )
        opened = dealt[:n]
        high = dealt[n:2 * n] if i == 2 else self.prg(1, f"{label}/rh", [n])
        cw = dealt[(1 + extra) * n:].reshape(n, words)
        c = radd(radd(opened, z), other)
        seed = self.prg(1 if i == 1 else 0, f"{label}/seed", [n, 2])
        f = ops.dcf_eval_numpy(evaluator, seed, cw, np.stack([bxor(c, _SIGN_BIT), c], axis=1))
        low = (c < _SIGN_BIT).astype(np.uint64)  # [c < T], public to both evaluators
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
                f"ReLU {self.op_id}/{label}: the share from party {peer} has shape {theirs.shape}, expected {part.shape}"
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
        nonneg = _flip_bit(self.i, self.msb(x, f"{label}/ge/msb"))
        return self.bit_times(nonneg, x, f"{label}/sel")

    def nonnegative(self, x: Pair, label: str) -> Pair:
        """Additive shares of [x >= 0] (as the integer 0 or 1) for additively shared x."""
        b = self.bit_to_arith(self.msb(x, f"{label}/msb"), f"{label}/b2a")
        # 1 - b: the public 1 enters as the term of index 0 (held by parties 0 and 2).
        return _one_minus(self.i, b)


#: The missing second component of a "terms" share.
_NO_PAIR = np.zeros(0, dtype=np.uint64)


def public_term(i: int, value: Any, like: np.ndarray) -> Pair:
    """Party i's pair of the trivial sharing (value, 0, 0) of a public value."""
    full = np.array(np.broadcast_to(np.asarray(value, dtype=np.uint64), np.shape(like)))
    zero = np.zeros(np.shape(like), dtype=np.uint64)
    if i == 0:
        return full, zero
    if i == 2:
        return zero, full
    return zero, zero


def _flip_bit(i: int, b: Pair) -> Pair:
    """Party i's XOR shares of 1 ^ b: the public 1 enters component 0 (held by parties 0 and 2)."""
    one = _u64(1)
    if i == 0:
        return bxor(b[0], one), b[1]
    if i == 2:
        return b[0], bxor(b[1], one)
    return b


def _one_minus(i: int, b: Pair) -> Pair:
    one = public_term(i, _u64(1), b[0])
    return rsub(one[0], b[0]), rsub(one[1], b[1])


def add(x: Pair, y: Pair) -> Pair:
    return radd(x[0], y[0]), radd(x[1], y[1])


def sub(x: Pair, y: Pair) -> Pair:
    return rsub(x[0], y[0]), rsub(x[1], y[1])


def _pair(share: Share) -> Pair:
    return share.a, share.b


def _int_arg(args: dict, name: str, low: int, high: int) -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"argument {name!r} must be an int in [{low}, {high}], got {value!r}")
    return value


def _shape_arg(args: dict, name: str) -> list[int]:
    value = args.get(name)
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= -1 for v in value):
        raise ProtocolError(f"argument {name!r} must be a list of dimensions, got {value!r}")
    return value


# --- set-up and data movement --------------------------------------------------------------------------------
@party_op("setup")
def _setup(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    party = ctx.party
    with party._setup_lock:
        if party.keys is None:
            # Party i draws k_i and gives it to party i-1, which therefore holds k_{i-1} and k_i.
            own = new_seed(256)
            party.channel.send(party.names[(ctx.i - 1) % NUM_PARTIES], "setup/key", own)
            nxt = np.asarray(party.channel.recv(party.names[(ctx.i + 1) % NUM_PARTIES], "setup/key"))
            if nxt.dtype != np.uint64 or nxt.shape != (4,):
                raise ProtocolError("set-up key from the next party is malformed")
            party.keys = {ctx.i: own.tobytes(), (ctx.i + 1) % NUM_PARTIES: nxt.tobytes()}
    return {}, {}


@party_op("input")
def _input(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """The driver shared a value itself and sends this party its pair."""
    a, b = tensors.get("a"), tensors.get("b")
    if a is None or b is None or a.dtype != np.uint64 or b.dtype != np.uint64 or a.shape != b.shape:
        raise ProtocolError("input needs two uint64 tensors 'a' and 'b' of one shape")
    return ctx.put(args.get("out"), Share(a, b)), {}


@party_op("input_from")
def _input_from(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Party `owner` holds an encoded value and shares it: x_o and x_{o+1} come from keys k_o and k_{o+1}
    (each known to the two parties that need that term), and the owner sends x_{o+2} to the other two."""
    owner = _int_arg(args, "owner", 0, NUM_PARTIES - 1)
    shape = _shape_arg(args, "shape")
    terms: dict[int, np.ndarray] = {}
    for k in (owner, owner + 1):
        if ctx.i in ((k - 1) % NUM_PARTIES, k % NUM_PARTIES):
            terms[k % NUM_PARTIES] = ctx.prg(k, f"term{k % NUM_PARTIES}", shape)
    last = (owner + 2) % NUM_PARTIES
    if ctx.i == owner:
        value = tensors.get("value")
        if value is None or value.dtype != np.uint64 or list(value.shape) != shape:
            raise ProtocolError(f"the owner needs a uint64 'value' of shape {shape}")
        terms[last] = rsub(rsub(value, terms[owner]), terms[(owner + 1) % NUM_PARTIES])
        ctx.send(owner + 1, "last", terms[last])
        ctx.send(owner + 2, "last", terms[last])
    else:
        terms[last] = ctx.recv(owner, "last")
    share = Share(terms[ctx.i], terms[(ctx.i + 1) % NUM_PARTIES])
    return ctx.put(args.get("out"), share), {}


@party_op("public")
def _public(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """A public (already encoded) value as the trivial sharing (v, 0, 0)."""
    value = tensors.get("value")
    if value is None or value.dtype != np.uint64:
        raise ProtocolError("public needs a uint64 'value'")
    return ctx.put(args.get("out"), Share(*public_term(ctx.i, value, value))), {}


@party_op("reveal")
def _reveal(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """To the driver: every party returns its first term.  To party j: party j+2 sends x_{j+2} to party j,
    which stores the plaintext under `out`; nobody else learns anything."""
    share = ctx.get(args.get("x"), args.get("kind", "arith"))
    to = args.get("to")
    if to is None:
        return {"shape": share.shape}, {"term": share.a}
    to = _int_arg(args, "to", 0, NUM_PARTIES - 1)
    if ctx.i == (to + 2) % NUM_PARTIES:
        ctx.send(to, "term", share.a)
    if ctx.i == to:
        missing = ctx.recv(to + 2, "term")
        value = radd(radd(share.a, share.b), missing)
        ctx.put(args.get("out"), Share(value, np.zeros_like(value), kind="plain"))
    return {"shape": share.shape}, {}


@party_op("stats")
def _stats(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Communication counters of this party since the last reset (for benchmarks)."""
    party = ctx.party
    with party._stats_lock:
        stats = dict(party.stats)
        if args.get("reset"):
            party.stats = {key: 0 for key in party.stats}
    return {"stats": stats}, {}


@party_op("free")
def _free(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    ids = args.get("ids", [])
    if not isinstance(ids, list):
        raise ProtocolError("free needs a list of ids")
    for share_id in ids:
        share = ctx.party.store.get(share_id) if isinstance(share_id, str) else None
        if share is not None and share.owner == ctx.caller:
            del ctx.party.store[share_id]
    return {}, {}


# --- local (communication-free) operations ---------------------------------------------------------------
def _componentwise(fn, *shares: Share) -> Share:
    """fn applied to the shares' components alike.  With a "terms" operand the result is terms (first components
    only): party i's first components of a pair sharing sum to its value, as terms do, so t_i + y_i are terms."""
    first = fn(*(share.a for share in shares))
    if any(share.kind == "terms" for share in shares):
        return Share(first, _NO_PAIR, "terms")
    return Share(first, fn(*(share.b for share in shares)))


def _local_binary(fn):
    def run(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
        x, y = ctx.get_additive(args.get("x")), ctx.get_additive(args.get("y"))
        return ctx.put(args.get("out"), _componentwise(fn, x, y)), {}

    return run


party_op("add")(_local_binary(radd))
party_op("sub")(_local_binary(rsub))


@party_op("neg")
def _neg(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get(args.get("x"))
    return ctx.put(args.get("out"), Share(rneg(x.a), rneg(x.b))), {}


@party_op("scale_up")
def _scale_up(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Multiplies by 2**bits locally (raises the fixed-point scale of a share exactly)."""
    x = ctx.get_additive(args.get("x"))
    bits = _int_arg(args, "bits", 0, 62)
    return ctx.put(args.get("out"), _componentwise(lambda t: shift_left(t, bits), x)), {}


@party_op("reshape")
def _reshape(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get_additive(args.get("x"))
    shape = _shape_arg(args, "shape")
    try:
        return ctx.put(args.get("out"), _componentwise(lambda t: np.reshape(t, shape), x)), {}
    except ValueError as err:
        raise ProtocolError(f"reshape of {x.shape} to {shape} failed: {err}") from err


@party_op("transpose")
def _transpose(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get(args.get("x"))
    perm = args.get("perm")
    if perm is not None and sorted(perm) != list(range(len(x.shape))):
        raise ProtocolError(f"perm {perm!r} is not a permutation of the {len(x.shape)} axes")
    return ctx.put(args.get("out"), Share(np.transpose(x.a, perm), np.transpose(x.b, perm))), {}


def decode_index(items: list) -> tuple:
    out = []
    for item in items:
        kind = item.get("t") if isinstance(item, dict) else None
        if kind == "s":
            out.append(slice(item.get("start"), item.get("stop"), item.get("step")))
        elif kind == "i" and isinstance(item.get("v"), int):
            out.append(item["v"])
        elif kind == "e":
            out.append(Ellipsis)
        elif kind == "n":
            out.append(None)
        else:
            raise ProtocolError(f"bad index item {item!r}")
    return tuple(out)


@party_op("getitem")
def _getitem(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get(args.get("x"))
    index = decode_index(args.get("index", []))
    return ctx.put(args.get("out"), Share(x.a[index], x.b[index])), {}


@party_op("concat")
def _concat(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    parts = [ctx.get(i) for i in args.get("xs", [])]
    axis = args.get("axis", 0)
    return ctx.put(
        args.get("out"), Share(np.concatenate([p.a for p in parts], axis), np.concatenate([p.b for p in parts], axis))
    ), {}


@party_op("sum")
def _sum(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get(args.get("x"))
    axis, keepdims = args.get("axis"), bool(args.get("keepdims", False))
    return ctx.put(
        args.get("out"),
        Share(ring_sum(x.a, axis, keepdims), ring_sum(x.b, axis, keepdims)),
    ), {}


# --- interactive operations ----------------------------------------------------------------------------------
def _product_op(make_product):
    def run(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
        x, y = ctx.get(args.get("x")), ctx.get(args.get("y"))
        trunc = _int_arg(args, "trunc", 0, 62)
        terms = args.get("terms", False)
        if not isinstance(terms, bool) or (terms and trunc):
            raise ProtocolError(f"product: 'terms' must be a bool, and cannot go with truncation; got {terms!r}, trunc {trunc}")
        if terms:
            # No reshare: each party keeps its term (a program's last layer returns it to the client as is).
            z = ctx.product_term(_pair(x), _pair(y), "mul", make_product(args))
            return ctx.put(args.get("out"), Share(z, _NO_PAIR, "terms")), {}
        z = ctx.multiply(_pair(x), _pair(y), "mul", trunc, make_product(args))
        return ctx.put(args.get("out"), Share(*z)), {}

    return run


party_op("mul")(_product_op(lambda args: rmul))
#: Matrix products up to this many multiply-adds run through ctypes on the calling thread (no TF dispatch, which
#: cost more than a query row times a layer's weights); larger ones through the TF kernel on all cores.
MATMUL_NUMPY_MAX_MACS = 1 << 21


def _matmul(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if u.ndim == 2 and v.ndim == 2 and u.shape[0] * u.shape[1] * v.shape[1] <= MATMUL_NUMPY_MAX_MACS:
        return ops.ring_matmul_numpy(u, v)
    return _array(ops.ring_matmul(u, v))


party_op("matmul")(_product_op(lambda args: _matmul))
party_op("conv2d")(
    _product_op(
        lambda args: lambda u, v: _array(ops.ring_conv2d(u, v, strides=args["strides"], padding=args["padding"]))
    )
)


@party_op("truncate")
def _truncate(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Divides by 2**bits (probabilistic truncation), e.g. after a product with a public constant."""
    x = ctx.get(args.get("x"))
    bits = _int_arg(args, "bits", 1, 62)
    z = radd(x.a, ctx.zero_share("alpha", x.shape))
    return ctx.put(args.get("out"), Share(*ctx.reshare(z, "trunc", bits))), {}


@party_op("nonnegative")
def _nonnegative(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get(args.get("x"))
    return ctx.put(args.get("out"), Share(*ctx.nonnegative(_pair(x), "ge"))), {}


@party_op("relu")
def _relu(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """max(x, 0), then divided by 2**trunc (default 0).  x may be a product's unshared terms: the truncation
    (and the reshare it needs) then happens inside the ReLU, which for small tensors saves the round."""
    x = ctx.get_additive(args.get("x"))
    trunc = _int_arg(args, "trunc", 0, 62) if "trunc" in args else 0
    return ctx.put(args.get("out"), Share(*ctx.relu(_pair(x), "relu", trunc, terms=x.kind == "terms"))), {}


def _windows(x: np.ndarray, pool: list[int], strides: list[int]) -> np.ndarray:
    """[N, H, W, C] -> [N, OH, OW, ph*pw, C] (VALID padding) by gathering window elements."""
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    rows = (np.arange(oh) * sh)[:, None, None, None] + np.arange(ph)[None, None, :, None]
    cols = (np.arange(ow) * sw)[None, :, None, None] + np.arange(pw)[None, None, None, :]
    flat = (rows * w + cols).reshape(oh, ow, ph * pw)
    gathered = np.take(np.reshape(x, [n, h * w, c]), flat.reshape(-1), axis=1)
    return np.reshape(gathered, [n, oh, ow, ph * pw, c])


@party_op("window_sum")
def _window_sum(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get_additive(args.get("x"))
    pool, strides = args["pool"], args["strides"]
    return ctx.put(args.get("out"), _componentwise(lambda t: ring_sum(_windows(t, pool, strides), axis=3), x)), {}


def _tree_max(ctx: OpContext, x: Pair, axis: int, label: str, index: Pair | None = None) -> tuple[Pair, Pair | None]:
    """Max (and optionally the matching index values) along `axis` by a tournament of pairwise comparisons."""
    level = 0
    while x[0].shape[axis] > 1:
        k = x[0].shape[axis]
        half = k // 2

        def split(p: Pair) -> tuple[Pair, Pair, Pair | None]:
            parts = [np.split(t, [half, 2 * half], axis=axis) for t in p]
            rest = (parts[0][2], parts[1][2]) if k % 2 else None
            return (parts[0][0], parts[1][0]), (parts[0][1], parts[1][1]), rest

        left, right, rest = split(x)
        d = sub(left, right)
        if index is None:
            # max(l, r) = r + ReLU(l - r).
            x = add(right, ctx.relu(d, f"{label}/l{level}"))
        else:
            bit = ctx.nonnegative(d, f"{label}/l{level}/ge")
            ileft, iright, irest = split(index)
            di = sub(ileft, iright)
            stacked_bit = (np.stack([bit[0], bit[0]]), np.stack([bit[1], bit[1]]))
            stacked = (np.stack([d[0], di[0]]), np.stack([d[1], di[1]]))
            sel = ctx.multiply(stacked_bit, stacked, f"{label}/l{level}/sel", 0)
            x = add(right, (sel[0][0], sel[1][0]))
            index = add(iright, (sel[0][1], sel[1][1]))
            if irest is not None:
                index = tuple(np.concatenate([index[j], irest[j]], axis) for j in range(2))
        if rest is not None:
            x = tuple(np.concatenate([x[j], rest[j]], axis) for j in range(2))
        level += 1
    return x, index


@party_op("max_pool2d")
def _max_pool2d(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    x = ctx.get(args.get("x"))
    pool, strides = args["pool"], args["strides"]
    w = (_windows(x.a, pool, strides), _windows(x.b, pool, strides))
    m, _ = _tree_max(ctx, w, 3, "max")
    return ctx.put(args.get("out"), Share(np.squeeze(m[0], 3), np.squeeze(m[1], 3))), {}


@party_op("argmax")
def _argmax(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Index of the maximum along the last axis, as a shared integer (among ties, any one of them)."""
    x = _pair(ctx.get(args.get("x")))
    k = x[0].shape[-1]
    positions = np.broadcast_to(np.arange(k, dtype=np.uint64), x[0].shape)
    index = public_term(ctx.i, positions, x[0])
    _, idx = _tree_max(ctx, x, len(x[0].shape) - 1, "argmax", index)
    return ctx.put(args.get("out"), Share(np.squeeze(idx[0], -1), np.squeeze(idx[1], -1))), {}


class Program:
    """A registered computation (a model's forward pass) that clients may run on their own inputs.

    Steps reference the program's input as "$input", earlier steps' outputs as "$0", "$1", ..., and shared
    tensors of the owner (weights) by id.  Only the owner can register, serve and stop it; a client that queries
    it gets its own output terms and nothing else.
    """

    def __init__(self, owner: str, steps: list[dict], output_frac_bits: int) -> None:
        self.owner = owner
        self.steps = steps
        self.output_frac_bits = output_frac_bits
        self.quota = 0  # queries allowed in the current serving period
        self.started = 0  # queries admitted in it
        self.served = 0  # queries answered in it


def _step_refs(args: dict) -> list[str]:
    refs = [args[k] for k in ("x", "y") if isinstance(args.get(k), str)]
    refs += [v for v in args.get("xs", []) if isinstance(v, str)]
    return refs


@party_op("register_program")
def _register_program(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    name, steps = args.get("name"), args.get("steps")
    if not isinstance(name, str) or not _ID.match(name):
        raise ProtocolError(f"program name must be a short identifier string, got {name!r}")
    if not isinstance(steps, list) or not steps:
        raise ProtocolError("a program needs a non-empty list of steps")
    for k, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("op") not in PROGRAM_STEP_OPS or not isinstance(step.get("args"), dict):
            raise ProtocolError(f"program step {k} is not an allowed operation: {step!r:.200}")
        if step["args"].get("out") != f"${k}":
            raise ProtocolError(f"program step {k} must write ${k}")
        for ref in _step_refs(step["args"]):
            if ref == "$input" or (ref.startswith("$") and ref[1:].isdigit() and int(ref[1:]) < k):
                continue
            ctx.get(ref)  # the owner's own shared tensor (raises PolicyDenied otherwise)
    frac = _int_arg(args, "output_frac_bits", 0, 62)
    with ctx.party._programs_lock:
        existing = ctx.party.programs.get(name)
        if existing is not None and existing.owner != ctx.caller:
            raise PolicyDenied(f"program {name!r} belongs to another identity")
        ctx.party.programs[name] = Program(ctx.caller, steps, frac)
    return {}, {}


def _owned_program(ctx: OpContext, args: dict) -> Program:
    program = ctx.party.programs.get(args.get("name"))
    if program is None:
        raise ProtocolError(f"no program named {args.get('name')!r} is registered")
    if program.owner != ctx.caller:
        raise PolicyDenied(f"only the owner of program {args.get('name')!r} may control it")
    return program


@party_op("serve")
def _serve(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    program = _owned_program(ctx, args)
    quota = _int_arg(args, "num_requests", 0, 2**31)
    with ctx.party._programs_lock:
        program.quota, program.started, program.served = quota, 0, 0
    return {}, {}


@party_op("stop_serving")
def _stop_serving(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    program = _owned_program(ctx, args)
    with ctx.party._programs_lock:
        program.quota = program.started
    return {"served": program.served}, {}


@party_op("program_status")
def _program_status(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    program = _owned_program(ctx, args)
    with ctx.party._programs_lock:
        return {"quota": program.quota, "started": program.started, "served": program.served}, {}


@party_op("query")
def _query(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Runs a served program on the caller's own shared input and returns this party's term of the output
    to the caller only.  Intermediate values are deleted afterwards.

    The input is either a shared tensor the caller made earlier (args "input") or the caller's pair for this
    party sent with the query itself (tensors "a" and "b", as for "input"): one call per query instead of three
    (input, query, free), and the inline input is deleted with the intermediates."""
    name = args.get("name")
    program = ctx.party.programs.get(name)
    if program is None:
        raise ProtocolError(f"no program named {name!r} is registered")
    inline = "a" in tensors or "b" in tensors
    if inline:
        if "input" in args:
            raise ProtocolError("query: give the input either as 'input' or inline as tensors 'a' and 'b', not both")
        input_id = f"{ctx.op_id}.input"
        _input(ctx, {"out": input_id}, tensors)
    else:
        input_id = args.get("input")
        ctx.get(input_id)  # must be the caller's own input
    with ctx.party._programs_lock:
        if program.started >= program.quota:
            if inline:
                ctx.party.store.pop(input_id, None)
            raise PolicyDenied(f"program {name!r} is not serving (it answered {program.served} of {program.quota} requests)")
        program.started += 1
    inner = OpContext(ctx.party, ctx.op_id, ctx.caller, privileged=True)
    produced: list[str] = [input_id] if inline else []
    try:
        for k, step in enumerate(program.steps):
            resolved = {key: _resolve(value, input_id, ctx.op_id) for key, value in step["args"].items()}
            produced.append(resolved["out"])
            PARTY_OPS[step["op"]](OpContext(ctx.party, f"{ctx.op_id}.{k}", ctx.caller, privileged=True), resolved, {})
        result = inner.get_additive(produced[-1])
        meta = {"shape": result.shape, "frac_bits": program.output_frac_bits}
        answer = {"term": result.a}
    finally:
        for share_id in produced:
            ctx.party.store.pop(share_id, None)
    with ctx.party._programs_lock:
        program.served += 1
    return meta, answer


def _resolve(value: Any, input_id: str, op_id: str) -> Any:
    if isinstance(value, list):
        return [_resolve(v, input_id, op_id) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        return input_id if value == "$input" else f"{op_id}.s{value[1:]}"
    return value


def make_service(name: str, config: Any, channel: Any) -> PartyRuntime:
    """Factory of the "mpc" worker service (`tfppml worker --service mpc`): this worker's party runtime.

    The cluster's first three parties, in the order of its configuration, are servers 0, 1 and 2.
    """
    names = list(config.party_names)[:NUM_PARTIES]
    if len(names) != NUM_PARTIES or name not in names:
        raise ValueError(
            f"the mpc service needs a cluster of three parties including {name!r}, got {list(config.party_names)}"
        )
    return PartyRuntime(names.index(name), names, channel)
