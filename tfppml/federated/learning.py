"""FedAvg with secure aggregation, DP-FedAvg and Reptile on TensorFlow Federated, and a driver that runs them.

Builders (each returns a ``tff.learning.templates.LearningProcess``):

* :func:`build_secure_fed_avg`: weighted FedAvg whose model updates are summed by
  :class:`~tfppml.federated.tff_secure_agg.SecureAggregationFactory`.  Same arguments as
  ``tff.learning.algorithms.build_weighted_fed_avg`` plus the secure-aggregation ones; the client data of
  ``next`` is ``OrderedDict(data=<dataset>, secagg=<mask material>)`` (see :func:`secure_client_data`).  Why it
  is not ``build_weighted_fed_avg(model_aggregator=...)``: that builder creates the aggregator for the bare
  update type and its client work cannot emit the mask material (see :mod:`tfppml.federated.tff_secure_agg`),
  so this one composes TFF's own client work, distributor and finalizer and zips each client's material
  with its update before the aggregator (see ``_compose``).
* :func:`build_dp_fed_avg`: DP-FedAvg (uniform client weighting, L2 clipping at the clients, Gaussian noise on
  the sum at the server) with TFF's ``DifferentiallyPrivateFactory``; with ``secure=True`` the noised sum is
  a secure sum.  :func:`dp_epsilon` reports the user-level epsilon after each round with
  :func:`tfppml.dp.compute_epsilon`, claiming no amplification by sampling (see there).
* :func:`build_reptile`: Reptile (Nichol et al. 2018) as federated meta-learning: each client takes `k` SGD
  steps from the global weights, the weights are averaged uniformly (securely if asked), and the server moves
  the global weights a fraction ``meta_step_size`` towards the average.  Averaging the deltas
  ``w - w_client`` is the same as averaging the weights (the server knows ``w``) and keeps the quantised
  values small, so the deltas are what is (securely) averaged.

:class:`FederatedTrainer` samples clients, runs the Python key-exchange rounds of secure aggregation, feeds the
process, raises :class:`~tfppml.errors.ProtocolError` when a secure round fails, and evaluates.

Example:
    >>> trainer = FederatedTrainer(client_datasets, model_fn, algorithm="fedavg", secure=True,
    ...                            clients_per_round=5)
    >>> for r in range(10):
    ...     metrics = trainer.run_round()
"""

from __future__ import annotations

import atexit
import collections
import math
import numbers
import os
import pathlib
import pickle
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

# TFF 0.87 exports no builder for its model-delta client work; this is the one build_weighted_fed_avg uses.
from tensorflow_federated.python.learning.templates import model_delta_client_work

from tfppml.dp.accounting import compute_epsilon
from tfppml.federated import tff_secure_agg as tsa
from tfppml.federated.secure_agg import resolve_neighbours

__all__ = [
    "ALGORITHMS",
    "FederatedTrainer",
    "build_dp_fed_avg",
    "build_reptile",
    "build_secure_fed_avg",
    "dp_epsilon",
    "secure_client_data",
]

ALGORITHMS = ("fedavg", "reptile")


def _sgd(lr: float) -> tff.learning.optimizers.Optimizer:
    return tff.learning.optimizers.build_sgdm(learning_rate=lr)


def secure_client_data(dataset: tf.data.Dataset, material: dict) -> collections.OrderedDict:
    """One client's input to a secure process: its dataset and its mask material (a plain structure)."""
    names = [name for name in tsa.MATERIAL_FIELDS if name in material]
    ordered = collections.OrderedDict((name, material[name]) for name in names)  # TFF refuses plain dicts here
    return collections.OrderedDict(data=dataset, secagg=ordered)


def _as_weighted(process: tff.templates.AggregationProcess) -> tff.templates.AggregationProcess:
    """An unweighted aggregation process that accepts (and ignores) a weight, as the composer passes one."""
    state_type, value_type = process.next.type_signature.parameter

    @tff.federated_computation(state_type, value_type, tff.FederatedType(np.float32, tff.CLIENTS))
    def next_fn(state, value, weight):
        del weight  # uniform weighting: every client counts once
        return process.next(state, value)

    return tff.templates.AggregationProcess(process.initialize, next_fn)


