"""Keras hooks for private inference: `model.share(cluster)`, `model.serve(...)`, `model.stop()`, and the
client that secret-shares its input and gets back only its own prediction.

    import tensorflow as tf, tfppml
    hook = tfppml.KerasHook(tf.keras)              # adds share/serve/stop to tf.keras.Model
    cluster = tfppml.Cluster(tfppml.Worker("localhost:4000"), tfppml.Worker("localhost:4001"),
                             tfppml.Worker("localhost:4002"))
    cluster.start()
    model.share(cluster)          # the weights leave the owner only as shares
    model.serve(num_requests=3)   # blocks until three predictions were served
    # in another process:
    client = tfppml.Client()
    client.connect_to_model(input_shape, output_shape, cluster)
    logits = client.query_model(image)

Who learns what: the three servers see only shares (any one of them learns nothing about the weights or the
input); the model owner learns how many queries were served; the client learns its logits and nothing else
(the servers refuse to reveal anything else to it).  Threat model: non-colluding, semi-honest servers.

Homomorphic encryption instead (one serving process, no three non-colluding servers needed): the model is
compiled with `tfppml.he.compile_model` (Dense + polynomial activations) and registered at a single worker
running the "ckks" service; the client encrypts under its own CKKS key set, sends only the public part, and
alone can decrypt the answer.  The serving process sees the model in the clear, never the client's input.

    cluster = tfppml.Cluster(tfppml.Worker("127.0.0.1:0"), service="ckks").start()
    model.share(cluster, protocol="ckks")
    model.serve(num_requests=3, protocol="ckks")
    client = tfppml.Client().connect_to_model(input_shape, output_shape, cluster, protocol="ckks")
    logits = client.query_model(image)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfppml.keras.convert import ConversionContext, check_model, convert
from tfppml.mpc import ABY3

DEFAULT_MODEL_NAME = "model"
PROTOCOLS = ("aby3", "ckks")


def _check_protocol(protocol: str, fn: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"{fn}: argument `protocol` must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def _protocol(cluster: Any, identity: str, frac_bits: int, fn: str, *, setup: bool = True) -> ABY3:
    if isinstance(cluster, ABY3):
        return cluster
    if cluster is None or not hasattr(cluster, "remote"):
        raise TypeError(
            f"{fn}: argument `cluster` must be a started tfppml.Cluster (or a tfppml.mpc.ABY3), got "
            f"{type(cluster).__name__}"
        )
    return ABY3(cluster, frac_bits, identity=identity, setup=setup)


@dataclasses.dataclass
class _SharedModel:
    protocol: Any  # ABY3, or tfppml.he.service.CKKSServing (same serve / stop_serving / program_status)
    name: str
    context: ConversionContext | None
    output_shape: tuple
    kind: str = "aby3"


def _share(self: tf.keras.Model, cluster: Any, *, name: str = DEFAULT_MODEL_NAME, identity: str = "model_owner",
           frac_bits: int = 16, protocol: str = "aby3", worker: str | None = None) -> "tf.keras.Model":
    """Secret-shares this model's weights among the cluster's three servers and registers its forward pass
    (protocol "aby3"), or compiles it for CKKS and registers it at one "ckks" worker (protocol "ckks").

    Args:
        cluster: a started `tfppml.Cluster` (or a `tfppml.mpc.ABY3` to use, e.g. the in-process back end).
        name: the name clients query (default "model").
        identity: the certificate identity of the model owner.
        frac_bits: fixed-point fractional bits (aby3).
        protocol: "aby3" (three servers, secret sharing) or "ckks" (one server, homomorphic encryption: the
            serving process holds the weights in the clear, the client's input only encrypted).
        worker: ckks: the worker's party name (default the cluster's first worker).

    Returns:
        The model, for chaining.

    Raises:
        tfppml.keras.UnsupportedLayerError: a layer has no secure form (raised before anything is shared).
        ValueError: ckks: a layer or activation has no CKKS form (raised before anything is sent).

    Example:
        >>> model.share(cluster, protocol="ckks")            # doctest: +SKIP
    """
    if _check_protocol(protocol, "Model.share") == "ckks":
        from tfppml.he.model import compile_model
        from tfppml.he.service import CKKSServing

        program = compile_model(self)  # refuse unsupported layers before anything leaves the owner
        serving = CKKSServing(cluster, identity, worker)
        serving.register(name, program)
        self._tfppml_shared = _SharedModel(serving, name, None, (program.output_dim,), "ckks")
        return self
    check_model(self)  # refuse unsupported layers before anything leaves the owner
    protocol = _protocol(cluster, identity, frac_bits, "Model.share")
    input_shape = tuple(self.input_shape)
    builder, x = protocol.program((1, *input_shape[1:]))
    context = ConversionContext(builder)
    y = convert(self, context, x)
    # A model built with a fixed batch (batch_input_shape) accepts exactly that many rows per query.
    protocol.register_program(name, y, batch_size=input_shape[0])
    self._tfppml_shared = _SharedModel(protocol, name, context, tuple(y.shape[1:]))
    return self


def _state(model: tf.keras.Model, fn: str) -> _SharedModel:
    state = getattr(model, "_tfppml_shared", None)
    if state is None:
        raise RuntimeError(f"Model.{fn}: call model.share(cluster) first")
    return state


def _serve(self: tf.keras.Model, num_requests: int = 1, *, block: bool = True, timeout: float | None = None,
           poll_interval: float = 0.05, protocol: str | None = None) -> int:
    """Serves private predictions.

    Args:
        num_requests: how many inputs (rows of the query batches, not calls) to answer in this serving period:
            the owner's bound on what clients can learn about the model.  A model with a declared batch size
            (batch_input_shape) accepts queries of exactly that many rows.
        block: wait until they were answered (True) or return at once (serve in the background; call
            `model.stop()` to end early).
        timeout: with block=True, seconds to wait at most (None: forever); on expiry serving is stopped and
            TimeoutError raised.
        poll_interval: seconds between progress checks while blocking.
        protocol: optional check: the protocol the model was shared with ("aby3" or "ckks").

    Returns:
        The number of rows answered so far in this period.
    """
    state = _state(self, "serve")
    if protocol is not None and _check_protocol(protocol, "Model.serve") != state.kind:
        raise ValueError(
            f"Model.serve: argument `protocol` is {protocol!r} but the model was shared with {state.kind!r}; "
            f"call model.share(cluster, protocol={protocol!r}) first"
        )
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise ValueError(f"Model.serve: argument `num_requests` must be a positive int, got {num_requests!r}")
    state.protocol.serve(state.name, num_requests)
    if not block:
        return 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = state.protocol.program_status(state.name)
        if status["served"] >= num_requests:
            return status["served"]
        if deadline is not None and time.monotonic() > deadline:
            served = state.protocol.stop_serving(state.name)
            raise TimeoutError(f"Model.serve: answered {served} of {num_requests} rows in {timeout} s")
        time.sleep(poll_interval)


def _stop(self: tf.keras.Model) -> int:
    """Stops serving (queries already admitted finish); returns how many rows were answered in this period."""
    state = _state(self, "stop")
    return state.protocol.stop_serving(state.name)


class KerasHook:
    """Adds `share`, `serve` and `stop` to a Keras module's Model class (e.g. `tfppml.KerasHook(tf.keras)`)."""

    def __init__(self, keras: Any = tf.keras) -> None:
        model_class = getattr(keras, "Model", None)
        if not isinstance(model_class, type):
            raise TypeError(f"KerasHook: argument `keras` must be a Keras module such as tf.keras, got {keras!r}")
        model_class.share = _share
        model_class.serve = _serve
        model_class.stop = _stop
        self.keras = keras


