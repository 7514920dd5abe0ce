"""Secure aggregation in the style of Bonawitz et al. (CCS 2017), as plain Python objects.

`n` clients each hold a float vector; the server learns their sum and nothing else, even when up to
`n - threshold` clients drop out after sending their masked input.

Protocol (one aggregation; every key is fresh for it):

0. **Advertise keys.** Client `u` draws two X25519 key pairs, `(c_u, C_u)` for its encrypted channels to the
   other clients (routed through the server) and `(s_u, S_u)` for its pairwise masks, and sends `C_u, S_u`.
1. **Share keys.** Client `u` draws a 256-bit self-mask seed `b_u` and splits both `b_u` and its mask private
   key `s_u` into `n` Shamir shares with threshold `t` over the prime field GF(2**521 - 1).  The pair of
   shares meant for `v` is encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from X25519(c_u, C_v)
   and handed to the server, which forwards it to `v`; the server sees only ciphertexts.  The same message
   carries a second sharing of `b_u`, in 16-bit chunks over GF(2**31 - 1) (:func:`chunk_shares`), which the
   TFF factories of :mod:`tfppml.federated.tff_secure_agg` reconstruct with int64 TensorFlow ops.
2. **Masked input.** Client `u` clips its update elementwise to `[-clip, clip]`, quantises it to fixed point
   with `frac_bits` fractional bits (``round(x * 2**frac_bits)``, two's complement) in the ring Z_2^64, and
   sends ``y_u = q(x_u) + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2**64)`` where
   ``s_uv`` is a ChaCha20 key derived with HKDF-SHA256 from X25519(s_u, S_v) and PRG is
   :func:`tfppml.ops.prg_uniform` (the ChaCha20 keystream as uint64).
3. **Unmasking.** The server announces who sent a masked input.  Each surviving client returns its shares of
   `b_v` for every client `v` that sent an input and of `s_v` for every client that dropped before sending
   one, never both for the same client (a client refuses a request that would reveal both).  With `t`
   responses the server rebuilds the missing seeds, removes the self masks of the senders and the pairwise
   masks that the dropped clients' neighbours added, and decodes the sum.

What the server learns: the sum of the quantised updates of the clients that sent a masked input (and who
they were).  A single masked vector is uniformly distributed in Z_2^64 whatever the update is (the tests
check this statistically), and any `t - 1` shares reveal nothing about a seed or key.

Threat model: an honest-but-curious server and honest-but-curious clients.  Privacy holds against the
server colluding with fewer than `t` clients' worth of shares (here: the server plus at most `t - 1`
clients learn nothing beyond the sum of the honest clients' inputs); an actively malicious server that lies
about who dropped out is out of scope (Bonawitz et al.'s malicious variant adds a consistency check and
signatures, which this module does not implement).  Correctness needs at least `t` clients to answer the
unmasking round; with fewer, :meth:`SecAggServer.unmask` raises :class:`tfppml.errors.ProtocolError`.

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
import math
import numbers
import secrets
from typing import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tfppml.errors import ProtocolError
from tfppml.ops.prg import prg_uniform

__all__ = [
    "CHUNK_PRIME",
    "PRIME",
    "AdvertisedKeys",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "UnmaskingShares",
    "chunk_shares",
    "dequantize",
    "mask_materials",
    "quantize",
    "secure_sum",
    "shamir_reconstruct",
    "shamir_share",
]

#: The Mersenne prime 2**521 - 1: the Shamir field, large enough for 256-bit seeds and X25519 keys.
PRIME = 2**521 - 1
#: The Mersenne prime 2**31 - 1: the field of the second sharing of each self-mask seed, cut into 16-bit
#: chunks, which TensorFlow can reconstruct with int64 arithmetic (a product of two elements fits in 62 bits).
CHUNK_PRIME = 2**31 - 1
#: Number of 16-bit chunks of a 256-bit seed.
SEED_CHUNKS = 16
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """Parameters every party of one aggregation agrees on.

    Args:
        num_clients: Number of clients `n` that start the aggregation (ids 0 .. n-1), at least 2.
        threshold: Shamir threshold `t`: at least `t` clients must answer the unmasking round; up to
            `n - t` may drop out.  Must satisfy ``n // 2 < t <= n`` (a majority, so that two disjoint groups
            cannot both reconstruct).
        vector_size: Length of every client's update.
        clip: Elementwise bound: updates are clipped to `[-clip, clip]` before quantisation.
        frac_bits: Fractional bits of the fixed-point encoding (scale ``2**frac_bits``).
        round_id: Any int naming this aggregation; it is bound into every derived key.

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

    def __post_init__(self):
        n = _check_int("num_clients", self.num_clients, 2)
        t = _check_int("threshold", self.threshold, 1)
        if not n // 2 < t <= n:
            raise ValueError(
                f"threshold must satisfy num_clients // 2 < threshold <= num_clients, got threshold={t} "
                f"with num_clients={n} (expected {n // 2 + 1}..{n})"
            )
        _check_int("vector_size", self.vector_size, 1)
        _check_int("frac_bits", self.frac_bits, 0)
        _check_int("round_id", self.round_id, 0)
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
        >>> shares.shape
        (5, 16)
    """
    if len(seed) != 32:
        raise ValueError(f"seed must be 32 bytes, got {len(seed)}")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold must be in [1, num_shares={num_shares}], got {threshold}")
    p = np.int64(CHUNK_PRIME)
    raw = np.frombuffer(secrets.token_bytes(8 * (threshold - 1) * SEED_CHUNKS), dtype="<u8")
    coeffs = (raw % np.uint64(CHUNK_PRIME)).astype(np.int64).reshape(threshold - 1, SEED_CHUNKS)
    xs = np.arange(1, num_shares + 1, dtype=np.int64)[:, None]
    y = np.zeros((num_shares, SEED_CHUNKS), dtype=np.int64)
    for c in coeffs[::-1]:  # Horner from the top coefficient; every product stays below 2**62
        y = (y * xs + c[None, :]) % p
    return (y * xs + seed_chunks(seed)[None, :]) % p


# --------------------------------------------------------------------------------------------- helpers
def _kdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _seed_words(key: bytes) -> np.ndarray:
    return np.frombuffer(key, dtype="<u8").astype(np.uint64)


def _expand(key: bytes, size: int) -> np.ndarray:
    return prg_uniform(_seed_words(key), [size]).numpy()


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


@dataclasses.dataclass(frozen=True)
class AdvertisedKeys:
    """Round-0 message: a client's two X25519 public keys (32 raw bytes each)."""

    client_id: int
    channel_public: bytes
    mask_public: bytes