def _compose(
    model_fn, client_optimizer, server_optimizer, aggregator_for, weighting, secure_slots, neighbours, precomputed_masks
):
    """The FedAvg learning process from TFF's parts, with mask material beside each client's dataset.

    Why not ``tff.learning.templates.compose_learning_process``: it requires every client input to be a
    sequence, so the material would have to travel as a one-element dataset per client, and inside TFF's
    worker_binary each such dataset costs a dataset instantiation and a reduce per client per round (the
    largest share of the secure round's overhead in a profile at 100 clients).  This composition takes the
    material as a plain CLIENTS-placed value and zips it with the client work's update (a structural
    intrinsic, no TensorFlow call).  The steps, the state (``LearningAlgorithmState``) and the metrics
    (``distributor``, ``client_work``, ``aggregator``, ``finalizer``) are the ones the TFF composer builds.
    """

    @tff.tensorflow.computation()
    def initial_weights():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    weights_type = initial_weights.type_signature.result
    client_work = model_delta_client_work.build_model_delta_client_work(
        model_fn=model_fn, optimizer=client_optimizer, client_weighting=weighting
    )
    distributor = tff.learning.templates.build_broadcast_process(weights_type)
    finalizer = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type)
    value_type = tsa.secure_value_type(
        weights_type.trainable, secure_slots, neighbours, precomputed_masks=precomputed_masks
    )
    aggregator = aggregator_for(value_type)
    data_type = client_work.next.type_signature.parameter[2].member
    client_data_type = tff.StructWithPythonType(
        [("data", data_type), ("secagg", value_type.secagg)], collections.OrderedDict
    )
    state_cls = tff.learning.templates.LearningAlgorithmState

    @tff.federated_computation()
    def init_fn():
        weights = tff.federated_eval(initial_weights, tff.SERVER)
        parts = (distributor.initialize(), client_work.initialize(), aggregator.initialize(), finalizer.initialize())
        return tff.federated_zip(state_cls(weights, *parts))

    @tff.federated_computation(init_fn.type_signature.result, tff.FederatedType(client_data_type, tff.CLIENTS))
    def next_fn(state, client_data):
        dist = distributor.next(state.distributor, state.global_model_weights)
        work = client_work.next(state.client_work, dist.result, client_data.data)
        value = tff.federated_zip(collections.OrderedDict(update=work.result.update, secagg=client_data.secagg))
        agg = aggregator.next(state.aggregator, value, work.result.update_weight)
        fin = finalizer.next(state.finalizer, state.global_model_weights, agg.result)
        new_state = tff.federated_zip(state_cls(fin.result, dist.state, work.state, agg.state, fin.state))
        metrics = tff.federated_zip(
            collections.OrderedDict(
                distributor=dist.measurements,
                client_work=work.measurements,
                aggregator=agg.measurements,
                finalizer=fin.measurements,
            )
        )
        return tff.learning.templates.LearningProcessOutput(new_state, metrics)

    state_type = init_fn.type_signature.result.member

    @tff.tensorflow.computation(state_type)
    def get_model_weights(state):
        return state.global_model_weights

    @tff.tensorflow.computation(state_type, state_type.global_model_weights)
    def set_model_weights(state, weights):
        return state_cls(weights, state.distributor, state.client_work, state.aggregator, state.finalizer)

    return tff.learning.templates.LearningProcess(init_fn, next_fn, get_model_weights, set_model_weights)


