"""Secure aggregation in the style of Bonawitz et al. (CCS 2017), as plain Python objects, with the sparse
masking graph of SecAgg+ (Bell et al., CCS 2020) as an option.

`n` clients each hold a float vector; the server learns their sum and nothing else, even when some clients
drop out after sending their masked input.

Protocol (one aggregation; every key is fresh for it).  Each client `u` has a set of *neighbours* N(u): every
other client (the complete graph, Bonawitz's protocol, the default) or the `k` clients next to it in a random
circulant graph (``neighbours=k``, see "Sparse graph" below).  H(u) = N(u) + {u} are the *holders* of `u`'s
secret shares; ``m = |H(u)|`` is `n` for the complete graph and ``k + 1`` otherwise.

0. **Advertise keys.** Client `u` draws two X25519 key pairs, `(c_u, C_u)` for its encrypted channels to its
   neighbours (routed through the server) and `(s_u, S_u)` for its pairwise masks, and sends `C_u, S_u`.
1. **Share keys.** Client `u` draws a 256-bit self-mask seed `b_u` and Shamir-shares both `b_u` and its mask
   private key `s_u` among H(u) with threshold `t`: each secret is cut into sixteen 16-bit chunks and every
   chunk is the constant term of its own random polynomial of degree ``t - 1`` over GF(2**31 - 1)
   (:func:`chunk_shares`; holder `v` gets the values at ``x = v + 1``).  The shares meant for `v` are
   encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from X25519(c_u, C_v) and handed to the
   server, which forwards them to `v`; the server sees only ciphertexts.  The TFF factories of
   :mod:`tfppml.federated.tff_secure_agg` reconstruct the chunks of `b_u` with int64 TensorFlow ops.
2. **Masked input.** Client `u` clips its update elementwise to `[-clip, clip]`, quantises it to fixed point
   with `frac_bits` fractional bits (``round(x * 2**frac_bits)``, two's complement) in the ring Z_2^64, and
   sends ``y_u = q(x_u) + PRG(b_u) + sum_{v in N(u), v > u} PRG(s_uv) - sum_{v in N(u), v < u} PRG(s_uv)``
   (mod 2**64) where ``s_uv`` is a ChaCha20 key derived with HKDF-SHA256 from X25519(s_u, S_v) and PRG is
   the ChaCha20 keystream as uint64 (:func:`tfppml.ops.prg_uniform`).
3. **Unmasking.** The server announces who sent a masked input.  Each surviving client returns, for the
   clients whose shares it holds, its share of `b_v` for every `v` that sent an input and of `s_v` for every
   `v` that dropped before sending one, never both for the same client, and only if at least `t` of its own
   holders H(u) sent an input.  A client answers **at most one unmasking request per aggregation** (Bonawitz
   et al., round 4): a second request with different sets is refused, otherwise a server could ask once with
   "`v` survived" and once with "`v` dropped" and get both `b_v` and `s_v`, i.e. `v`'s update.  An identical
   retry (the same two sets, in any order) gets the same answer again, which reveals nothing new.  It also
   refuses a request whose sets overlap, name a client outside U2 (the clients whose shares were routed, the
   set it masked with), leave out a client of U2 it holds shares of, list itself as dropped, or leave fewer
   than `t` of its holders as survivors (:meth:`SecAggClient.unmasking_shares`).  With `t` responses for each
   needed secret the server rebuilds the missing seeds, removes the self masks of the senders and the
   pairwise masks that the dropped clients' neighbours added, and decodes the sum.

What the server learns: the sum of the quantised updates of the clients that sent a masked input (and who
they were).  A single masked vector is uniformly distributed in Z_2^64 whatever the update is (the tests
check this statistically), and any `t - 1` shares reveal nothing about a seed or key.

Threat model: an honest-but-curious server and honest-but-curious clients.  With the complete graph,
privacy holds against the server colluding with fewer than `t` clients (they learn nothing beyond the sum
of the honest clients' inputs).  Against a server that lies about who dropped out, the once-per-round rule
and the majority threshold (``t > m / 2``) mean honest clients never hand out both secrets of one client:
asking the same clients twice is refused, and two disjoint groups of holders, one told "`v` survived" and
one told "`v` dropped", cannot both reach `t`.  A lying server *colluding with clients* (which can answer
both ways) is out of scope: Bonawitz et al.'s malicious variant adds a consistency check and signatures,
which this module does not implement.  Correctness needs, for every secret to rebuild, at least `t` of its
holders to answer the unmasking round; otherwise :meth:`SecAggServer.unmask` raises
:class:`tfppml.errors.ProtocolError`.

Sparse graph (``neighbours=k``, SecAgg+)
----------------------------------------
The complete graph costs every client ``2 (n - 1)`` X25519 agreements, `n` encrypted shares and ``n - 1``
mask expansions, so the whole round is quadratic in `n`.  With ``neighbours=k`` (even) the server draws a
fresh public random permutation of the clients per aggregation (``graph_seed``) and places them on a cycle;
each client's neighbours are the ``k / 2`` clients on either side (a Harary graph H(k, n), as in Bell et
al.).  Every client then does ``O(k)`` work.  What changes, stated for our construction (these are our own
bounds, simpler than the paper's theorems):

* Masks are added only along the graph's edges, so after the self masks are removed the server can compute
  the sum of every connected component of the graph restricted to the honest clients that sent an input.
  H(k, n) is k-connected: **if fewer than `k` clients in total dropped out or collude with the server, that
  graph is connected and the server learns only the total**, exactly as with the complete graph.
* Beyond that, the circulant graph restricted to the remaining clients is disconnected only if two disjoint
  runs of ``k / 2`` consecutive positions of the cycle are all lost.  If each client is lost (dropped before
  sending its input, or colluding) independently with probability at most `d`, independently of the
  permutation, this happens with probability at most ``n**2 * d**k``.  :func:`auto_neighbours` picks the
  smallest even `k` with ``n**2 * 3**-k <= 2**-40`` (34 at n = 100, 38 at n = 1000), i.e. `d = 1/3`.
* Shamir thresholds are relative to the neighbourhood: `v`'s secrets are safe while fewer than `t` of the
  ``k + 1`` holders H(v) collude with the server; under the same independence assumption that fails with
  probability at most ``n * P[Binomial(k + 1, d) >= t]``.
* Robustness is per neighbourhood too: a round can be unmasked only if every sender keeps at least `t` of its
  holders; "up to ``m - t`` dropouts" now means per neighbourhood, not in total.

Quantisation: values are clipped to `[-clip, clip]` and rounded to the nearest multiple of
`2**-frac_bits`, so the decoded sum differs from the float sum by at most ``n * 2**-(frac_bits + 1)`` per
element (plus the clipping).  The configuration refuses a `clip`, `frac_bits` and `n` whose worst-case sum
``n * clip * 2**frac_bits`` would not fit in 63 bits, so the ring sum never wraps.

Example:
    >>> import numpy as np
    >>> updates = [np.full(4, 0.25 * i) for i in range(5)]
    >>> total = secure_sum(updates, threshold=3, dropouts=[4])   # client 4 drops after sending its input
    >>> np.round(total, 6).tolist()
    [2.5, 2.5, 2.5, 2.5]
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import math
import numbers
import secrets
import struct
import threading
from typing import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tfppml.errors import ProtocolError
from tfppml.ops.prg import prg_uniform_numpy

__all__ = [
    "CHUNK_PRIME",
    "PRIME",
    "AdvertisedKeys",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "UnmaskingShares",
    "auto_neighbours",
    "chunk_reconstruct",
    "chunk_shares",
    "chunks_to_bytes",
    "dequantize",
    "mask_materials",
    "masking_graph",
    "quantize",
    "resolve_neighbours",
    "secure_sum",
    "shamir_reconstruct",
    "shamir_share",
]

#: The Mersenne prime 2**521 - 1: the field of :func:`shamir_share` (one field element per secret).  The
#: protocol itself shares its secrets chunkwise over :data:`CHUNK_PRIME` instead (vectorised, much faster).
PRIME = 2**521 - 1
#: The Mersenne prime 2**31 - 1: the Shamir field of the protocol.  Secrets are cut into 16-bit chunks, so
#: TensorFlow can reconstruct them with int64 arithmetic (a product of two elements fits in 62 bits).
CHUNK_PRIME = 2**31 - 1
#: Number of 16-bit chunks of a 256-bit seed or key.
SEED_CHUNKS = 16
#: ``auto_neighbours`` keeps the bound ``n**2 * AUTO_LOSS**k`` on a disconnected masking graph below
#: ``2**-AUTO_SECURITY_BITS``.
AUTO_LOSS = 1.0 / 3.0
AUTO_SECURITY_BITS = 40
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_HEADER = struct.Struct("<qqq")  # sender, recipient, round id at the start of every share plaintext


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


# ------------------------------------------------------------------------------------------ the graph
def auto_neighbours(num_clients: int) -> int | None:
    """The neighbour count `k` that ``neighbours="auto"`` chooses for `num_clients` clients.

    The smallest even `k` with ``num_clients**2 * (1/3)**k <= 2**-40`` (see the module docstring: the bound on
    the masking graph falling apart when each client is lost with probability at most 1/3), or None (the
    complete graph) when that `k` would be ``num_clients - 1`` or more.

    Example:
        >>> auto_neighbours(100), auto_neighbours(1000), auto_neighbours(10)
        (34, 38, None)
    """
    n = _check_int("num_clients", num_clients, 2)
    k = math.ceil((AUTO_SECURITY_BITS + 2 * math.log2(n)) / -math.log2(AUTO_LOSS))
    k += k % 2
    return None if k >= n - 1 else k


def resolve_neighbours(num_clients: int, neighbours) -> int | None:
    """Checks a ``neighbours`` argument and returns the degree `k` (an even int) or None (complete graph).

    Args:
        num_clients: Number of clients (slots) `n`.
        neighbours: None (complete graph), ``"auto"`` (:func:`auto_neighbours`), or an even int in
            ``[2, n - 1]``.

    Raises:
        TypeError, ValueError: `neighbours` is none of these (the message names it).
    """
    n = _check_int("num_clients", num_clients, 2)
    if neighbours is None:
        return None
    if isinstance(neighbours, str):
        if neighbours != "auto":
            raise ValueError(f"neighbours must be None, 'auto' or an even int in [2, {n - 1}], got {neighbours!r}")
        return auto_neighbours(n)
    if isinstance(neighbours, bool) or not isinstance(neighbours, numbers.Integral):
        raise TypeError(
            f"neighbours must be None, 'auto' or an even int in [2, {n - 1}], got {type(neighbours).__name__} "
            f"{neighbours!r}"
        )
    k = int(neighbours)
    if k % 2 or not 2 <= k <= n - 1:
        raise ValueError(f"neighbours must be None, 'auto' or an even int in [2, {n - 1}], got {k} (num_clients={n})")
    return k


@functools.lru_cache(maxsize=16)
def masking_graph(num_clients: int, neighbours: int, graph_seed: int) -> np.ndarray:
    """The SecAgg+ masking graph: each client's `neighbours` neighbours, as an int64 array ``[n, k]``.

    A uniformly random permutation (from `graph_seed`, which is public) puts the clients on a cycle; each is
    joined to the ``k / 2`` clients on either side (the Harary graph H(k, n), k-connected).  Rows are sorted.
    The graph is symmetric: ``v in graph[u]`` iff ``u in graph[v]``.

    Raises:
        TypeError, ValueError: a bad argument (see :func:`resolve_neighbours`).

    Example:
        >>> g = masking_graph(10, 4, graph_seed=1)
        >>> g.shape, bool(all(0 in g[v] for v in g[0]))
        ((10, 4), True)
    """
    n = _check_int("num_clients", num_clients, 2)
    k = resolve_neighbours(n, neighbours)
    if k is None:
        raise ValueError("neighbours must be an even int for masking_graph, got None")
    seed = _check_int("graph_seed", graph_seed, 0)
    perm = np.random.default_rng(seed).permutation(n)  # perm[p]: the client at position p of the cycle
    position = np.empty(n, dtype=np.int64)
    position[perm] = np.arange(n)
    half = np.arange(1, k // 2 + 1)
    offsets = np.concatenate([half, -half])
    graph = np.sort(perm[(position[:, None] + offsets[None, :]) % n], axis=1)
    graph.setflags(write=False)
    return graph


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """Parameters every party of one aggregation agrees on.

    Args:
        num_clients: Number of clients `n` that start the aggregation (ids 0 .. n-1), at least 2.
        threshold: Shamir threshold `t`: at least `t` of the holders of a client's shares must answer the
            unmasking round.  Must satisfy ``m // 2 < t <= m`` (a majority, so that two disjoint groups cannot
            both reconstruct) where ``m = num_clients`` for the complete graph and ``neighbours + 1``
            otherwise.
        vector_size: Length of every client's update.
        clip: Elementwise bound: updates are clipped to `[-clip, clip]` before quantisation.
        frac_bits: Fractional bits of the fixed-point encoding (scale ``2**frac_bits``).
        round_id: Any int naming this aggregation; it is bound into every derived key.
        neighbours: None for the complete masking graph (Bonawitz), or the even degree `k` of the SecAgg+
            graph (:func:`masking_graph`); resolve ``"auto"`` with :func:`resolve_neighbours` first.
        graph_seed: Public seed of the sparse graph's random permutation; the server draws it fresh for
            each aggregation (:func:`mask_materials` and :func:`secure_sum` do).  Ignored for the complete
            graph.

    Raises:
        TypeError, ValueError: an argument has the wrong type or range, or ``num_clients * clip *
            2**frac_bits`` does not fit in 63 bits (the ring sum could wrap).

    Example:
        >>> SecAggConfig(num_clients=10, threshold=6, vector_size=100).scale
        16777216
    """

    num_clients: int
    threshold: int
    vector_size: int
    clip: float = 1.0
    frac_bits: int = 24
    round_id: int = 0
    neighbours: int | None = None
    graph_seed: int = 0

    def __post_init__(self):
        n = _check_int("num_clients", self.num_clients, 2)
        t = _check_int("threshold", self.threshold, 1)
        if self.neighbours is not None:
            if isinstance(self.neighbours, str):
                raise TypeError(f"neighbours must be None or an even int (resolve 'auto' with resolve_neighbours), got {self.neighbours!r}")
            resolve_neighbours(n, self.neighbours)
        m = self.holders
        if not m // 2 < t <= m:
            if self.neighbours is None:
                raise ValueError(
                    f"threshold must satisfy num_clients // 2 < threshold <= num_clients, got threshold={t} "
                    f"with num_clients={n} (expected {n // 2 + 1}..{n})"
                )
            raise ValueError(
                f"threshold must satisfy (neighbours + 1) // 2 < threshold <= neighbours + 1, got threshold={t} "
                f"with neighbours={self.neighbours} (expected {m // 2 + 1}..{m})"
            )
        _check_int("vector_size", self.vector_size, 1)
        _check_int("frac_bits", self.frac_bits, 0)
        _check_int("round_id", self.round_id, 0)
        _check_int("graph_seed", self.graph_seed, 0)
        if isinstance(self.clip, bool) or not isinstance(self.clip, numbers.Real) or not self.clip > 0:
            raise ValueError(f"clip must be a positive real number, got {self.clip!r}")
        if not math.isfinite(self.clip):
            raise ValueError(f"clip must be finite, got {self.clip!r}")
        worst = n * (math.floor(self.clip * 2**self.frac_bits) + 1)
        if worst >= 2**63:
            raise ValueError(
                f"num_clients * clip * 2**frac_bits must be < 2**63 so the ring sum cannot wrap, got "
                f"num_clients={n}, clip={self.clip}, frac_bits={self.frac_bits} (worst-case |sum| ~ 2**"
                f"{math.log2(worst):.1f}); lower frac_bits or clip"
            )

    @property
    def scale(self) -> int:
        """The fixed-point scale ``2**frac_bits``."""
        return 2**self.frac_bits

    @property
    def holders(self) -> int:
        """``m``: how many clients hold shares of one client's secrets (itself included)."""
        return self.num_clients if self.neighbours is None else self.neighbours + 1

    def neighbours_of(self, client: int) -> tuple[int, ...]:
        """The sorted ids of `client`'s neighbours N(client) (every other client for the complete graph)."""
        if self.neighbours is None:
            return tuple(v for v in range(self.num_clients) if v != client)
        return tuple(masking_graph(self.num_clients, self.neighbours, self.graph_seed)[client].tolist())

    def holders_of(self, client: int) -> tuple[int, ...]:
        """H(client): the sorted ids of the clients holding `client`'s shares, `client` included."""
        return tuple(sorted((*self.neighbours_of(client), client)))