@dataclasses.dataclass(frozen=True)
class UnmaskingShares:
    """Round-3 message: a client's shares of the self-mask seeds of senders and mask keys of dropouts."""

    client_id: int
    self_seed_shares: Mapping[int, tuple[int, int]]
    mask_key_shares: Mapping[int, tuple[int, int]]


# ------------------------------------------------------------------------------------------------ client
class SecAggClient:
    """One client of the protocol.  Call its methods in order: `advertise_keys`, `share_keys`,
    `receive_shares`, `masked_input`, `unmasking_shares`.

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
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._self_seed = secrets.token_bytes(32)
        self._roster: dict[int, AdvertisedKeys] | None = None
        self._held: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}
        self._held_chunks: dict[int, np.ndarray] = {}
        self._channel_keys: dict[int, bytes] = {}
        self._sent_input = False

    def advertise_keys(self) -> AdvertisedKeys:
        """Round 0: the public keys to broadcast through the server."""
        return AdvertisedKeys(
            self.id,
            self._c_key.public_key().public_bytes(_RAW, _RAW_PUB),
            self._s_key.public_key().public_bytes(_RAW, _RAW_PUB),
        )

    def share_keys(self, roster: Mapping[int, AdvertisedKeys]) -> dict[int, bytes]:
        """Round 1: Shamir-shares the self-mask seed and the mask private key, encrypted per recipient.

        Args:
            roster: The server's broadcast of every round-0 message, keyed by client id (must include this
                client and at least `threshold` clients).

        Returns:
            ``{v: ciphertext}`` for every other client `v` in the roster.

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
        self._roster = dict(roster)
        seed_int = int.from_bytes(self._self_seed, "big")
        raw_key = self._s_key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())
        key_int = int.from_bytes(raw_key, "big")
        seed_shares = shamir_share(seed_int, cfg.num_clients, cfg.threshold)
        key_shares = shamir_share(key_int, cfg.num_clients, cfg.threshold)
        chunks = chunk_shares(self._self_seed, cfg.num_clients, cfg.threshold)
        out = {}
        for v, keys in roster.items():
            pair = (seed_shares[v], key_shares[v])
            if v == self.id:
                self._held[self.id] = pair
                self._held_chunks[self.id] = chunks[v]
                continue
            fields = (self.id, v, pair[0][1], pair[1][1], cfg.round_id, *chunks[v].tolist())
            plaintext = b"|".join(b"%d" % f for f in fields)
            nonce = secrets.token_bytes(12)
            aead = AESGCM(self._channel_key_with(v, keys.channel_public))
            out[v] = nonce + aead.encrypt(nonce, plaintext, None)
        return out

    def _channel_key_with(self, v: int, channel_public: bytes) -> bytes:
        # Both directions of a channel use the same key; caching it halves the X25519 work of a round.
        if v not in self._channel_keys:
            self._channel_keys[v] = _channel_key(self._c_key, channel_public, self.config.round_id, self.id, v)
        return self._channel_keys[v]

    def receive_shares(self, ciphertexts: Mapping[int, bytes]) -> None:
        """Round 1 (receiving end): decrypts and keeps the shares other clients sent to this client.

        Raises:
            ProtocolError: a ciphertext fails authentication or names the wrong sender/recipient/round.
        """
        if self._roster is None:
            raise ProtocolError(f"client {self.id}: receive_shares called before share_keys")
        cfg = self.config
        for u, blob in ciphertexts.items():
            if u not in self._roster:
                raise ProtocolError(f"client {self.id}: received shares from client {u}, not in the roster")
            aead = AESGCM(self._channel_key_with(u, self._roster[u].channel_public))
            try:
                plain = aead.decrypt(blob[:12], blob[12:], None)
            except Exception as err:  # cryptography raises InvalidTag
                raise ProtocolError(
                    f"client {self.id}: shares from client {u} failed authentication"
                ) from err
            fields = [int(p) for p in plain.split(b"|")]
            if len(fields) != 5 + SEED_CHUNKS:
                raise ProtocolError(f"client {self.id}: shares from client {u} are malformed")
            sender, recipient, seed_y, key_y, round_id = fields[:5]
            if (sender, recipient, round_id) != (u, self.id, cfg.round_id):
                raise ProtocolError(f"client {self.id}: shares from client {u} are addressed wrongly")
            x = self.id + 1
            self._held[u] = ((x, seed_y), (x, key_y))
            self._held_chunks[u] = np.asarray(fields[5:], dtype=np.int64)

    def masked_input(self, update: np.ndarray, senders: Sequence[int] | None = None) -> np.ndarray:
        """Round 2: the quantised update plus the self mask and the pairwise masks, in Z_2^64.

        Args:
            update: Float vector of length ``config.vector_size``.
            senders: Clients whose shares this client received (default: the whole roster); masks are
                added only with those (the set the server calls U2).

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
        peers = sorted(self._held if senders is None else senders)
        y = quantize(x, cfg.clip, cfg.frac_bits) + _expand(self._self_seed, cfg.vector_size)
        for v in peers:
            if v == self.id:
                continue
            key = _pair_mask_key(self._s_key, self._roster[v].mask_public, cfg.round_id, self.id, v)
            y = y + _signed_pair_mask(self.id, v, _expand(key, cfg.vector_size))
        self._sent_input = True
        return y

    def mask_material(self, senders: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Everything this client needs to mask an update and answer the unmasking round inside TensorFlow.

        This is what :mod:`tfppml.federated.tff_secure_agg` feeds to a TFF computation as a CLIENT-placed
        value: it stays with the client's own computations and never reaches a server-placed one.

        Args:
            senders: The set U2 (default: every client whose shares this client holds).

        Returns:
            ``index`` (int32, this client's id), ``self_seed`` (uint64 [4], the words of `b_u`),
            ``pair_keys`` (uint64 [n, 4], the ChaCha20 key shared with each peer in U2, zero elsewhere),
            ``pair_signs`` (int32 [n]: +1 if this client adds that peer's mask, -1 if it subtracts it, 0 for
            itself and non-members) and ``seed_shares`` (int64 [n, 16]: this client's chunk shares of every
            U2 member's self-mask seed, at ``x = index + 1``).

        Raises:
            ProtocolError: called before the shares were exchanged, or for a sender whose shares are missing.
        """
        cfg = self.config
        if self._roster is None:
            raise ProtocolError(f"client {self.id}: mask_material called before share_keys")
        peers = sorted(self._held if senders is None else senders)
        n = cfg.num_clients
        keys = np.zeros((n, 4), dtype=np.uint64)
        signs = np.zeros(n, dtype=np.int32)
        shares = np.zeros((n, SEED_CHUNKS), dtype=np.int64)
        for v in peers:
            if v not in self._held_chunks:
                raise ProtocolError(f"client {self.id}: holds no shares of client {v}")
            shares[v] = self._held_chunks[v]
            if v == self.id:
                continue
            key = _pair_mask_key(self._s_key, self._roster[v].mask_public, cfg.round_id, self.id, v)
            keys[v] = _seed_words(key)
            signs[v] = 1 if self.id < v else -1
        self._sent_input = True
        return {
            "index": np.int32(self.id),
            "self_seed": _seed_words(self._self_seed),
            "pair_keys": keys,
            "pair_signs": signs,
            "seed_shares": shares,
        }

    def unmasking_shares(self, survivors: Sequence[int], dropped: Sequence[int]) -> UnmaskingShares:
        """Round 3: shares of `b_v` for every sender `v` and of `s_v` for every dropped client `v`.

        Args:
            survivors: Clients the server says sent a masked input (U3).
            dropped: Clients the server says shared keys but sent no masked input (U2 minus U3).

        Raises:
            ProtocolError: the two sets overlap (answering would reveal both secrets of a client), this
                client did not send its input, or fewer than `threshold` survivors are claimed.
        """
        surv, drop = set(survivors), set(dropped)
        if surv & drop:
            raise ProtocolError(
                f"client {self.id}: refusing to unmask: clients {sorted(surv & drop)} are listed both as "
                f"survivors and as dropped, which would reveal both their self mask and their mask key"
            )
        if not self._sent_input:
            raise ProtocolError(f"client {self.id}: asked to unmask before sending its masked input")
        if len(surv) < self.config.threshold:
            raise ProtocolError(
                f"client {self.id}: refusing to unmask: only {len(surv)} survivors, below the threshold "
                f"{self.config.threshold}"
            )
        missing = [v for v in surv | drop if v not in self._held]
        if missing:
            raise ProtocolError(f"client {self.id}: holds no shares of clients {sorted(missing)}")
        return UnmaskingShares(
            self.id,
            {v: self._held[v][0] for v in sorted(surv)},
            {v: self._held[v][1] for v in sorted(drop)},
        )


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
            raise ProtocolError(
                f"secure aggregation aborted: only {count} clients {what}, fewer than the threshold "
                f"{self.config.threshold} (at most num_clients - threshold = "
                f"{self.config.num_clients - self.config.threshold} of {self.config.num_clients} "
                f"may drop out)"
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

    def unmask(self, responses: Sequence[UnmaskingShares]) -> np.ndarray:
        """Round 3: rebuilds the missing seeds from `threshold` responses and returns the ring sum (uint64).

        Raises:
            ProtocolError: fewer than `threshold` responses (too many clients dropped out), or a response
                lacks shares.
        """
        cfg = self.config
        self._need(len(responses), "answered the unmasking round")
        survivors = sorted(self._masked)
        dropped = sorted(self._shared - set(survivors))
        total = np.zeros(cfg.vector_size, dtype=np.uint64)
        for y in self._masked.values():
            total = total + y
        use = list(responses)[: cfg.threshold]
        for u in survivors:  # remove self masks
            try:
                seed = shamir_reconstruct([r.self_seed_shares[u] for r in use])
            except KeyError as err:
                raise ProtocolError(f"an unmasking response lacks the self-seed share of client {u}") from err
            total = total - _expand(seed.to_bytes(32, "big"), cfg.vector_size)
        for v in dropped:  # remove the pairwise masks the survivors added with each dropped client
            try:
                key_int = shamir_reconstruct([r.mask_key_shares[v] for r in use])
            except KeyError as err:
                raise ProtocolError(f"an unmasking response lacks the mask-key share of client {v}") from err
            s_v = X25519PrivateKey.from_private_bytes(key_int.to_bytes(32, "big"))
            for u in survivors:
                key = _pair_mask_key(s_v, self._roster[u].mask_public, cfg.round_id, v, u)
                total = total - _signed_pair_mask(u, v, _expand(key, cfg.vector_size))
        return total


def mask_materials(
    num_clients: int, threshold: int, participants: Sequence[int], round_id: int = 0
) -> list[dict[str, np.ndarray]]:
    """Runs rounds 0-1 among `participants` and returns each one's :meth:`SecAggClient.mask_material`.

    The key-exchange half of the protocol for the TFF factories (see
    :func:`tfppml.federated.tff_secure_agg.prepare_round`, which checks the arguments and calls this).  It
    needs no TensorFlow Federated, so a driver can run it in another process.

    Raises:
        ProtocolError: fewer than `threshold` participants.
    """
    cfg = SecAggConfig(num_clients, threshold, 1, round_id=round_id)
    clients = [SecAggClient(i, cfg) for i in participants]
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.id])
    return [c.mask_material(server.senders) for c in clients]