def build_secure_fed_avg(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer_fn: tff.learning.optimizers.Optimizer,
    server_optimizer_fn: tff.learning.optimizers.Optimizer | None = None,
    *,
    clients_per_round: int,
    max_dropout_fraction: float = 0.3,
    clip: float = 1.0,
    frac_bits: int = 24,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.NUM_EXAMPLES,
    neighbours: int | str | None = None,
    precomputed_masks: bool = False,
) -> tff.learning.templates.LearningProcess:
    """Weighted FedAvg with secure aggregation of the model updates.

    Args:
        model_fn: No-arg function returning a ``tff.learning.models.VariableModel``.
        client_optimizer_fn: Client optimizer (a ``tff.learning.optimizers.Optimizer``).
        server_optimizer_fn: Server optimizer; default SGD with learning rate 1 (plain FedAvg).
        clients_per_round: Slots of the secure aggregation (the most clients one round can hold).
        max_dropout_fraction, clip, frac_bits: See :class:`~tfppml.federated.SecureAggregationFactory`.
        client_weighting: ``NUM_EXAMPLES`` (FedAvg) or ``UNIFORM``.
        neighbours: The masking graph (None: complete; ``"auto"`` or an even int: SecAgg+), see
            :class:`~tfppml.federated.SecureAggregationFactory`.
        precomputed_masks: The client data's material carries each client's whole mask (made by
            :func:`~tfppml.federated.tff_secure_agg.prepare_round` with ``mask_size`` = model size + 1)
            instead of having TensorFlow expand it from the keys.

    Returns:
        A learning process whose ``next`` takes, per client, :func:`secure_client_data`.
    """
    factory = tsa.SecureAggregationFactory(clients_per_round, max_dropout_fraction, clip, frac_bits, neighbours)
    server = server_optimizer_fn if server_optimizer_fn is not None else _sgd(1.0)
    return _compose(
        model_fn,
        client_optimizer_fn,
        server,
        lambda t: factory.create(t, tff.TensorType(np.float32)),
        client_weighting,
        clients_per_round,
        factory.neighbours,
        precomputed_masks,
    )


def build_dp_fed_avg(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer_fn: tff.learning.optimizers.Optimizer,
    server_optimizer_fn: tff.learning.optimizers.Optimizer | None = None,
    *,
    noise_multiplier: float,
    clients_per_round: int,
    clip: float = 0.1,
    secure: bool = False,
    max_dropout_fraction: float = 0.3,
    neighbours: int | str | None = None,
    precomputed_masks: bool = False,
) -> tff.learning.templates.LearningProcess:
    """DP-FedAvg (McMahan et al. 2018): uniform weighting, client L2 clipping, Gaussian noise at the server.

    Args:
        model_fn, client_optimizer_fn, server_optimizer_fn: As for :func:`build_secure_fed_avg`.
        noise_multiplier: Noise standard deviation divided by `clip`; >= 0.
        clients_per_round: Expected clients per round (the mean's denominator and the accountant's ``q * N``).
        clip: L2 norm bound of each client's update.
        secure: Sum the clipped updates by secure aggregation (:func:`tsa.secure_dp_aggregator`, with
            `clients_per_round` slots); client data is then :func:`secure_client_data`.
        max_dropout_fraction, neighbours, precomputed_masks: For the secure aggregation (see
            :func:`build_secure_fed_avg`).

    Returns:
        A learning process.
    """
    server = server_optimizer_fn if server_optimizer_fn is not None else _sgd(1.0)
    if not secure:
        dp = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            float(noise_multiplier), float(clients_per_round), float(clip)
        )
        return tff.learning.algorithms.build_unweighted_fed_avg(
            model_fn, client_optimizer_fn, server, model_aggregator=dp
        )
    k = resolve_neighbours(clients_per_round, neighbours)
    dp = tsa.secure_dp_aggregator(noise_multiplier, clients_per_round, clip, max_dropout_fraction, neighbours=k)
    return _compose(
        model_fn,
        client_optimizer_fn,
        server,
        lambda t: _as_weighted(dp.create(t)),
        tff.learning.ClientWeighting.UNIFORM,
        clients_per_round,
        k,
        precomputed_masks,
    )


