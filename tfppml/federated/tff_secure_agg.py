"""Secure aggregation as TFF aggregation factories, running in TFF's default (native C++) runtime.

Where each step runs, and who sees what
---------------------------------------
TFF 0.87 gives an aggregation process no client-placed input except the value being aggregated, and runs
every TensorFlow computation inside its C++ ``worker_binary``, which has no Python and none of tfppml's
kernels.  X25519, HKDF and AES-GCM therefore cannot run inside TFF.  The protocol of
:mod:`tfppml.federated.secure_agg` (Bonawitz et al., CCS 2017, optionally with the sparse SecAgg+ graph of Bell
et al., CCS 2020: ``neighbours=``) is split accordingly:

1. **Rounds 0-1 (key advertisement, encrypted share exchange) run in Python**, before the TFF call, on the
   simulated clients' :class:`~tfppml.federated.secure_agg.SecAggClient` objects, with a
   :class:`~tfppml.federated.secure_agg.SecAggServer` routing only public keys and AES-GCM ciphertexts
   (:func:`prepare_round`).  Each client ends with its *mask material*
   (:meth:`SecAggClient.mask_material`): its self-mask seed ``b_u``, the ChaCha20 keys it shares with each
   neighbour, its Shamir shares (chunked, over GF(2**31 - 1)) of every neighbour's ``b_v``, the public graph
   around it, and, with ``prepare_round(mask_size=...)``, its whole round-2 mask already expanded (the
   ChaCha20 kernel, in the driver) so that TFF only adds it.
2. **The material enters the TFF computation as part of the CLIENT-placed value** (the ``secagg`` field of
   the value, beside the ``update``).  Round 2 runs in a client-placed TF computation: clip, quantise into
   Z_2^64 and add the precomputed mask, or (material without one) ``PRG(b_u)`` and the signed pairwise masks
   expanded there (ChaCha20 in stock TF ops, :mod:`tfppml.federated.tf_chacha`; several times slower).
   ``tff.federated_sum`` adds the masked vectors in uint64, which wraps
   mod 2**64 exactly (tested).  A one-hot of each client's id is summed beside it, so the server learns who
   sent an input (U3), as in the protocol.
3. **Round 3 (unmasking) runs inside the same TFF computation.**  The server broadcasts U3.  Each client
   whose own holders include at least `threshold` senders computes, for every sender ``v`` whose shares it
   holds, its Lagrange coefficient ``lambda`` at 0 among the senders holding ``v``'s shares (int64 TF ops;
   the graph is public) and returns ``lambda * share_u(b_v) mod p`` (Shamir reconstruction is linear, so a
   federated sum of these *is* the reconstruction), a count of the senders it answers for, and, for every
   neighbour ``v`` that shared keys but sent no input (dropped mid-round), the signed pairwise masks it added
   with ``v``.  The server checks that every sender's seed got at least `threshold` answers (else the round
   fails with ``secure_ok=False``), rebuilds each sender's ``b_v``, expands and removes the self masks and the
   dropped clients' pairwise masks, and decodes the ring sum.

What the server-placed side of the computation receives: masked vectors (each uniform in Z_2^64 whatever
the update, tested) and their sum; the id one-hots; each survivor's Lagrange-weighted Shamir shares of the
*senders'* self-mask seeds (what Bonawitz's server receives in round 3, and with them the seeds ``b_v``
themselves) and how many senders it answered for (a function of U3 and the public graph); and each
survivor's pairwise masks with the *dropped* clients (Bonawitz's server learns strictly more here: the
dropped client's whole mask key ``s_v``, from which it recomputes these masks).  It never receives an
unmasked update, a pairwise key between two senders, or both ``b_v`` and a pairwise mask of the same sender:
the shares are sent only for U3 and the pairwise masks only for the complement, both derived from one
broadcast set, so the two can never overlap.  Output: the sum (weighted mean) of the surviving clients'
clipped, quantised updates, and who they were.  With a sparse graph (``neighbours=k``) this holds while the
graph restricted to the honest senders stays connected, which is certain when fewer than `k` clients drop
out or collude and fails with probability at most ``n**2 * d**k`` when each is lost independently with
probability `d` (see :mod:`tfppml.federated.secure_agg`, "Sparse graph"); otherwise the server learns the
sums of the pieces.

Honesty caveats (read these):

* **Simulation.** TFF's native runtime executes client- and server-placed computations in the same
  ``worker_binary`` process, and our Python driver holds every simulated client's secrets.  "The server
  never sees X" is a property of the *dataflow of the TFF computation* (what a federated platform would send
  to the server), checked by the tests on what the server-placed values are; it is not process isolation.
* **Deviation from Bonawitz for dropped clients.** The dropped clients' pairwise masks are removed from the
  survivors' own knowledge of the pairwise keys rather than by reconstructing the dropped client's X25519
  mask key ``s_v`` from Shamir shares (that needs X25519 inside ``worker_binary``).  Within one TFF call every
  client that sent a masked input also answers the unmasking round (TFF has no "client vanished between two
  intrinsics"), so the case Bonawitz needs ``s_v`` shares for, a client dropping *after* its input while
  another dropped *before*, does not arise here.  The plain-Python protocol in
  :mod:`tfppml.federated.secure_agg` still shares ``s_v`` and handles both kinds of dropout.
* **Threat model**: honest-but-curious server and clients, as in :mod:`tfppml.federated.secure_agg`.  No
  signatures or consistency round: a malicious server that lies about U3 is out of scope.
* **Key exchange is outside TFF**: rounds 0-1 run in the Python driver each round; the public keys and
  ciphertexts pass through :class:`SecAggServer` in that process (or, with
  :class:`~tfppml.federated.FederatedTrainer`'s ``overlap_key_exchange``, in one helper process it starts),
  not through a TFF intrinsic.

Which TFF builder takes these factories
---------------------------------------
``tff.learning.algorithms.build_weighted_fed_avg(model_aggregator=...)`` cannot: it creates the aggregator
for the bare model-update type and insists that the aggregator's input and output types match, and its client
work has no way to emit the mask material.  :func:`tfppml.federated.build_secure_fed_avg` therefore builds
the same process from TFF's own parts (TFF's broadcast, model-delta client work and optimizer finalizer,
composed as ``tff.learning.templates.compose_learning_process`` composes them) and zips each client's mask
material with its update before the aggregator; it takes the same arguments as ``build_weighted_fed_avg``.

DP composes as TFF's ``DifferentiallyPrivateFactory`` (outer) around :class:`SecureSumFactory` (inner),
through :class:`MaskedRecordQuery`, a DP query that applies TFF/TF Privacy's query (clipping at the clients,
noise at the server) to the ``update`` field and passes the mask material through untouched
(:func:`secure_dp_aggregator`).

Example:
    >>> factory = SecureAggregationFactory(num_clients=5, max_dropout_fraction=0.2)
    >>> value_type = secure_value_type(tff.TensorType(np.float32, [3]), 5)
    >>> process = factory.create(value_type, tff.TensorType(np.float32))
    >>> materials = prepare_round(5, factory.threshold, participants=range(5))
    >>> values = [{"update": np.ones(3, np.float32), "secagg": m} for m in materials]
    >>> out = process.next(process.initialize(), values, [1.0] * 5)
    >>> out.result
    array([1., 1., 1.], dtype=float32)
"""