def quantize(update: np.ndarray, clip: float, frac_bits: int) -> np.ndarray:
    """Clips `update` to `[-clip, clip]` and encodes it in Z_2^64 as ``round(x * 2**frac_bits)``.

    Args:
        update: Float vector.
        clip: Elementwise bound, positive.
        frac_bits: Fractional bits, >= 0.

    Returns:
        uint64 vector (negative values in two's complement).

    Raises:
        ValueError: `update` holds NaN or infinity.

    Example:
        >>> quantize(np.array([0.5, -0.5, 3.0]), clip=1.0, frac_bits=2).astype(np.int64).tolist()
        [2, -2, 4]
    """
    x = np.asarray(update, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("update must hold finite values, got NaN or infinity")
    q = np.rint(np.clip(x, -clip, clip) * float(2**frac_bits)).astype(np.int64)
    return q.view(np.uint64)


def dequantize(ring_sum: np.ndarray, frac_bits: int) -> np.ndarray:
    """Decodes a ring value (two's complement fixed point) to float64: the inverse of :func:`quantize`."""
    return np.asarray(ring_sum, dtype=np.uint64).view(np.int64).astype(np.float64) / float(2**frac_bits)


# ----------------------------------------------------------------------------------------------- Shamir
def shamir_share(secret: int, num_shares: int, threshold: int) -> list[tuple[int, int]]:
    """Splits `secret` into `num_shares` Shamir shares over GF(:data:`PRIME`); any `threshold` rebuild it.

    Args:
        secret: Integer in [0, PRIME).
        num_shares: Number of shares; share `i` is the polynomial evaluated at ``x = i + 1``.
        threshold: Shares needed to rebuild (the polynomial has degree ``threshold - 1``).

    Returns:
        List of ``(x, y)`` points.

    Raises:
        ValueError: `secret` is out of range or ``threshold > num_shares``.

    Example:
        >>> shares = shamir_share(42, 5, 3)
        >>> shamir_reconstruct(shares[2:])
        42
    """
    if not 0 <= secret < PRIME:
        raise ValueError(f"secret must be in [0, 2**521 - 1), got {secret}")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold must be in [1, num_shares={num_shares}], got {threshold}")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def shamir_reconstruct(shares: Sequence[tuple[int, int]]) -> int:
    """Rebuilds the secret from Shamir shares by Lagrange interpolation at 0.

    Args:
        shares: ``(x, y)`` points with distinct `x`; at least the threshold of them (fewer give a value
            unrelated to the secret).

    Returns:
        The secret.

    Raises:
        ValueError: no shares, or repeated `x`.
    """
    if not shares:
        raise ValueError("shares must not be empty")
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError(f"shares must have distinct x coordinates, got {sorted(xs)}")
    secret = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret


def seed_chunks(seed: bytes) -> np.ndarray:
    """A 32-byte seed as 16 chunks of 16 bits (int64): chunk ``4 * w + k`` is bits ``16k .. 16k+15`` of the
    little-endian uint64 word `w`, the layout :mod:`tfppml.federated.tff_secure_agg` reassembles."""
    words = np.frombuffer(seed, dtype="<u8").astype(np.uint64)
    shifts = np.arange(4, dtype=np.uint64) * np.uint64(16)
    return ((words[:, None] >> shifts[None, :]) & np.uint64(0xFFFF)).reshape(-1).astype(np.int64)




def chunks_to_bytes(chunks: np.ndarray) -> bytes:
    """The inverse of :func:`seed_chunks`: 16 chunks of 16 bits back to the 32-byte seed or key."""
    c = np.asarray(chunks, dtype=np.int64)
    if c.shape != (SEED_CHUNKS,) or np.any(c < 0) or np.any(c > 0xFFFF):
        raise ValueError(f"chunks must be {SEED_CHUNKS} integers in [0, 2**16), got {c.tolist()}")
    parts = c.astype(np.uint64).reshape(4, 4) << (np.arange(4, dtype=np.uint64) * np.uint64(16))[None, :]
    return np.bitwise_or.reduce(parts, axis=1).astype("<u8").tobytes()


def _share_chunks(chunks: np.ndarray, xs: np.ndarray, threshold: int) -> np.ndarray:
    """Shamir shares over GF(CHUNK_PRIME) of every entry of `chunks` at the points `xs`: int64 [len(xs), c]."""
    p = np.int64(CHUNK_PRIME)
    c = chunks.shape[0]
    raw = np.frombuffer(secrets.token_bytes(8 * (threshold - 1) * c), dtype="<u8")
    coeffs = (raw % np.uint64(CHUNK_PRIME)).astype(np.int64).reshape(threshold - 1, c)
    x = np.asarray(xs, dtype=np.int64)[:, None] % p
    y = np.zeros((x.shape[0], c), dtype=np.int64)
    for coeff in coeffs[::-1]:  # Horner from the top coefficient; every product stays below 2**62
        y = (y * x + coeff[None, :]) % p
    return (y * x + chunks[None, :]) % p


def chunk_shares(seed: bytes, num_shares: int, threshold: int) -> np.ndarray:
    """Shamir-shares a 32-byte seed chunkwise over GF(:data:`CHUNK_PRIME`); share `i` is at ``x = i + 1``.

    Each 16-bit chunk is the constant term of its own random polynomial of degree ``threshold - 1``, so any
    `threshold` shares rebuild the seed and fewer reveal nothing about it.  Coefficients come from the OS
    CSPRNG reduced mod the prime (a bias below 2**-32 per coefficient).

    Args:
        seed: 32 bytes.
        num_shares: Number of shares.
        threshold: Shares needed to rebuild, in [1, num_shares].

    Returns:
        int64 array ``[num_shares, 16]``.

    Raises:
        ValueError: `seed` is not 32 bytes or `threshold` is out of range.

    Example:
        >>> shares = chunk_shares(bytes(range(32)), 5, 3)
        >>> chunks_to_bytes(chunk_reconstruct([2, 4, 5], shares[[1, 3, 4]])) == bytes(range(32))
        True
    """
    if len(seed) != 32:
        raise ValueError(f"seed must be 32 bytes, got {len(seed)}")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold must be in [1, num_shares={num_shares}], got {threshold}")
    return _share_chunks(seed_chunks(seed), np.arange(1, num_shares + 1), threshold)


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> np.ndarray:
    p = CHUNK_PRIME
    lam = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % p
                den = den * (xm - xj) % p
        lam.append(num * pow(den, -1, p) % p)
    return np.asarray(lam, dtype=np.int64)


def chunk_reconstruct(xs: Sequence[int], shares: np.ndarray) -> np.ndarray:
    """Rebuilds chunkwise Shamir secrets over GF(:data:`CHUNK_PRIME`) by Lagrange interpolation at 0.

    Args:
        xs: The distinct x coordinates of the shares (a holder `v`'s are at ``v + 1``).
        shares: int64 ``[len(xs), c]``: row `j` is the share at ``xs[j]``; at least the threshold of rows
            (fewer give values unrelated to the secret).

    Returns:
        int64 ``[c]``: the secret chunks.

    Raises:
        ValueError: no shares, repeated `x`, or a shape mismatch.
    """
    key = tuple(int(x) for x in xs)
    y = np.asarray(shares, dtype=np.int64)
    if not key:
        raise ValueError("xs must not be empty")
    if len(set(key)) != len(key):
        raise ValueError(f"xs must be distinct, got {sorted(key)}")
    if y.ndim != 2 or y.shape[0] != len(key):
        raise ValueError(f"shares must have shape [len(xs)={len(key)}, c], got {y.shape}")
    p = np.int64(CHUNK_PRIME)
    lam = _lagrange_at_zero(key)
    return np.sum((lam[:, None] * (y % p)) % p, axis=0) % p  # a sum of < 2**32 terms below 2**31 each


# --------------------------------------------------------------------------------------------- helpers
_HKDF_SALT = bytes(32)  # RFC 5869: no salt means HashLen zero bytes


def _kdf(shared: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with no salt and 32 bytes of output: one extract and one expand block."""
    prk = hmac.digest(_HKDF_SALT, shared, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _seed_words(key: bytes) -> np.ndarray:
    return np.frombuffer(key, dtype="<u8").astype(np.uint64)


def _expand(key: bytes, size: int) -> np.ndarray:
    return prg_uniform_numpy(_seed_words(key), [size])


def _pair_mask_key(private: X25519PrivateKey, peer_public: bytes, round_id: int, u: int, v: int) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    lo, hi = min(u, v), max(u, v)
    return _kdf(shared, b"tfppml-secagg-mask|%d|%d|%d" % (round_id, lo, hi))


def _channel_key(private: X25519PrivateKey, peer_public: bytes, round_id: int, u: int, v: int) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    lo, hi = min(u, v), max(u, v)
    return _kdf(shared, b"tfppml-secagg-channel|%d|%d|%d" % (round_id, lo, hi))


def _signed_pair_mask(u: int, v: int, mask: np.ndarray) -> np.ndarray:
    """The pairwise mask as client `u` adds it: +PRG(s_uv) if u < v, -PRG(s_uv) if u > v (mod 2**64)."""
    return mask if u < v else (np.uint64(0) - mask)


@functools.lru_cache(maxsize=16)
def _holder_table(num_clients: int, neighbours: int | None, graph_seed: int) -> np.ndarray:
    """int32 ``[n, m]``: row `v` is H(v), sorted (read-only)."""
    n = num_clients
    if neighbours is None:
        table = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :], (n, n))
    else:
        graph = masking_graph(n, neighbours, graph_seed)
        table = np.sort(np.concatenate([graph, np.arange(n)[:, None]], axis=1), axis=1).astype(np.int32)
        table.setflags(write=False)
    return table


@dataclasses.dataclass(frozen=True)
class AdvertisedKeys:
    """Round-0 message: a client's two X25519 public keys (32 raw bytes each)."""

    client_id: int
    channel_public: bytes
    mask_public: bytes


@dataclasses.dataclass(frozen=True)
class UnmaskingShares:
    """Round-3 message: a client's shares of the self-mask seeds of senders and mask keys of dropouts.

    Each share is ``(x, chunks)``: the holder's point ``x = client_id + 1`` and the int64 [16] chunk shares.
    """

    client_id: int
    self_seed_shares: Mapping[int, tuple[int, np.ndarray]]
    mask_key_shares: Mapping[int, tuple[int, np.ndarray]]


# ------------------------------------------------------------------------------------------------ client
class SecAggClient:
    """One client of the protocol.  Call its methods in order: `advertise_keys`, `share_keys`,
    `receive_shares`, `masked_input` (or `mask_material`), `unmasking_shares`.

    Args:
        client_id: The client's id in ``range(config.num_clients)``.
        config: The aggregation's :class:`SecAggConfig`.

    Raises:
        ValueError: `client_id` is out of range.
        ProtocolError: a method is called out of order or receives something inconsistent.
    """

    def __init__(self, client_id: int, config: SecAggConfig):
        _check_int("client_id", client_id, 0)
        if client_id >= config.num_clients:
            raise ValueError(f"client_id must be in [0, {config.num_clients}), got {client_id}")
        self.id = int(client_id)
        self.config = config
        self._neighbours = config.neighbours_of(self.id)
        self._neighbour_set = frozenset(self._neighbours)
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._self_seed = secrets.token_bytes(32)
        self._roster: dict[int, AdvertisedKeys] | None = None
        # v -> int64 [32]: this client's shares (at x = id + 1) of b_v's 16 chunks, then of s_v's 16 chunks.
        self._held: dict[int, np.ndarray] = {}
        self._channel_keys: dict[int, bytes] = {}
        self._pair_keys: dict[int, bytes] = {}
        self._sent_input = False
        # U2 as this client masked with it (None: the clients whose shares it holds, see `_peers`).
        self._senders: frozenset[int] | None = None
        # The one unmasking request this client answers (survivors, dropped) and its answer; see
        # `unmasking_shares`.  The lock makes check-and-record atomic if a server's requests race.
        self._unmask_request: tuple[frozenset[int], frozenset[int]] | None = None
        self._unmask_answer: UnmaskingShares | None = None
        self._unmask_lock = threading.Lock()

    def advertise_keys(self) -> AdvertisedKeys:
        """Round 0: the public keys to broadcast through the server."""
        return AdvertisedKeys(
            self.id,
            self._c_key.public_key().public_bytes(_RAW, _RAW_PUB),
            self._s_key.public_key().public_bytes(_RAW, _RAW_PUB),
        )

    def share_keys(self, roster: Mapping[int, AdvertisedKeys]) -> dict[int, bytes]:
        """Round 1: Shamir-shares the self-mask seed and the mask private key among the holders H(u).

        Args:
            roster: The server's broadcast of every round-0 message, keyed by client id (must include this
                client and at least `threshold` clients, `threshold` of them in H(u)).

        Returns:
            ``{v: ciphertext}`` for every neighbour `v` in the roster.

        Raises:
            ProtocolError: the roster is too small, lacks this client or holds other keys for it.
        """
        cfg = self.config
        if len(roster) < cfg.threshold:
            raise ProtocolError(
                f"client {self.id}: the key roster lists {len(roster)} clients, fewer than the threshold "
                f"{cfg.threshold}; aborting"
            )
        if roster.get(self.id) != self.advertise_keys():
            raise ProtocolError(f"client {self.id}: the key roster does not carry this client's own keys")
        holders = [v for v in cfg.holders_of(self.id) if v in roster]
        if len(holders) < cfg.threshold:
            raise ProtocolError(
                f"client {self.id}: only {len(holders)} of the {cfg.holders} clients that would hold its shares "
                f"are in the key roster, fewer than the threshold {cfg.threshold}; aborting"
            )
        self._roster = dict(roster)
        raw_key = self._s_key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())
        secret_chunks = np.concatenate([seed_chunks(self._self_seed), seed_chunks(raw_key)])
        shares = _share_chunks(secret_chunks, np.asarray(holders) + 1, cfg.threshold)
        out = {}
        for v, share in zip(holders, shares):
            if v == self.id:
                self._held[self.id] = share
                continue
            plaintext = _HEADER.pack(self.id, v, cfg.round_id) + share.astype("<u4").tobytes()
            nonce = secrets.token_bytes(12)
            aead = AESGCM(self._channel_key_with(v, roster[v].channel_public))
            out[v] = nonce + aead.encrypt(nonce, plaintext, None)
        return out

    def _channel_key_with(self, v: int, channel_public: bytes) -> bytes:
        # Both directions of a channel use the same key; caching it halves the X25519 work of a round.
        if v not in self._channel_keys:
            self._channel_keys[v] = _channel_key(self._c_key, channel_public, self.config.round_id, self.id, v)
        return self._channel_keys[v]

    def _pair_key(self, v: int) -> bytes:
        if v not in self._pair_keys:
            self._pair_keys[v] = _pair_mask_key(
                self._s_key, self._roster[v].mask_public, self.config.round_id, self.id, v
            )
        return self._pair_keys[v]

    def receive_shares(self, ciphertexts: Mapping[int, bytes]) -> None:
        """Round 1 (receiving end): decrypts and keeps the shares other clients sent to this client.

        Raises:
            ProtocolError: a ciphertext fails authentication, comes from a client that is not a neighbour,
                or names the wrong sender/recipient/round.
        """
        if self._roster is None:
            raise ProtocolError(f"client {self.id}: receive_shares called before share_keys")
        cfg = self.config
        expected_len = _HEADER.size + 8 * SEED_CHUNKS
        for u, blob in ciphertexts.items():
            if u not in self._roster:
                raise ProtocolError(f"client {self.id}: received shares from client {u}, not in the roster")
            if u not in self._neighbour_set:
                raise ProtocolError(f"client {self.id}: received shares from client {u}, not one of its neighbours")
            aead = AESGCM(self._channel_key_with(u, self._roster[u].channel_public))
            try:
                plain = aead.decrypt(blob[:12], blob[12:], None)
            except Exception as err:  # cryptography raises InvalidTag
                raise ProtocolError(
                    f"client {self.id}: shares from client {u} failed authentication"
                ) from err
            if len(plain) != expected_len:
                raise ProtocolError(f"client {self.id}: shares from client {u} are malformed")
            if _HEADER.unpack_from(plain) != (u, self.id, cfg.round_id):
                raise ProtocolError(f"client {self.id}: shares from client {u} are addressed wrongly")
            self._held[u] = np.frombuffer(plain, dtype="<u4", offset=_HEADER.size).astype(np.int64)

    def _peers(self, senders: Sequence[int] | None) -> list[int]:
        """The neighbours this client masks with: those in `senders` (default: those whose shares it holds)."""
        pool = self._held if senders is None else set(senders)
        return [v for v in self._neighbours if v in pool]

    def _total_mask(self, peers: Sequence[int], size: int) -> np.ndarray:
        mask = _expand(self._self_seed, size)
        for v in peers:
            mask = mask + _signed_pair_mask(self.id, v, _expand(self._pair_key(v), size))
        return mask

    def masked_input(self, update: np.ndarray, senders: Sequence[int] | None = None) -> np.ndarray:
        """Round 2: the quantised update plus the self mask and the pairwise masks, in Z_2^64.

        Args:
            update: Float vector of length ``config.vector_size``.
            senders: Clients whose shares were routed (default: the clients whose shares this client
                received); masks are added only with the neighbours among them (the set the server calls U2).

        Returns:
            The uint64 masked vector: the only thing about the update the server ever receives.

        Raises:
            ValueError: `update` has the wrong shape or non-finite values.
            ProtocolError: called before the shares were exchanged.
        """
        cfg = self.config
        x = np.asarray(update, dtype=np.float64)
        if x.shape != (cfg.vector_size,):
            raise ValueError(f"update must have shape ({cfg.vector_size},), got {x.shape}")
        if self._roster is None:
            raise ProtocolError(f"client {self.id}: masked_input called before share_keys")
        y = quantize(x, cfg.clip, cfg.frac_bits) + self._total_mask(self._peers(senders), cfg.vector_size)
        self._senders = None if senders is None else frozenset(int(v) for v in senders)
        self._sent_input = True
        return y

    def mask_material(
        self, senders: Sequence[int] | None = None, mask_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Everything this client needs to mask an update and answer the unmasking round inside TensorFlow.

        This is what :mod:`tfppml.federated.tff_secure_agg` feeds to a TFF computation as a CLIENT-placed
        value: it stays with the client's own computations and never reaches a server-placed one.  With
        ``k`` the number of neighbours (``n - 1`` for the complete graph) and ``m = k + 1``:

        Args:
            senders: The set U2 (default: every client whose shares this client holds).
            mask_size: If given, the material also carries ``mask``: this client's whole round-2 mask
                (self mask plus signed pairwise masks with its neighbours in U2), `mask_size` uint64 words,
                expanded here by the ChaCha20 kernel instead of inside TensorFlow.

        Returns:
            ``index`` (int32, this client's id), ``self_seed`` (uint64 [4], the words of `b_u`), ``peers``
            (int32 [k], the neighbours' ids), ``pair_keys`` (uint64 [k, 4], the ChaCha20 key shared with each
            neighbour in U2, zero elsewhere), ``pair_signs`` (int32 [k]: +1 if this client adds that
            neighbour's mask, -1 if it subtracts it, 0 for non-members of U2), ``held`` (int32 [m]: H(u), the
            clients whose seed shares this client holds), ``holders`` (int32 [m, m]: row j is H(held[j]), the
            points of that seed's sharing), ``seed_shares`` (int64 [m, 16]: this client's chunk shares of
            each held seed, at ``x = index + 1``; zero for non-members of U2) and, with `mask_size`, ``mask``.

        Raises:
            ProtocolError: called before the shares were exchanged, or for a sender whose shares are missing.
        """
        cfg = self.config
        if self._roster is None:
            raise ProtocolError(f"client {self.id}: mask_material called before share_keys")
        members = set(self._held) if senders is None else set(senders)
        k = len(self._neighbours)
        keys = np.zeros((k, 4), dtype=np.uint64)
        signs = np.zeros(k, dtype=np.int32)
        active = []
        for j, v in enumerate(self._neighbours):
            if v not in members:
                continue
            if v not in self._held:
                raise ProtocolError(f"client {self.id}: holds no shares of client {v}")
            keys[j] = _seed_words(self._pair_key(v))
            signs[j] = 1 if self.id < v else -1
            active.append(v)
        table = _holder_table(cfg.num_clients, cfg.neighbours, cfg.graph_seed)
        held = np.asarray(table[self.id], dtype=np.int32)
        shares = np.zeros((held.shape[0], SEED_CHUNKS), dtype=np.int64)
        for j, v in enumerate(held.tolist()):
            if v in members and v in self._held:
                shares[j] = self._held[v][:SEED_CHUNKS]
        material = {
            "index": np.int32(self.id),
            "self_seed": _seed_words(self._self_seed),
            "peers": np.asarray(self._neighbours, dtype=np.int32),
            "pair_keys": keys,
            "pair_signs": signs,
            "held": held,
            "holders": np.ascontiguousarray(table[held], dtype=np.int32),
            "seed_shares": shares,
        }
        if mask_size is not None:
            material["mask"] = self._total_mask(active, _check_int("mask_size", mask_size, 1))
        self._senders = None if senders is None else frozenset(int(v) for v in senders)
        self._sent_input = True
        return material

    def unmasking_shares(self, survivors: Sequence[int], dropped: Sequence[int]) -> UnmaskingShares:
        """Round 3: for the clients whose shares it holds, shares of `b_v` for every sender `v` and of `s_v`
        for every dropped client `v`.  Answered at most once per aggregation.

        The first request that passes the checks below is recorded with its answer.  Asked again with the
        same two sets (in any order, duplicates ignored) the client returns that same answer: a retry after a
        lost reply reveals nothing new.  Asked with different sets it refuses, whatever they are: answering
        "`v` survived" once and "`v` dropped" once would give the server both `b_v` and `s_v`, i.e. `v`'s
        update (Bonawitz et al., CCS 2017: a client answers the unmasking round once).  A refused request is
        not recorded, so it uses up nothing.

        Args:
            survivors: Clients the server says sent a masked input (U3); must include this client.
            dropped: Clients the server says shared keys but sent no masked input: exactly U2 minus U3 (U2 is
                the `senders` this client masked with; if it was not given, only the clients whose shares this
                client holds can be checked).

        Returns:
            The :class:`UnmaskingShares` (its arrays read-only).

        Raises:
            ProtocolError: (naming `survivors` or `dropped`) this client already answered a different
                unmasking request; an id is not an int in ``range(num_clients)``; the two sets overlap
                (answering would reveal both secrets of a client); an id is not in U2; a client of U2 whose
                shares this client holds is in neither set; this client is not among the survivors; fewer than
                `threshold` of the clients holding this client's shares (all clients, for the complete graph)
                are claimed to be survivors; or this client did not send its input.
        """
        surv = self._client_id_set("survivors", survivors)
        drop = self._client_id_set("dropped", dropped)
        request = (surv, drop)
        with self._unmask_lock:
            if self._unmask_request is not None:
                if request == self._unmask_request:
                    return self._unmask_answer
                first_surv, first_drop = self._unmask_request
                raise ProtocolError(
                    f"client {self.id}: refusing a second, different unmasking request in round "
                    f"{self.config.round_id}: it already answered survivors={sorted(first_surv)}, "
                    f"dropped={sorted(first_drop)}, now asked with survivors={sorted(surv)}, "
                    f"dropped={sorted(drop)} (a client answers the unmasking round once: two different "
                    f"answers could reveal both the self mask and the mask key of a client)"
                )
            self._check_unmask_request(surv, drop)
            answer = self._unmask(surv, drop)
            self._claim_unmask_request(request, answer)
            return answer

    def _client_id_set(self, name: str, ids) -> frozenset[int]:
        n = self.config.num_clients
        try:
            items = list(ids)
        except TypeError:
            raise ProtocolError(
                f"client {self.id}: {name} must be a sequence of client ids, got {type(ids).__name__}"
            ) from None
        bad = [
            v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < n
        ]
        if bad:
            raise ProtocolError(
                f"client {self.id}: {name} must hold client ids, ints in [0, {n}), got {bad[:8]!r}"
            )
        return frozenset(int(v) for v in items)

    def _check_unmask_request(self, surv: frozenset[int], drop: frozenset[int]) -> None:
        cfg = self.config
        if surv & drop:
            raise ProtocolError(
                f"client {self.id}: refusing to unmask: clients {sorted(surv & drop)} are listed both as "
                f"survivors and as dropped (the survivors and dropped arguments overlap), "
                f"which would reveal both their self mask and their mask key"
            )
        if not self._sent_input:
            raise ProtocolError(f"client {self.id}: asked to unmask before sending its masked input")
        if self.id not in surv:
            where = "is listed in dropped" if self.id in drop else "is missing from survivors"
            raise ProtocolError(
                f"client {self.id}: refusing to unmask: this client sent its masked input but {where}"
            )
        mine = frozenset(cfg.holders_of(self.id))
        # U2 as far as this client knows it: the senders it masked with, or (if none were given) the clients
        # of H(u) whose shares it holds; ids outside H(u) can only be checked in the first case.
        if self._senders is not None:
            u2, scope = self._senders, None
        else:
            u2, scope = frozenset(self._held), mine
        for name, ids in (("survivors", surv), ("dropped", drop)):
            outside = sorted(v for v in ids if v not in u2 and (scope is None or v in scope))
            if outside:
                raise ProtocolError(
                    f"client {self.id}: refusing to unmask: {name} lists clients {outside} that are not "
                    f"in U2 (the clients whose shares were routed, {sorted(u2)})"
                )
        unlisted = sorted(v for v in u2 - surv - drop if scope is None or v in scope)
        if unlisted:
            raise ProtocolError(
                f"client {self.id}: refusing to unmask: dropped must be U2 minus survivors, but clients "
                f"{unlisted} of U2 are in neither survivors nor dropped"
            )
        alive = len(surv & mine)
        if alive < cfg.threshold:
            raise ProtocolError(
                f"client {self.id}: refusing to unmask: only {alive} survivors among the clients holding its "
                f"shares (in the survivors argument), below the threshold {cfg.threshold}"
            )
        missing = [v for v in (surv | drop) & mine if v not in self._held]
        if missing:
            raise ProtocolError(f"client {self.id}: holds no shares of clients {sorted(missing)}")

    def _unmask(self, surv: frozenset[int], drop: frozenset[int]) -> UnmaskingShares:
        mine = set(self.config.holders_of(self.id))
        x = self.id + 1

        def frozen(a: np.ndarray) -> np.ndarray:
            a = a.copy()
            a.setflags(write=False)
            return a

        return UnmaskingShares(
            self.id,
            {v: (x, frozen(self._held[v][:SEED_CHUNKS])) for v in sorted(surv & mine)},
            {v: (x, frozen(self._held[v][SEED_CHUNKS:])) for v in sorted(drop & mine)},
        )

    def _claim_unmask_request(
        self, request: tuple[frozenset[int], frozenset[int]], answer: UnmaskingShares
    ) -> None:
        """Records the one unmasking request this client answers (the once-per-round rule)."""
        self._unmask_request = request
        self._unmask_answer = answer


# ------------------------------------------------------------------------------------------------ server
class SecAggServer:
    """The server: routes messages and unmasks the sum; it never sees an unmasked update.

    Args:
        config: The aggregation's :class:`SecAggConfig`.

    Raises:
        ProtocolError: fewer than `threshold` clients take part in any round, or a message is inconsistent.
    """

    def __init__(self, config: SecAggConfig):
        self.config = config
        self._roster: dict[int, AdvertisedKeys] = {}
        self._shared: set[int] = set()
        self._masked: dict[int, np.ndarray] = {}

    def _need(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            cfg = self.config
            if cfg.neighbours is None:
                tolerance = (
                    f"at most num_clients - threshold = {cfg.num_clients - cfg.threshold} of {cfg.num_clients} "
                    f"may drop out"
                )
            else:
                tolerance = f"at most {cfg.holders - cfg.threshold} of each client's {cfg.holders} holders may drop out"
            raise ProtocolError(
                f"secure aggregation aborted: only {count} clients {what}, fewer than the threshold "
                f"{cfg.threshold} ({tolerance})"
            )

    def collect_keys(self, messages: Sequence[AdvertisedKeys]) -> dict[int, AdvertisedKeys]:
        """Round 0: gathers the public keys and returns the roster to broadcast."""
        roster = {}
        for m in messages:
            if m.client_id in roster:
                raise ProtocolError(f"client {m.client_id} advertised keys twice")
            roster[m.client_id] = m
        self._need(len(roster), "advertised keys")
        self._roster = roster
        return dict(roster)

    def route_shares(self, outgoing: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Round 1: forwards each encrypted share to its recipient; returns ``{recipient: {sender: ct}}``."""
        self._need(len(outgoing), "shared their keys")
        self._shared = set(outgoing)
        inbox: dict[int, dict[int, bytes]] = {v: {} for v in self._shared}
        for u, messages in outgoing.items():
            for v, blob in messages.items():
                if v in inbox:
                    inbox[v][u] = blob
        return inbox

    @property
    def senders(self) -> list[int]:
        """Clients whose shares were routed (U2): the set with which masks are built."""
        return sorted(self._shared)

    def collect_masked(self, masked: Mapping[int, np.ndarray]) -> tuple[list[int], list[int]]:
        """Round 2: keeps the masked vectors; returns ``(survivors, dropped)`` to announce."""
        size = self.config.vector_size
        for u, y in masked.items():
            if u not in self._shared:
                raise ProtocolError(f"client {u} sent a masked input but did not share its keys")
            y = np.asarray(y)
            if y.dtype != np.uint64 or y.shape != (size,):
                raise ProtocolError(
                    f"client {u} sent a masked input of {y.dtype} {y.shape}, expected uint64 ({size},)"
                )
        self._need(len(masked), "sent a masked input")
        self._masked = {u: np.asarray(y) for u, y in masked.items()}
        survivors = sorted(self._masked)
        return survivors, sorted(self._shared - set(survivors))

    def _rebuild(self, responses: Sequence[UnmaskingShares], client: int, field: str, what: str) -> bytes:
        points = [getattr(r, field)[client] for r in responses if client in getattr(r, field)]
        t = self.config.threshold
        if len(points) < t:
            raise ProtocolError(
                f"cannot unmask the sum: only {len(points)} of the clients holding shares of client {client}'s "
                f"{what} answered, fewer than the threshold {t}"
            )
        points = points[:t]
        chunks = chunk_reconstruct([x for x, _ in points], np.stack([y for _, y in points]))
        return chunks_to_bytes(chunks)

    def unmask(self, responses: Sequence[UnmaskingShares]) -> np.ndarray:
        """Round 3: rebuilds the missing seeds from `threshold` shares each and returns the ring sum (uint64).

        Raises:
            ProtocolError: fewer than `threshold` responses (too many clients dropped out), or fewer than
                `threshold` shares of a secret that is needed.
        """
        cfg = self.config
        self._need(len(responses), "answered the unmasking round")
        survivors = sorted(self._masked)
        alive = set(survivors)
        dropped = sorted(self._shared - alive)
        total = np.zeros(cfg.vector_size, dtype=np.uint64)
        for y in self._masked.values():
            total = total + y
        for u in survivors:  # remove self masks
            seed = self._rebuild(responses, u, "self_seed_shares", "self-mask seed")
            total = total - _expand(seed, cfg.vector_size)
        for v in dropped:  # remove the pairwise masks the surviving neighbours added with each dropped client
            peers = [u for u in cfg.neighbours_of(v) if u in alive]
            if not peers:
                continue
            s_v = X25519PrivateKey.from_private_bytes(self._rebuild(responses, v, "mask_key_shares", "mask key"))
            for u in peers:
                key = _pair_mask_key(s_v, self._roster[u].mask_public, cfg.round_id, v, u)
                total = total - _signed_pair_mask(u, v, _expand(key, cfg.vector_size))
        return total


def _fresh_graph_seed(neighbours: int | None) -> int:
    return 0 if neighbours is None else secrets.randbits(63)


def mask_materials(
    num_clients: int,
    threshold: int,
    participants: Sequence[int],
    round_id: int = 0,
    neighbours: int | None = None,
    mask_size: int | None = None,
    graph_seed: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Runs rounds 0-1 among `participants` and returns each one's :meth:`SecAggClient.mask_material`.

    The key-exchange half of the protocol for the TFF factories (see
    :func:`tfppml.federated.tff_secure_agg.prepare_round`, which checks the arguments and calls this).  It
    needs no TensorFlow Federated, so a driver can run it in another process.

    Args:
        num_clients, threshold, round_id, neighbours: As for :class:`SecAggConfig` (`neighbours` resolved).
        participants: The clients taking part (U1).
        mask_size: Passed to :meth:`SecAggClient.mask_material`.
        graph_seed: The sparse graph's public seed; default a fresh random one.

    Raises:
        ProtocolError: fewer than `threshold` participants.
    """
    seed = _fresh_graph_seed(neighbours) if graph_seed is None else graph_seed
    cfg = SecAggConfig(num_clients, threshold, 1, round_id=round_id, neighbours=neighbours, graph_seed=seed)
    clients = [SecAggClient(i, cfg) for i in participants]
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.id])
    senders = server.senders
    return [c.mask_material(senders, mask_size) for c in clients]


def secure_sum(
    updates: Sequence[np.ndarray],
    threshold: int | None = None,
    *,
    dropouts: Sequence[int] = (),
    early_dropouts: Sequence[int] = (),
    clip: float = 1.0,
    frac_bits: int = 24,
    round_id: int = 0,
    neighbours: int | str | None = None,
    graph_seed: int | None = None,
    return_ring: bool = False,
) -> np.ndarray:
    """Runs the whole protocol in one process and returns the decoded sum of the surviving clients' updates.

    Args:
        updates: One float vector per client (all the same length).
        threshold: Shamir threshold; default a bare majority of the holders, ``m // 2 + 1``.
        dropouts: Clients that drop out after sending their masked input (they do not answer the unmasking
            round); their inputs are in the sum.
        early_dropouts: Clients that drop out after sharing their keys but before sending a masked input;
            their inputs are not in the sum and the masks their neighbours added with them are removed.
        clip: Elementwise clipping bound.
        frac_bits: Fixed-point fractional bits.
        round_id: Bound into the derived keys.
        neighbours: None (complete graph), ``"auto"`` or an even degree `k` (SecAgg+ graph).
        graph_seed: The sparse graph's public seed (default: drawn fresh, as a server does each aggregation).
        return_ring: If True, return the uint64 ring sum instead of the decoded floats.

    Returns:
        float64 vector: the sum of the clipped, quantised updates of the clients that sent an input (or the
        uint64 ring sum).

    Raises:
        ProtocolError: too many clients dropped out (in total, or among one client's holders).
        ValueError: inconsistent arguments.
    """
    n = len(updates)
    size = int(np.asarray(updates[0]).size) if n else 0
    k = resolve_neighbours(n, neighbours)
    m = n if k is None else k + 1
    cfg = SecAggConfig(
        n,
        m // 2 + 1 if threshold is None else threshold,
        size,
        clip,
        frac_bits,
        round_id,
        k,
        _fresh_graph_seed(k) if graph_seed is None else graph_seed,
    )
    clients = [SecAggClient(i, cfg) for i in range(n)]
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.id])
    early = set(early_dropouts)
    senders = server.senders
    survivors, dropped = server.collect_masked(
        {c.id: c.masked_input(updates[c.id], senders) for c in clients if c.id not in early}
    )
    gone = set(dropouts) | early
    total = server.unmask([c.unmasking_shares(survivors, dropped) for c in clients if c.id not in gone])
    return total if return_ring else dequantize(total, frac_bits)