class Client:
    """A client of a served model: shares its input itself and learns only its own output.

    Args:
        identity: the certificate identity of this client (default "client").
    """

    def __init__(self, identity: str = "client") -> None:
        self.identity = identity
        self.protocol: ABY3 | None = None
        self.input_shape: tuple | None = None
        self.output_shape: tuple | None = None
        self.model_name = DEFAULT_MODEL_NAME
        self.he_context = None  # ckks: this client's CKKSContext (with the secret key, never sent)
        self._he_layout = "vector"

    def connect_to_model(self, input_shape: Sequence[int | None], output_shape: Sequence[int | None], cluster: Any,
                         *, model_name: str = DEFAULT_MODEL_NAME, frac_bits: int = 16, protocol: str = "aby3",
                         layout: str = "vector", worker: str | None = None) -> "Client":
        """Connects to a model served by `cluster` (a started or configured `tfppml.Cluster`, or an ABY3).

        Args:
            input_shape: the model's input shape; the first (batch) dimension may be None or any size.
            output_shape: the model's output shape, checked against each answer.
            protocol: "aby3" (secret sharing among three servers) or "ckks" (homomorphic encryption at one
                "ckks" worker: makes this client's key set with the parameters the model needs; the secret key
                stays in this process).
            layout: ckks: "vector" (one ciphertext per sample; small batches) or "batch" (samples along the
                slots; many samples per query, but one ciphertext per input feature).
            worker: ckks: the worker's party name (default the cluster's first worker).

        Raises:
            ValueError: ckks: `input_shape` / `output_shape` disagree with the served model, or a bad `layout`.

        Example:
            >>> client = Client().connect_to_model((None, 8), (None, 3), cluster, protocol="ckks")  # doctest: +SKIP
        """
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)
        self.model_name = model_name
        if _check_protocol(protocol, "Client.connect_to_model") == "ckks":
            from tfppml.he.ckks import LAYOUTS, CKKSContext
            from tfppml.he.service import CKKSServing

            if layout not in LAYOUTS:
                raise ValueError(f"Client.connect_to_model: argument `layout` must be one of {LAYOUTS}, got {layout!r}")
            serving = CKKSServing(cluster, self.identity, worker)
            info = serving.info(model_name)
            features = int(np.prod([d for d in self.input_shape[1:]], dtype=np.int64))
            if None in self.input_shape[1:] or features != info["input_dim"]:
                raise ValueError(
                    f"Client.connect_to_model: argument `input_shape` {self.input_shape} must have "
                    f"{info['input_dim']} features per sample for model {model_name!r}"
                )
            if self.output_shape[1:] not in ((info["output_dim"],), (None,)):
                raise ValueError(
                    f"Client.connect_to_model: argument `output_shape` {self.output_shape} must be "
                    f"(batch, {info['output_dim']}) for model {model_name!r}"
                )
            self.he_context = CKKSContext(**info["context_parameters"][layout])
            self._he_layout = layout
            self.protocol = serving
            return self
        self.he_context = None
        # A client only queries: the queries run under the model owner's set-up, and the servers refuse it the rest.
        self.protocol = _protocol(cluster, self.identity, frac_bits, "Client.connect_to_model", setup=False)
        return self

    def query_model(self, x: Any) -> np.ndarray:
        """Secret-shares `x` (batch first), runs the served model on it and returns the logits to this client.

        With protocol "ckks": encrypts `x` under this client's key set, sends the ciphertexts (and the public
        key material, never the secret key), and decrypts the encrypted answer locally.

        Raises:
            ValueError: the input does not match the model's input shape.
            tfppml.errors.PolicyDenied: the model is not serving (or no requests are left).
        """
        if self.protocol is None:
            raise RuntimeError("Client.query_model: call connect_to_model first")
        array = np.asarray(x, dtype=np.float64)
        if array.ndim == len(self.input_shape) - 1:
            array = array[None]
        if array.shape[1:] != tuple(self.input_shape[1:]):
            raise ValueError(
                f"Client.query_model: argument `x` must have shape (batch, {', '.join(map(str, self.input_shape[1:]))}), "
                f"got {array.shape}"
            )
        if self.he_context is not None:
            flat = array.reshape(array.shape[0], -1)
            cipher = self.protocol.query(self.model_name, self.he_context,
                                         self.he_context.encrypt(flat, layout=self._he_layout))
            logits = self.he_context.decrypt(cipher)
        else:
            logits = self._query_shared(array)
        expected = tuple(self.output_shape[1:])
        if any(d is not None for d in expected) and logits.shape[1:] != expected:
            raise ValueError(f"Client.query_model: the model answered shape {logits.shape}, expected (batch, {expected})")
        return logits

    def _query_shared(self, array: np.ndarray) -> np.ndarray:
        # The input is secret-shared here and each server's pair travels with the query itself.
        return self.protocol.query(self.model_name, array)