from __future__ import annotations

import collections
import math
import numbers
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tfppml.errors import ProtocolError
from tfppml.federated.secure_agg import (
    CHUNK_PRIME,
    SEED_CHUNKS,
    SecAggConfig,
    mask_materials,
    resolve_neighbours,
)
from tfppml.federated.tf_chacha import tf_chacha20_uniform

__all__ = [
    "MATERIAL_FIELDS",
    "MaskedRecordQuery",
    "SecureAggregationFactory",
    "SecureSumFactory",
    "check_measurements",
    "material_type",
    "prepare_round",
    "secure_dp_aggregator",
    "secure_value_type",
    "tf_chacha20_uniform",
]


# ------------------------------------------------------------------------------------------- Python side
#: The fields of a client's mask material, in the order of :func:`material_type` (``mask`` is optional).
MATERIAL_FIELDS = ("index", "self_seed", "peers", "pair_keys", "pair_signs", "held", "holders", "seed_shares", "mask")


def prepare_round(
    num_clients: int,
    threshold: int,
    participants: Iterable[int],
    *,
    round_id: int = 0,
    vector_size: int = 1,
    neighbours: int | str | None = None,
    mask_size: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Runs protocol rounds 0-1 for one aggregation in Python and returns each participant's mask material.

    Args:
        num_clients: Slots in the aggregation (the ``n`` of the material shapes); client ids are
            ``0 .. num_clients - 1``.
        threshold: Shamir threshold (see :class:`SecAggConfig`; the factory's ``threshold``).
        participants: Ids of the clients that take part in the key exchange (U2); at least `threshold`.
        round_id: Bound into every derived key; use a fresh value per round.
        vector_size: Recorded in the :class:`SecAggConfig`.
        neighbours: The masking graph: None (complete), ``"auto"`` or an even degree (the factory's
            ``neighbours``); a sparse graph is drawn fresh for each call.
        mask_size: If given, each material carries its client's whole round-2 mask of this many words,
            expanded here (for values of ``secure_value_type(..., precomputed_masks=True)``, whose
            ``mask_size`` is the update size + 1); otherwise the masks are expanded inside TensorFlow.

    Returns:
        One material dict per participant, in the order of sorted ids (see
        :meth:`SecAggClient.mask_material`); pass a client's dict as the ``secagg`` field of its value.  A
        participant left out of the TFF call afterwards is a client that dropped out mid-round.

    Raises:
        ProtocolError: fewer than `threshold` participants (in total or among one client's holders).
        ValueError: an id is out of range or repeated, or another argument is out of range.
    """
    ids = sorted(int(i) for i in participants)
    if len(set(ids)) != len(ids) or (ids and not 0 <= ids[0] <= ids[-1] < num_clients):
        raise ValueError(
            f"participants must be distinct ids in [0, {num_clients}), got {ids[:10]}{'...' if len(ids) > 10 else ''}"
        )
    k = resolve_neighbours(num_clients, neighbours)
    if mask_size is not None and (isinstance(mask_size, bool) or not isinstance(mask_size, numbers.Integral) or mask_size < 1):
        raise ValueError(f"mask_size must be None or an int >= 1, got {mask_size!r}")
    SecAggConfig(num_clients, threshold, vector_size, round_id=round_id, neighbours=k)  # checks the arguments
    return mask_materials(num_clients, threshold, ids, round_id=round_id, neighbours=k, mask_size=mask_size)


def _update_size(update_type) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in tff.structure.flatten(tff.to_type(update_type)))


def material_type(num_clients: int, neighbours: int | None = None, mask_size: int | None = None) -> tff.StructWithPythonType:
    """The TFF type of one client's mask material (see :meth:`SecAggClient.mask_material` for the fields).

    Args:
        num_clients: Slots of the aggregation.
        neighbours: Degree of the masking graph (None: complete graph, ``num_clients - 1`` neighbours).
        mask_size: Length of the precomputed ``mask`` field; None for material without it.
    """
    n = int(num_clients)
    k = n - 1 if neighbours is None else int(neighbours)
    fields = [
        ("index", tff.TensorType(np.int32)),
        ("self_seed", tff.TensorType(np.uint64, [4])),
        ("peers", tff.TensorType(np.int32, [k])),
        ("pair_keys", tff.TensorType(np.uint64, [k, 4])),
        ("pair_signs", tff.TensorType(np.int32, [k])),
        ("held", tff.TensorType(np.int32, [k + 1])),
        ("holders", tff.TensorType(np.int32, [k + 1, k + 1])),
        ("seed_shares", tff.TensorType(np.int64, [k + 1, SEED_CHUNKS])),
    ]
    if mask_size is not None:
        fields.append(("mask", tff.TensorType(np.uint64, [int(mask_size)])))
    return tff.StructWithPythonType(fields, collections.OrderedDict)


def secure_value_type(
    update_type, num_clients: int, neighbours: int | str | None = None, *, precomputed_masks: bool = False
) -> tff.StructWithPythonType:
    """The value type the secure factories aggregate: ``OrderedDict(update=update_type, secagg=material)``.

    Args:
        update_type: The (float) update's TFF type.
        num_clients: Slots of the aggregation.
        neighbours: The factory's masking graph (None, ``"auto"`` or an even degree).
        precomputed_masks: The material carries each client's whole mask, expanded by :func:`prepare_round`
            (``mask_size`` = update size + 1) instead of inside TensorFlow.
    """
    update_type = tff.to_type(update_type)
    k = resolve_neighbours(num_clients, neighbours)
    mask_size = _update_size(update_type) + 1 if precomputed_masks else None
    return tff.StructWithPythonType(
        [("update", update_type), ("secagg", material_type(num_clients, k, mask_size))], collections.OrderedDict
    )


def check_measurements(measurements) -> None:
    """Raises :class:`ProtocolError` if a secure aggregation in `measurements` (nested dicts) failed.

    A TFF computation cannot raise a Python exception with a message, so when fewer than the threshold of
    clients send an input the server-side computation returns a zero update and ``secure_ok=False``; the
    drivers call this after every round to turn that into an error.
    """
    stack = [measurements]
    while stack:
        m = stack.pop()
        if isinstance(m, dict):
            if "secure_ok" in m and not bool(m["secure_ok"]):
                if int(m["secure_clients"]) < int(m["secure_threshold"]):
                    raise ProtocolError(
                        f"secure aggregation failed: only {int(m['secure_clients'])} clients sent a masked input, "
                        f"fewer than the threshold {int(m['secure_threshold'])}; the sum cannot be unmasked and the "
                        f"round was discarded"
                    )
                raise ProtocolError(
                    f"secure aggregation failed: the self masks of {int(m.get('secure_unrecoverable', 0))} senders "
                    f"cannot be rebuilt: fewer than the threshold {int(m['secure_threshold'])} of the clients holding "
                    f"their shares (their neighbourhood) answered; the round was discarded"
                )
            stack.extend(m.values())


# ----------------------------------------------------------------------------------------------- TF side
_P = CHUNK_PRIME
#: Client weights (example counts) are clipped to [0, MAX_WEIGHT] by the weighted factory.
MAX_WEIGHT = float(2**16)


def _modprod(m: tf.Tensor) -> tf.Tensor:
    """Product mod p along axis 1 of an int64 [rows, k] matrix of residues, by halving (log2 k steps)."""
    k = int(m.shape[1])
    width = 1 << max(0, (k - 1).bit_length())
    if width > k:
        m = tf.concat([m, tf.ones([tf.shape(m)[0], width - k], tf.int64)], axis=1)
    while width > 1:
        width //= 2
        m = tf.math.floormod(m[:, :width] * m[:, width:], _P)
    return m[:, 0]


def _modpow(a: tf.Tensor, e: int) -> tf.Tensor:
    result = tf.ones_like(a)
    base = a
    while e:
        if e & 1:
            result = tf.math.floormod(result * base, _P)
        base = tf.math.floormod(base * base, _P)
        e >>= 1
    return result


def _client_lagrange(index: tf.Tensor, holders: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
    """Lagrange coefficients at 0 over GF(p) of this client's point in each sharing it holds a share of.

    Args:
        index: This client's id `u` (its point is ``x = u + 1``).
        holders: int32 [m, m]: row `j` lists the holders of the `j`-th held seed (the points of its sharing).
        present: bool [n]: who sent a masked input; only present holders count.

    Returns:
        int64 [m]: ``prod_{w present in row j, w != u} x_w / (x_w - x_u)`` mod p for each row.
    """
    x = tf.cast(holders, tf.int64) + 1
    xu = tf.cast(index, tf.int64) + 1
    use = tf.logical_and(tf.gather(present, holders), tf.not_equal(holders, index))
    ones = tf.ones_like(x)
    num = tf.where(use, x, ones)
    den = tf.where(use, tf.math.floormod(x - xu, _P), ones)
    return tf.math.floormod(_modprod(num) * _modpow(_modprod(den), _P - 2), _P)


def _signed_masks(keys: tf.Tensor, signs: tf.Tensor, select: tf.Tensor, size: int) -> tf.Tensor:
    """Sum over selected rows of ``sign * ChaCha20(key)`` in Z_2^64 (uint64 [size])."""
    chosen = tf.logical_and(select, tf.not_equal(signs, 0))

    def expand():
        rows = tf.where(chosen)[:, 0]
        stream = tf_chacha20_uniform(tf.gather(keys, rows), size)
        sign = tf.gather(signs, rows)[:, None]
        zero = tf.zeros_like(stream)
        plus = tf.reduce_sum(tf.where(sign > 0, stream, zero), axis=0)
        minus = tf.reduce_sum(tf.where(sign < 0, stream, zero), axis=0)
        return plus - minus  # uint64 arithmetic wraps mod 2**64

    # Usually nothing is selected (no neighbour dropped): skip the ChaCha20 call, whose launch costs even
    # with zero rows, for every client.
    return tf.cond(tf.reduce_any(chosen), expand, lambda: tf.zeros([size], tf.uint64))


def _chunks_to_words(chunks: tf.Tensor) -> tf.Tensor:
    """int64 [k, 16] chunks (16 bits each) -> uint64 [k, 4] words (layout of ``secure_agg.seed_chunks``)."""
    c = tf.reshape(tf.cast(chunks, tf.uint64), [-1, 4, 4])
    shifts = tf.constant([0, 16, 32, 48], tf.uint64)
    parts = tf.bitwise.left_shift(c, shifts[None, None, :])
    return tf.bitwise.bitwise_or(
        tf.bitwise.bitwise_or(parts[:, :, 0], parts[:, :, 1]), tf.bitwise.bitwise_or(parts[:, :, 2], parts[:, :, 3])
    )


def _quantize(x: tf.Tensor, bound: float, frac_bits: int) -> tf.Tensor:
    x = tf.cast(x, tf.float64)
    # A non-finite entry would make the cast to int64 undefined; it is zeroed (and the client's weight too,
    # by the weighted factory), as TFF's own client work zeroes the weight of a non-finite update.
    x = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
    q = tf.cast(tf.round(tf.clip_by_value(x, -bound, bound) * float(2**frac_bits)), tf.int64)
    return tf.bitcast(q, tf.uint64)


def _flatten(struct) -> tf.Tensor:
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tf.nest.flatten(struct)], axis=0)


def _unflatten(flat: tf.Tensor, spec_struct):
    specs = tf.nest.flatten(spec_struct)
    out, start = [], 0
    for s in specs:
        size = int(np.prod(s.shape))
        out.append(tf.cast(tf.reshape(flat[start : start + size], s.shape), s.dtype))
        start += size
    return tf.nest.pack_sequence_as(spec_struct, out)


# ------------------------------------------------------------------------------------------ the factories
def _check_real(name: str, value, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {type(value).__name__} {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


class _SecureCore:
    """Parameters and checks shared by the weighted and unweighted factories."""

    def __init__(self, num_clients, max_dropout_fraction, clip, frac_bits, weighted, neighbours=None):
        if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral) or num_clients < 2:
            raise ValueError(f"num_clients must be an int >= 2 (slots per round), got {num_clients!r}")
        frac = _check_real("max_dropout_fraction", max_dropout_fraction, positive=False)
        if not 0.0 <= frac < 0.5:
            raise ValueError(
                f"max_dropout_fraction must be in [0, 0.5) (the threshold must stay a majority), got {frac}"
            )
        self.num_clients = int(num_clients)
        self.weighted = bool(weighted)
        self.neighbours = resolve_neighbours(self.num_clients, neighbours)
        m = self.num_clients if self.neighbours is None else self.neighbours + 1  # holders of one client's shares
        self.threshold = max(m - int(math.floor(frac * m)), m // 2 + 1)
        self.clip = _check_real("clip", clip)
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, numbers.Integral) or not 0 <= frac_bits <= 52:
            raise ValueError(f"frac_bits must be an int in [0, 52], got {frac_bits!r}")
        self.frac_bits = int(frac_bits)
        # Largest entry a client sends: the clipped update, or with weights w <= MAX_WEIGHT both w * x and w.
        self.bound = max(self.clip, 1.0) * MAX_WEIGHT if weighted else self.clip
        worst = self.num_clients * (math.floor(self.bound * 2**self.frac_bits) + 1)
        if worst >= 2**63:
            what = "max(clip, 1) * 2**16" if weighted else "clip"
            raise ValueError(
                f"num_clients * {what} * 2**frac_bits must be < 2**63 so the ring sum cannot wrap, got "
                f"num_clients={self.num_clients}, clip={self.clip}, frac_bits={self.frac_bits}; lower frac_bits"
            )

    def check_value_type(self, value_type):
        value_type = tff.to_type(value_type)
        names = [n for n, _ in tff.structure.iter_elements(value_type)] if isinstance(value_type, tff.StructType) else []
        if names != ["update", "secagg"]:
            raise TypeError(
                f"value_type must be secure_value_type(update_type, num_clients) (a struct with fields 'update' "
                f"and 'secagg'), got {value_type}"
            )
        update_type = value_type.update
        for leaf in tff.structure.flatten(update_type):
            if not (isinstance(leaf, tff.TensorType) and np.issubdtype(leaf.dtype, np.floating)):
                raise TypeError(f"value_type.update must be a structure of float tensors, got {update_type}")
            if leaf.shape is None or any(dim is None for dim in leaf.shape):
                raise TypeError(f"value_type.update must have fully defined shapes, got {update_type}")
        n, k = self.num_clients, self.neighbours
        expected = material_type(n, k)
        if not any(
            value_type.secagg.is_equivalent_to(t) for t in (expected, material_type(n, k, _update_size(update_type) + 1))
        ):
            name = f"material_type({n})" if k is None else f"material_type({n}, neighbours={k})"
            raise TypeError(
                f"value_type.secagg must be {name} = {expected} (or with mask_size = update size + 1), got "
                f"{value_type.secagg}; build it with secure_value_type(update_type, {n}, neighbours=...)"
            )
        return value_type

    def build(self, value_type):
        """Returns ``(process, client_masking)``: the aggregation process and its round-2 client computation."""
        weighted = self.weighted
        n, t, f, bound = self.num_clients, self.threshold, self.frac_bits, self.bound
        k = n - 1 if self.neighbours is None else self.neighbours
        clip = self.clip
        precomputed = "mask" in [name for name, _ in tff.structure.iter_elements(value_type.secagg)]
        update_type = value_type.update
        update_specs = tff.types.type_to_tf_tensor_specs(update_type)
        d = sum(int(np.prod(s.shape)) for s in tf.nest.flatten(update_specs))
        size = d + 1 if weighted else d
        weight_tff = tff.TensorType(np.float32)
        max_weight = MAX_WEIGHT

        def mask_input(value, weight):
            # Round 2, at the client: clip, quantise, mask.  Only `masked` and the id one-hot leave it.
            m = value["secagg"]
            x = tf.clip_by_value(_flatten(value["update"]), -clip, clip)
            if weighted:
                finite = tf.reduce_all(tf.math.is_finite(x))
                w = tf.where(finite, tf.clip_by_value(tf.cast(weight, tf.float32), 0.0, max_weight), 0.0)
                vec = tf.concat([x * w, [w]], axis=0)
            else:
                vec = x
            y = _quantize(vec, bound, f)
            if precomputed:  # the whole mask was expanded with the client's key exchange
                y = y + m["mask"][:size]
            else:
                y = y + tf_chacha20_uniform(m["self_seed"][None, :], size)[0]
                everyone = tf.ones([k], tf.bool)
                y = y + _signed_masks(m["pair_keys"], m["pair_signs"], everyone, size)
            return collections.OrderedDict(masked=y, present=tf.one_hot(m["index"], n, dtype=tf.int32))

        def server_plan(present):
            # The server's announcement: who sent an input (U3), and whether enough did.
            count = tf.reduce_sum(present)
            return collections.OrderedDict(present=present, ok=count >= t)

        def unmask_answer(value, plan):
            # Round 3, at the client: shares of the held senders' seeds, masks shared with dropped neighbours.
            m = value["secagg"]
            present = plan["present"] > 0
            held = m["held"]
            held_present = tf.gather(present, held)
            # Like SecAggClient.unmasking_shares: answer nothing unless at least `threshold` of the clients
            # holding this client's shares sent an input.
            alive = tf.reduce_sum(tf.cast(held_present, tf.int32))
            ok = tf.logical_and(tf.logical_and(plan["ok"], tf.gather(present, m["index"])), alive >= t)
            lam = _client_lagrange(m["index"], m["holders"], present)
            shares = tf.math.floormod(lam[:, None] * m["seed_shares"], _P)
            shares = tf.where(held_present[:, None], shares, tf.zeros_like(shares))
            rows = held[:, None]
            shares = tf.scatter_nd(rows, shares, [n, SEED_CHUNKS])
            counted = tf.scatter_nd(rows, tf.cast(held_present, tf.int32), [n])
            dropped = tf.logical_not(tf.gather(present, m["peers"]))
            corr = _signed_masks(m["pair_keys"], m["pair_signs"], dropped, size)
            return collections.OrderedDict(
                shares=tf.where(ok, shares, tf.zeros_like(shares)),
                correction=tf.where(ok, corr, tf.zeros_like(corr)),
                answered=tf.where(ok, counted, tf.zeros_like(counted)),
            )

        def unmask_sum(masked_sum, plan, answers):
            # At the server: rebuild the senders' seeds, strip every mask, decode.
            present = plan["present"] > 0
            # A sender's seed is rebuilt only if at least `threshold` of its holders answered.
            short = tf.logical_and(present, answers["answered"] < t)
            chunks = tf.math.floormod(answers["shares"], _P)
            words = _chunks_to_words(tf.boolean_mask(chunks, present))
            self_masks = tf.reduce_sum(tf_chacha20_uniform(words, size), axis=0)
            ring = masked_sum["masked"] - self_masks - answers["correction"]
            total = tf.cast(tf.bitcast(ring, tf.int64), tf.float64) / float(2**f)
            ok = tf.logical_and(plan["ok"], tf.logical_not(tf.reduce_any(short)))
            if weighted:
                wsum = total[d]
                mean = tf.where(wsum > 0, total[:d] / tf.maximum(wsum, 1e-30), tf.zeros([d], tf.float64))
                out = tf.where(ok, mean, tf.zeros_like(mean))
            else:
                out = tf.where(ok, total, tf.zeros_like(total))
            measurements = collections.OrderedDict(
                secure_ok=ok,
                secure_clients=tf.reduce_sum(plan["present"]),
                secure_threshold=tf.constant(t, tf.int32),
                secure_unrecoverable=tf.reduce_sum(tf.cast(short, tf.int32)),
            )
            return _unflatten(tf.cast(out, tf.float32), update_specs), measurements

        if weighted:
            client_mask = tff.tensorflow.computation(mask_input, value_type, weight_tff)
        else:
            client_mask = tff.tensorflow.computation(lambda v: mask_input(v, None), value_type)
        sum_type = client_mask.type_signature.result
        plan_fn = tff.tensorflow.computation(server_plan, sum_type.present)
        answer_fn = tff.tensorflow.computation(unmask_answer, value_type, plan_fn.type_signature.result)
        finish_fn = tff.tensorflow.computation(
            unmask_sum, sum_type, plan_fn.type_signature.result, answer_fn.type_signature.result
        )

        @tff.federated_computation()
        def init_fn():
            return tff.federated_value((), tff.SERVER)

        state_type = init_fn.type_signature.result

        def body(state, value, weight):
            if weighted:
                masked = tff.federated_map(client_mask, (value, weight))
            else:
                masked = tff.federated_map(client_mask, value)
            masked_sum = tff.federated_sum(masked)
            plan = tff.federated_map(plan_fn, masked_sum.present)
            answers = tff.federated_sum(tff.federated_map(answer_fn, (value, tff.federated_broadcast(plan))))
            result, measurements = tff.federated_map(finish_fn, (masked_sum, plan, answers))
            return tff.templates.MeasuredProcessOutput(state, result, measurements)

        value_fed = tff.FederatedType(value_type, tff.CLIENTS)
        if weighted:
            next_fn = tff.federated_computation(body, state_type, value_fed, tff.FederatedType(weight_tff, tff.CLIENTS))
        else:
            next_fn = tff.federated_computation(lambda s, v: body(s, v, None), state_type, value_fed)
        return tff.templates.AggregationProcess(init_fn, next_fn), client_mask


class _CoreBacked:
    """What both factories share: construction of their :class:`_SecureCore` and what they expose of it."""

    _core: "_SecureCore"
    _WEIGHTED: bool  # a weighted mean (value and weight masked) or a plain sum

    def __init__(
        self,
        num_clients: int,
        max_dropout_fraction: float = 0.3,
        clip: float = 1.0,
        frac_bits: int = 24,
        neighbours: int | str | None = None,
    ):
        self._core = _SecureCore(
            num_clients, max_dropout_fraction, clip, frac_bits, weighted=self._WEIGHTED, neighbours=neighbours
        )

    @property
    def num_clients(self) -> int:
        return self._core.num_clients

    @property
    def threshold(self) -> int:
        """Shamir threshold: shares needed among the holders of one client's secrets."""
        return self._core.threshold

    @property
    def neighbours(self) -> int | None:
        """Degree of the masking graph (None: the complete graph); pass it to :func:`prepare_round`."""
        return self._core.neighbours


class SecureAggregationFactory(_CoreBacked, tff.aggregators.WeightedAggregationFactory):
    """Weighted mean by secure aggregation (see the module docstring for the protocol and its limits).

    Each client sends ``w * clip(x)`` and its weight ``w`` (clipped to [0, 2**16]), masked; the server
    unmasks only their sums and returns their ratio.

    Args:
        num_clients: Slots per round: the size of the key exchange (clients per round).
        max_dropout_fraction: Fraction of the holders of a client's shares (all slots for the complete graph,
            the ``k + 1`` of a neighbourhood otherwise) that may drop out mid-round, in [0, 0.5); the Shamir
            threshold is ``m - floor(max_dropout_fraction * m)`` (at least a majority of the `m` holders).
        clip: Elementwise bound on the update before weighting.
        frac_bits: Fractional bits of the fixed-point encoding in Z_2^64.
        neighbours: The masking graph.  None: the complete graph (Bonawitz et al.; every pair of clients
            masks, quadratic work).  An even int `k` or ``"auto"``
            (:func:`tfppml.federated.secure_agg.auto_neighbours`: 34 at 100 slots, 38 at 1000): the SecAgg+
            graph, each client masking with and sharing its secrets among `k` neighbours only (see
            :mod:`tfppml.federated.secure_agg`, "Sparse graph", for what the server can learn then).

    Raises:
        TypeError, ValueError: an argument is out of range, or the worst-case sum could wrap the ring.
    """

    _WEIGHTED = True

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        """Builds the process for ``value_type = secure_value_type(update_type, num_clients)``."""
        value_type = self._core.check_value_type(value_type)
        weight_type = tff.to_type(weight_type)
        if not (isinstance(weight_type, tff.TensorType) and weight_type.shape == () and np.issubdtype(weight_type.dtype, np.floating)):
            raise TypeError(f"weight_type must be a float scalar tensor type, got {weight_type}")
        return self._core.build(value_type)[0]

    def client_masking(self, value_type, weight_type) -> tff.Computation:
        """The client-placed TF computation of round 2: ``(value, weight) -> {masked, present}``.

        Its result is everything a client sends the server in that round (for tests and audits).
        """
        value_type = self._core.check_value_type(value_type)
        return self._core.build(value_type)[1]


class SecureSumFactory(_CoreBacked, tff.aggregators.UnweightedAggregationFactory):
    """Sum by secure aggregation; the inner factory for DP (see :func:`secure_dp_aggregator`).

    Args:
        num_clients, max_dropout_fraction, frac_bits, neighbours: As for :class:`SecureAggregationFactory`.
        clip: Elementwise bound applied before quantisation; with DP, set it at least to the L2 clip norm
            so it never bites (an L2-clipped record has no entry larger than the norm).

    Raises:
        TypeError, ValueError: an argument is out of range, or the worst-case sum could wrap the ring.
    """

    _WEIGHTED = False

    def create(self, value_type) -> tff.templates.AggregationProcess:
        """Builds the process for ``value_type = secure_value_type(update_type, num_clients)``."""
        return self._core.build(self._core.check_value_type(value_type))[0]

    def client_masking(self, value_type) -> tff.Computation:
        """The client-placed TF computation of round 2: ``value -> {masked, present}`` (see the weighted one)."""
        return self._core.build(self._core.check_value_type(value_type))[1]


# -------------------------------------------------------------------------------------------------- DP
class MaskedRecordQuery(tfp.SumAggregationDPQuery):
    """A DP query over ``{update, secagg}`` records: `inner` acts on ``update``; ``secagg`` passes through.

    TFF's ``DifferentiallyPrivateFactory`` clips and noises the whole value it is given and hands its inner
    factory the preprocessed record; the mask material must reach :class:`SecureSumFactory` untouched (and
    must not count towards the clipping norm).  The server-side result is the inner query's noised result
    on the secure sum of the updates.
    """

    def __init__(self, inner: tfp.SumAggregationDPQuery):
        self._inner = inner

    def initial_global_state(self):
        return self._inner.initial_global_state()

    def derive_sample_params(self, global_state):
        return self._inner.derive_sample_params(global_state)

    def initial_sample_state(self, template=None):
        return self._inner.initial_sample_state(template["update"])

    def preprocess_record(self, params, record):
        return collections.OrderedDict(
            update=self._inner.preprocess_record(params, record["update"]), secagg=record["secagg"]
        )

    def get_noised_result(self, sample_state, global_state):
        return self._inner.get_noised_result(sample_state, global_state)

    def derive_metrics(self, global_state):
        return self._inner.derive_metrics(global_state)


def secure_dp_aggregator(
    noise_multiplier: float,
    clients_per_round: int,
    clip: float,
    max_dropout_fraction: float = 0.3,
    frac_bits: int = 24,
    neighbours: int | str | None = None,
) -> tff.aggregators.DifferentiallyPrivateFactory:
    """TFF's fixed-clip Gaussian DP factory (outer) around :class:`SecureSumFactory` (inner).

    The same query as ``tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier,
    clients_per_round, clip)``: L2 clipping to `clip` at each client, Gaussian noise of standard deviation
    ``noise_multiplier * clip`` added to the (securely computed) sum at the server, divided by
    `clients_per_round`.

    Raises:
        TypeError, ValueError: an argument is out of range.
    """
    noise_multiplier = _check_real("noise_multiplier", noise_multiplier, positive=False)
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    clip = _check_real("clip", clip)
    query = tfp.NormalizedQuery(
        tfp.GaussianSumQuery(l2_norm_clip=clip, stddev=clip * noise_multiplier), denominator=float(clients_per_round)
    )
    inner = SecureSumFactory(clients_per_round, max_dropout_fraction, clip=clip, frac_bits=frac_bits, neighbours=neighbours)
    return tff.aggregators.DifferentiallyPrivateFactory(MaskedRecordQuery(query), record_aggregation_factory=inner)