def secure_sum(
    updates: Sequence[np.ndarray],
    threshold: int | None = None,
    *,
    dropouts: Sequence[int] = (),
    early_dropouts: Sequence[int] = (),
    clip: float = 1.0,
    frac_bits: int = 24,
    round_id: int = 0,
    return_ring: bool = False,
) -> np.ndarray:
    """Runs the whole protocol in one process and returns the decoded sum of the surviving clients' updates.

    Args:
        updates: One float vector per client (all the same length).
        threshold: Shamir threshold; default ``len(updates) // 2 + 1``.
        dropouts: Clients that drop out after sending their masked input (they do not answer the unmasking
            round); their inputs are in the sum.
        early_dropouts: Clients that drop out after sharing their keys but before sending a masked input;
            their inputs are not in the sum and the masks their peers added with them are removed.
        clip: Elementwise clipping bound.
        frac_bits: Fixed-point fractional bits.
        round_id: Bound into the derived keys.
        return_ring: If True, return the uint64 ring sum instead of the decoded floats.

    Returns:
        float64 vector: the sum of the clipped, quantised updates of the clients that sent an input (or the
        uint64 ring sum).

    Raises:
        ProtocolError: more than ``len(updates) - threshold`` clients dropped out.
        ValueError: inconsistent arguments.
    """
    n = len(updates)
    size = int(np.asarray(updates[0]).size) if n else 0
    cfg = SecAggConfig(n, n // 2 + 1 if threshold is None else threshold, size, clip, frac_bits, round_id)
    clients = [SecAggClient(i, cfg) for i in range(n)]
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.id])
    early = set(early_dropouts)
    survivors, dropped = server.collect_masked(
        {c.id: c.masked_input(updates[c.id], server.senders) for c in clients if c.id not in early}
    )
    gone = set(dropouts) | early
    total = server.unmask([c.unmasking_shares(survivors, dropped) for c in clients if c.id not in gone])
    return total if return_ring else dequantize(total, frac_bits)