def build_reptile(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    inner_learning_rate: float = 0.05,
    meta_step_size: float = 0.5,
    *,
    secure: bool = False,
    clients_per_round: int | None = None,
    max_dropout_fraction: float = 0.3,
    neighbours: int | str | None = None,
    precomputed_masks: bool = False,
) -> tff.learning.templates.LearningProcess:
    """Federated Reptile: `k` local SGD steps, uniform (secure) average, server step of `meta_step_size`.

    The number of local steps `k` is the number of batches a client's dataset yields; give each client
    ``dataset.repeat().take(k)`` (:class:`FederatedTrainer` does, with ``local_steps=k``).

    Args:
        model_fn: No-arg function returning a ``tff.learning.models.VariableModel``.
        inner_learning_rate: Learning rate of the clients' SGD steps.
        meta_step_size: Fraction of the way from the global weights to the clients' average, in (0, 1].
        secure: Average by secure aggregation (client data is then :func:`secure_client_data`).
        clients_per_round: Slots of the secure aggregation (required when `secure`).
        max_dropout_fraction, neighbours, precomputed_masks: For the secure aggregation (see
            :func:`build_secure_fed_avg`).

    Returns:
        A learning process.

    Raises:
        ValueError: `meta_step_size` is outside (0, 1], or `secure` without `clients_per_round`.
    """
    if not 0.0 < float(meta_step_size) <= 1.0:
        raise ValueError(f"meta_step_size must be in (0, 1], got {meta_step_size!r}")
    client_opt, server_opt = _sgd(inner_learning_rate), _sgd(float(meta_step_size))
    if not secure:
        return tff.learning.algorithms.build_unweighted_fed_avg(model_fn, client_opt, server_opt)
    if not clients_per_round:
        raise ValueError("clients_per_round must be given (an int >= 2) when secure=True")
    return build_secure_fed_avg(
        model_fn,
        client_opt,
        server_opt,
        clients_per_round=clients_per_round,
        max_dropout_fraction=max_dropout_fraction,
        client_weighting=tff.learning.ClientWeighting.UNIFORM,
        neighbours=neighbours,
        precomputed_masks=precomputed_masks,
    )


def dp_epsilon(rounds: int, num_clients: int, clients_per_round: int, noise_multiplier: float, delta: float) -> float:
    """User-level epsilon of DP-FedAvg after `rounds` rounds, claiming no amplification by sampling.

    Each round is a Gaussian mechanism with sensitivity `clip` (one client's clipped update) and noise
    ``noise_multiplier * clip``; adjacency is adding or removing one *client* (all of its data).  The clients
    of a round are drawn uniformly without replacement, for which tfppml's accountant has no amplification
    bound, so every round is counted as if every client took part: `rounds` Gaussian mechanisms composed
    (:func:`tfppml.dp.compute_epsilon` with ``poisson=False`` and clients in place of examples).  This is
    conservative; Poisson sampling of clients with its amplification is not implemented.
    """
    if rounds <= 0:
        return 0.0
    return compute_epsilon(num_clients, clients_per_round, noise_multiplier, rounds, delta, poisson=False)


class _KeyExchangeHelper:
    """One ``python -m tfppml.federated._key_exchange`` process: submit an exchange, later take its result."""

    def __init__(self):
        env = dict(os.environ)
        root = str(pathlib.Path(__file__).resolve().parents[2])  # the directory holding the tfppml package
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tfppml.federated._key_exchange"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        atexit.register(self.close)

    def submit(self, args: tuple) -> None:
        pickle.dump(args, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._proc.stdin.flush()

    def result(self) -> list[dict]:
        try:
            status, value = pickle.load(self._proc.stdout)
        except EOFError as err:
            raise RuntimeError(
                f"the key-exchange helper process (pid {self._proc.pid}) exited with code {self._proc.poll()}"
            ) from err
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # the helper reads end-of-file and exits
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if not pipe.closed:
                pipe.close()
        atexit.unregister(self.close)


class FederatedTrainer:
    """Runs one learning process round by round over simulated clients.

    Args:
        client_datasets: One batched ``tf.data.Dataset`` per client.
        model_fn: No-arg function returning a ``tff.learning.models.VariableModel``.
        algorithm: ``"fedavg"`` or ``"reptile"``.
        secure: Use secure aggregation.
        dp_noise: Noise multiplier for DP-FedAvg (None: no DP); see :func:`dp_epsilon` for the accounting.
        clients_per_round: Clients sampled (uniformly, without replacement) each round.
        client_lr, server_lr: Learning rates (server_lr is Reptile's meta step size).
        local_steps: Reptile's `k`.
        dp_clip, dp_delta: DP clipping norm and delta.
        dropout: Fraction of each round's sampled clients that drop out after the key exchange (secure only;
            simulates mid-round dropouts).
        max_dropout_fraction: Tolerance of the secure aggregation.
        seed: Seed of client sampling and dropout simulation.
        overlap_key_exchange: With `secure`, run the next round's key exchange (protocol rounds 0-1, Python
            and OpenSSL: X25519, Shamir, AES-GCM) in a helper process while TFF's worker_binary runs this
            round.  It depends only on the slot count and the round id, not on which clients are sampled, so
            it can start early; every round still gets fresh keys bound to its own round id, and the material
            reaches only the clients' TFF values, as without overlap.  A process, not a thread: in a thread
            the pure-Python Shamir and message handling contend for the GIL with TFF's own Python (value
            serialisation), which measured slower than no overlap at all.  Round times then measure the steady
            state, the key exchange hidden as far as a free core allows (the first round pays it in full).
            The helper is ``python -m tfppml.federated._key_exchange`` talking over two pipes; call
            :meth:`close` (or use the trainer as a context manager) to stop it early; it is also stopped at
            interpreter exit, and exits by itself when this process dies (its stdin closes).
        neighbours: The secure aggregation's masking graph: None (complete graph, Bonawitz et al.),
            ``"auto"`` or an even int (SecAgg+: each client masks with and shares among that many neighbours;
            see :class:`~tfppml.federated.SecureAggregationFactory`).
        precomputed_masks: With `secure`, expand each client's whole mask with its key exchange (the ChaCha20
            kernel, in Python) and only add it inside TFF, instead of expanding it with TensorFlow ops inside
            TFF's worker_binary.  Either way the mask is made from that client's own keys and reaches only its
            own TFF value.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """

    def __init__(
        self,
        client_datasets: Sequence[tf.data.Dataset],
        model_fn: Callable[[], tff.learning.models.VariableModel],
        *,
        algorithm: str = "fedavg",
        secure: bool = False,
        dp_noise: float | None = None,
        clients_per_round: int = 10,
        client_lr: float = 0.1,
        server_lr: float = 1.0,
        local_steps: int = 5,
        dp_clip: float = 0.5,
        dp_delta: float = 1e-5,
        dropout: float = 0.0,
        max_dropout_fraction: float = 0.3,
        seed: int = 0,
        overlap_key_exchange: bool = False,
        neighbours: int | str | None = None,
        precomputed_masks: bool = True,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        n = len(client_datasets)
        if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, numbers.Integral) or not 1 <= clients_per_round <= n:
            raise ValueError(f"clients_per_round must be an int in [1, {n}] (the number of clients), got {clients_per_round!r}")
        if secure and clients_per_round < 2:
            raise ValueError(f"clients_per_round must be >= 2 with secure aggregation, got {clients_per_round}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        if neighbours is not None and not secure:
            raise ValueError(f"neighbours applies to secure aggregation only (secure=True), got neighbours={neighbours!r}")
        if dp_noise is not None and algorithm != "fedavg":
            raise ValueError(f"dp_noise is supported with algorithm='fedavg' only, got algorithm={algorithm!r}")
        self.datasets = list(client_datasets)
        self.algorithm, self.secure, self.dp_noise = algorithm, bool(secure), dp_noise
        self.clients_per_round, self.local_steps, self.dropout = int(clients_per_round), int(local_steps), dropout
        self.dp_delta = dp_delta
        self.rng = np.random.default_rng(seed)
        self.round = 0
        self.slots = self.clients_per_round  # one secure-aggregation slot per sampled client
        self.neighbours = resolve_neighbours(self.slots, neighbours) if secure else None
        self.precomputed_masks = bool(precomputed_masks) and self.secure
        masking = dict(neighbours=self.neighbours, precomputed_masks=self.precomputed_masks) if secure else {}
        if dp_noise is not None:
            self.process = build_dp_fed_avg(
                model_fn, _sgd(client_lr), _sgd(server_lr), noise_multiplier=dp_noise,
                clients_per_round=self.clients_per_round, clip=dp_clip, secure=secure, max_dropout_fraction=max_dropout_fraction,
                **masking,
            )
        elif algorithm == "reptile":
            self.process = build_reptile(
                model_fn, client_lr, server_lr, secure=secure, clients_per_round=self.slots,
                max_dropout_fraction=max_dropout_fraction, **masking,
            )
        elif secure:
            self.process = build_secure_fed_avg(
                model_fn, _sgd(client_lr), _sgd(server_lr), clients_per_round=self.slots,
                max_dropout_fraction=max_dropout_fraction, **masking,
            )
        else:
            self.process = tff.learning.algorithms.build_weighted_fed_avg(model_fn, _sgd(client_lr), _sgd(server_lr))
        self.threshold = None
        self.overlap_key_exchange = bool(overlap_key_exchange)
        self._pending: tuple[int, _KeyExchangeHelper] | None = None
        self._helper: _KeyExchangeHelper | None = None
        self.mask_size = None
        #: Wall time of the last round's parts: ``prepare`` (sampling, key exchange or waiting for the helper,
        #: building the client data) and ``tff`` (the TFF call).
        self.last_round_seconds: dict[str, float] = {}
        if secure:
            self.threshold = tsa.SecureSumFactory(self.slots, max_dropout_fraction, neighbours=self.neighbours).threshold
            if self.precomputed_masks:
                client_data = self.process.next.type_signature.parameter[1].member
                self.mask_size = int(client_data.secagg.mask.shape[0])
        self.state = self.process.initialize()

    def _sample(self) -> list[int]:
        n = len(self.datasets)
        return sorted(self.rng.choice(n, self.clients_per_round, replace=False).tolist())

    def _data(self, i: int) -> tf.data.Dataset:
        ds = self.datasets[i]
        return ds.repeat().take(self.local_steps) if self.algorithm == "reptile" else ds

    def run_round(self) -> dict:
        """Runs one round; returns a flat dict of metrics (train loss/accuracy, clients, epsilon with DP).

        Raises:
            ProtocolError: the secure aggregation could not be unmasked (too many dropouts).
        """
        picked = self._sample()
        extra = {"clients": len(picked)}
        start = time.perf_counter()
        if self.secure:
            # The k-th sampled client takes slot k of this round's key exchange.
            materials = self._materials(self.round)
            drop = int(math.floor(self.dropout * len(picked)))
            dropped = set(self.rng.choice(len(picked), drop, replace=False).tolist()) if drop else set()
            data = [
                secure_client_data(self._data(c), materials[k]) for k, c in enumerate(picked) if k not in dropped
            ]
            extra["dropped"] = len(dropped)
        else:
            data = [self._data(c) for c in picked]
        prepared = time.perf_counter()
        out = self.process.next(self.state, data)
        self.last_round_seconds = {"prepare": prepared - start, "tff": time.perf_counter() - prepared}
        tsa.check_measurements(out.metrics)
        self.state = out.state
        self.round += 1
        train = out.metrics["client_work"]["train"]
        return {"loss": float(train["loss"]), "accuracy": float(train["sparse_categorical_accuracy"]), **extra, **self._epsilon()}

    def _key_exchange_args(self, round_id: int) -> tuple:
        return (
            self.slots, self.threshold, list(range(self.clients_per_round)), round_id, self.neighbours, self.mask_size
        )

    def _materials(self, round_id: int) -> list[dict]:
        """This round's mask material (from the helper process if its exchange was started there)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == round_id:
            materials = pending[1].result()  # blocks if the helper has not finished
        else:  # first round, overlap off, or the previous round failed and is being run again
            materials = tsa.prepare_round(
                self.slots, self.threshold, range(self.clients_per_round), round_id=round_id,
                neighbours=self.neighbours, mask_size=self.mask_size,
            )
        if self.overlap_key_exchange:
            if self._helper is None:
                self._helper = _KeyExchangeHelper()
            self._helper.submit(self._key_exchange_args(round_id + 1))
            self._pending = (round_id + 1, self._helper)
        return materials

    def close(self) -> None:
        """Stops the key-exchange helper process, if one was started (idempotent)."""
        helper, self._helper, self._pending = self._helper, None, None
        if helper is not None:
            helper.close()

    def __enter__(self) -> "FederatedTrainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _epsilon(self) -> dict:
        if self.dp_noise is None:
            return {}
        eps = dp_epsilon(self.round, len(self.datasets), self.clients_per_round, self.dp_noise, self.dp_delta)
        return {"epsilon": eps}

    def model_weights(self):
        """The global model weights (``tff.learning.models.ModelWeights``)."""
        return self.process.get_model_weights(self.state)
