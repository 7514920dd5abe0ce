"""Remote execution on a data owner's worker: pointers to data that never leaves it unless its policy allows.

A hospital runs a worker holding its data (``tfppml worker --service remote --option data=patients.npz
--option policy=policy.yaml --option audit_key=KEY``, see `tfppml.remote.service`); a data scientist computes on
it through pointers::

    import tensorflow as tf
    import tfppml.remote

    remote = tfppml.remote.connect("cluster.json", worker="hospital", identity="analyst")
    x_ptr = remote.dataset("patients")                     # a pointer; the rows stay at the hospital
    w_ptr = tfppml.remote.send(tf.ones([4, 1]), remote)    # our own tensor, now on the worker
    z_ptr = (x_ptr @ w_ptr).mean()                         # runs on the worker; z stays there
    z_ptr.get()                                            # only if the policy allows (else PolicyDenied)
    noisy = x_ptr.dp_mean(lower=0, upper=100, epsilon=0.5).get()   # charged to our epsilon budget
    ages = x_ptr @ tfppml.remote.send([[1.0], [0.0], [0.0], [0.0]], remote)   # one column, rows kept
    ages.dp_quantiles([0.5], lower=0, upper=120, epsilon=0.5).get()          # also dp_count, dp_histogram
    model_ptr = remote.fit(keras_model, x_ptr, y_ptr, epochs=3, loss="mse")
    trained = model_ptr.get()                              # a Keras model, if the policy returns weights

Every result stays on the worker behind an object id until `.get()`; objects are freed by `ptr.delete()` or, when
a pointer is garbage-collected, with the next request (or `remote.flush()`), never by a call from inside the
garbage collector. Refusals raise `tfppml.errors.PolicyDenied` (a PermissionError) naming the policy rule.

Example:
    >>> remote = connect(cluster, worker="hospital", identity="analyst")   # doctest: +SKIP
    >>> (send([1.0, 2.0], remote) + send([3.0, 4.0], remote)).get()       # doctest: +SKIP
    array([4., 6.])
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from tfppml.errors import PartyUnavailableError, PolicyDenied
from tfppml.net.certs import Identity
from tfppml.net.client import RemoteParty
from tfppml.net.config import ClusterConfig, load_config
from tfppml.remote import compiling
from tfppml.remote.dp_pointer import RELEASE_FACTS, DpReleases

if TYPE_CHECKING:  # pragma: no cover
    from tfppml.net.cluster import Cluster

__all__ = ["ModelPointer", "PolicyDenied", "Pointer", "Remote", "connect", "send"]


class Remote:
    """A connection to one data-owner worker as one identity. Make it with `connect`.

    Args:
      config: The cluster configuration.
      worker: The worker's party name.
      identity: This client's TLS identity (an `Identity`, or a name to load from `config.cert_dir`).
      timeout: Default seconds per request (fit may take longer: it has its own `timeout`).
    """

    def __init__(
        self, config: ClusterConfig, worker: str, identity: Identity | str, timeout: float | None = None
    ) -> None:
        self._party = RemoteParty(worker, config, identity)
        self._worker = worker
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending_free: list[str] = []
        self._closed = False

    @property
    def worker(self) -> str:
        """The worker's party name."""
        return self._worker

    # -- plumbing

    def call(
        self,
        meta: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Sends one request (with any frees pending from garbage-collected pointers) and returns the reply.

        Raises:
          PolicyDenied: The worker's policy refused the request.
          tfppml.net.transport.RemoteError: The worker refused a bad request (the message says why).
          PartyUnavailableError: The worker cannot be reached.
        """
        if self._closed:
            raise ValueError(f"the connection to worker {self._worker!r} is closed")
        with self._lock:
            free, self._pending_free = self._pending_free, []
        request = dict(meta)
        if free:
            request["free"] = free
        try:
            return self._party.call(
                request, tensors, timeout=timeout if timeout is not None else self._timeout
            )
        except PartyUnavailableError:
            with self._lock:  # the worker may not have seen them: try again with the next request
                self._pending_free.extend(free)
            raise

    def _release(self, object_id: str) -> None:
        # Called by pointer finalizers, possibly inside the garbage collector: no I/O here.
        with self._lock:
            self._pending_free.append(object_id)

    def flush(self) -> int:
        """Frees on the worker the objects of pointers garbage-collected so far.

        Returns:
          How many objects the worker freed.
        """
        with self._lock:
            free, self._pending_free = self._pending_free, []
        if not free or self._closed:
            return 0
        return int(self._party.call({"op": "delete", "ids": free})[0]["deleted"])

    def _tensor(self, meta: Mapping[str, Any], tensors: Mapping[str, np.ndarray] | None = None) -> Pointer:
        info, _ = self.call(meta, tensors)
        return Pointer(self, info)

    # -- the API

    def info(self) -> dict[str, Any]:
        """The worker's name, the data sets this identity may use ({name: {"shape", "dtype"}}) and the number of
        objects it holds there."""
        return self.call({"op": "info"})[0]

    def datasets(self) -> dict[str, dict[str, Any]]:
        """The data sets this identity may use: name -> {"shape", "dtype"}."""
        return self.info()["datasets"]

    def object_count(self) -> int:
        """Live objects this identity holds on the worker (after freeing those of collected pointers)."""
        self.flush()
        return int(self.info()["objects"])

    def dataset(self, name: str) -> Pointer:
        """A pointer to the worker's data set `name`.

        Raises:
          PolicyDenied: This identity may not use it (the rule is named; whether it exists is not said).
          tfppml.net.transport.RemoteError: No such data set.
        """
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a data set name (str), got {type(name).__name__}")
        return self._tensor({"op": "dataset", "name": name})

    def send(self, value: Any) -> Pointer | ModelPointer:
        """Same as `tfppml.remote.send(value, self)`."""
        return send(value, self)

    def fit(
        self,
        model: Any,
        x: Pointer,
        y: Pointer,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        loss: Any = None,
        optimizer: Any = None,
        learning_rate: float | None = None,
        metrics: Sequence[str] | None = None,
        from_logits: bool | None = None,
        l2_norm_clip: float | None = None,
        noise_multiplier: float | None = None,
        timeout: float | None = 600.0,
    ) -> ModelPointer:
        """Trains a Keras model on the worker, where the data are; returns a pointer to the trained model.

        With a DP optimizer (``optimizer=tfppml.dp.DPSGD(...)``, or ``optimizer="dpsgd"`` with `l2_norm_clip` and
        `noise_multiplier`) the worker trains with DP-SGD on Poisson-sampled batches of expected size
        `batch_size`, charges the run's epsilon to the caller's DP budget *before* it starts (refusing it if the
        budget cannot afford it), and the trained model is a DP release: its weights may be returned under the
        ``dp`` rule.  The pointer's `privacy` says what it cost.

        Args:
          model: A `tf.keras.Model` (sent as JSON configuration + weights, never pickled) or a `ModelPointer`.
          x: Pointer to the inputs.
          y: Pointer to the targets (same number of rows).
          epochs, batch_size: As for `Model.fit` (for DP-SGD: passes and the expected batch size).
          loss, optimizer, learning_rate, metrics, from_logits, l2_norm_clip, noise_multiplier: How the worker
            compiles the model (see `tfppml.remote.compiling`): each is honoured or refused, and those not given
            come from `model.compile(...)`; ignored when `model` is a `ModelPointer` (it keeps the ones it was
            sent with).
          timeout: Seconds to wait for training.

        Returns:
          A pointer to the trained model (the sent model is left as it was).

        Raises:
          TypeError, ValueError: a compile argument the worker cannot honour (named).
          PolicyDenied, tfppml.net.transport.RemoteError: As for `call` (e.g. a layer not on the allow-list, or a
            DP budget that cannot afford the run).

        Example:
          >>> model_ptr = remote.fit(model, x_ptr, y_ptr, epochs=3, loss="mse")   # doctest: +SKIP
          >>> dp_ptr = remote.fit(model, x_ptr, y_ptr, epochs=15, batch_size=64,            # doctest: +SKIP
          ...                     optimizer=tfppml.dp.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.5, learning_rate=0.5))
          >>> dp_ptr.privacy                                                                  # doctest: +SKIP
          {'epsilon': 2.99, 'delta': 1e-05, 'epsilon_spent': 2.99}
        """
        if not isinstance(model, ModelPointer):
            model = send_model(
                model, self, loss=loss, optimizer=optimizer, learning_rate=learning_rate, metrics=metrics,
                from_logits=from_logits, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
            )  # fmt: skip
        _check_pointer(x, self, "x")
        _check_pointer(y, self, "y")
        info, _ = self.call(
            {
                "op": "fit",
                "model": model.id,
                "x": x.id,
                "y": y.id,
                "epochs": epochs,
                "batch_size": batch_size,
            },
            timeout=timeout,
        )
        return ModelPointer(self, info, model.model_json)

    def predict(self, model: ModelPointer, x: Pointer) -> Pointer:
        """Runs `model` on `x` on the worker; returns a pointer to the predictions."""
        _check_model(model, self)
        _check_pointer(x, self, "x")
        return self._tensor({"op": "predict", "model": model.id, "x": x.id})

    def evaluate(self, model: ModelPointer, x: Pointer, y: Pointer) -> Pointer:
        """Evaluates `model` on (x, y) on the worker; returns a pointer to [loss, metrics...] (see `.names`)."""
        _check_model(model, self)
        _check_pointer(x, self, "x")
        _check_pointer(y, self, "y")
        return self._tensor({"op": "evaluate", "model": model.id, "x": x.id, "y": y.id})

    def close(self) -> None:
        """Frees pending objects (best effort) and closes the connection."""
        if self._closed:
            return
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - closing: the worker may already be gone
            pass
        self._closed = True
        self._party.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pointer(DpReleases):
    """A tensor held by a worker. Arithmetic runs there and returns new pointers; `.get()` fetches the value
    if the worker's policy allows.

    Attributes:
      id: The worker's object id.
      shape: The tensor's shape.
      dtype: Its dtype name.
      label: What of the worker's data sets it holds (from the worker: "raw", "aggregate_of", "dp", "weights").
      names: For `Remote.evaluate` results: the names of the values.
      privacy: For a DP release (`dp_sum` ... `dp_quantiles`), public facts about it: "epsilon", "delta" and
        "epsilon_spent" (this identity's total, absent when only the caller's own tensors were released),
        "noise_stddev" (of the Gaussian noise per entry of the result; for quantiles, per bin of the
        histogram they are read from), "clamped" and, for quantiles, "resolution" and
        "bins". None for other pointers.
    """

    def __init__(self, remote: Remote, info: Mapping[str, Any]) -> None:
        self.remote = remote
        self.id: str = info["id"]
        self.shape: tuple[int, ...] = tuple(info.get("shape", ()))
        self.dtype: str = info.get("dtype", "")
        self.label: dict[str, Any] = dict(info.get("label", {}))
        self.names: list[str] | None = info.get("names")
        self.privacy: dict[str, Any] | None = (
            {key: info[key] for key in RELEASE_FACTS if key in info} if "noise_stddev" in info else None
        )
        self._finalizer = weakref.finalize(self, remote._release, self.id)

    def __repr__(self) -> str:
        return f"<Pointer {self.id} on {self.remote.worker!r}: {self.dtype}{list(self.shape)}>"

    # -- results

    def get(self) -> np.ndarray:
        """Fetches the value.

        Returns:
          The tensor as a NumPy array.

        Raises:
          PolicyDenied: The policy refuses to return it; the message names the rule and holds nothing of the
            data.

        Example:
          >>> x_ptr.sum(axis=0).get()   # doctest: +SKIP
        """
        return self.remote.call({"op": "get", "x": self.id})[1]["value"]

    def delete(self) -> None:
        """Frees the object on the worker now (the pointer is unusable afterwards)."""
        if self._finalizer.detach() is not None:
            self.remote.call({"op": "delete", "ids": [self.id]})

    # -- operations

    def _binary(self, fn: str, other: Any, reflected: bool = False) -> Pointer:
        other_ptr = other if isinstance(other, Pointer) else send(_as_array(other, self.dtype), self.remote)
        _check_pointer(other_ptr, self.remote, "other")
        a, b = (other_ptr, self) if reflected else (self, other_ptr)
        return self.remote._tensor({"op": "binary", "fn": fn, "a": a.id, "b": b.id})

    def __add__(self, other: Any) -> Pointer:
        return self._binary("add", other)

    def __radd__(self, other: Any) -> Pointer:
        return self._binary("add", other, reflected=True)

    def __sub__(self, other: Any) -> Pointer:
        return self._binary("sub", other)

    def __rsub__(self, other: Any) -> Pointer:
        return self._binary("sub", other, reflected=True)

    def __mul__(self, other: Any) -> Pointer:
        return self._binary("mul", other)

    def __rmul__(self, other: Any) -> Pointer:
        return self._binary("mul", other, reflected=True)

    def __truediv__(self, other: Any) -> Pointer:
        return self._binary("truediv", other)

    def __rtruediv__(self, other: Any) -> Pointer:
        return self._binary("truediv", other, reflected=True)

    def __matmul__(self, other: Any) -> Pointer:
        return self._binary("matmul", other)

    def __rmatmul__(self, other: Any) -> Pointer:
        return self._binary("matmul", other, reflected=True)

    def _unary(self, fn: str) -> Pointer:
        return self.remote._tensor({"op": "unary", "fn": fn, "x": self.id})

    def __neg__(self) -> Pointer:
        return self._unary("neg")

    def __abs__(self) -> Pointer:
        return self._unary("abs")

    def square(self) -> Pointer:
        """Elementwise square (on the worker)."""
        return self._unary("square")

    def sqrt(self) -> Pointer:
        """Elementwise square root (on the worker; float tensors)."""
        return self._unary("sqrt")

    def exp(self) -> Pointer:
        """Elementwise exponential (on the worker; float tensors)."""
        return self._unary("exp")

    def log(self) -> Pointer:
        """Elementwise natural logarithm (on the worker; float tensors)."""
        return self._unary("log")

    def _reduce(self, fn: str, axis: int | None) -> Pointer:
        return self.remote._tensor({"op": "reduce", "fn": fn, "x": self.id, "axis": axis})

    def sum(self, axis: int | None = None) -> Pointer:
        """Sum over `axis` (all axes if None). Over axis 0 of a data set's rows it is an aggregate."""
        return self._reduce("sum", axis)

    def mean(self, axis: int | None = None) -> Pointer:
        """Mean over `axis` (all axes if None); float tensors."""
        return self._reduce("mean", axis)

    def max(self, axis: int | None = None) -> Pointer:
        """Maximum over `axis` (one row's value: not an aggregate)."""
        return self._reduce("max", axis)

    def min(self, axis: int | None = None) -> Pointer:
        """Minimum over `axis` (one row's value: not an aggregate)."""
        return self._reduce("min", axis)

    def reshape(self, shape: Sequence[int]) -> Pointer:
        """Reshape (on the worker)."""
        return self.remote._tensor({"op": "reshape", "x": self.id, "shape": [int(d) for d in shape]})


class ModelPointer:
    """A Keras model held by a worker (sent, or trained there).

    Attributes:
      id: The worker's object id.
      model_json: The model's Keras JSON configuration.
      label: What of the worker's data sets it holds (e.g. {"weights": ["patients"]} once trained).
    """

    def __init__(self, remote: Remote, info: Mapping[str, Any], model_json: str) -> None:
        self.remote = remote
        self.id: str = info["id"]
        self.label: dict[str, Any] = dict(info.get("label", {}))
        #: For a model trained with DP-SGD: {"epsilon": this run's, "delta", "epsilon_spent": the caller's total}.
        self.privacy: dict[str, float] | None = (
            {key: float(info[key]) for key in ("epsilon", "delta", "epsilon_spent")} if "epsilon" in info else None
        )
        self.model_json = model_json
        self._finalizer = weakref.finalize(self, remote._release, self.id)

    def __repr__(self) -> str:
        return f"<ModelPointer {self.id} on {self.remote.worker!r}>"

    def get(self) -> Any:
        """Fetches the weights and returns a local Keras model built from the configuration this client sent.

        Raises:
          PolicyDenied: The policy does not return trained weights (rule named).
        """
        import tensorflow as tf

        meta, tensors = self.remote.call({"op": "get", "x": self.id})
        model = tf.keras.models.model_from_json(self.model_json)
        model.set_weights([tensors[f"w{i}"] for i in range(int(meta["count"]))])
        return model

    def predict(self, x: Pointer) -> Pointer:
        """`remote.predict(self, x)`."""
        return self.remote.predict(self, x)

    def evaluate(self, x: Pointer, y: Pointer) -> Pointer:
        """`remote.evaluate(self, x, y)`."""
        return self.remote.evaluate(self, x, y)

    def delete(self) -> None:
        """Frees the model on the worker now."""
        if self._finalizer.detach() is not None:
            self.remote.call({"op": "delete", "ids": [self.id]})


def connect(
    cluster_or_config: Cluster | ClusterConfig | str | os.PathLike[str],
    worker: str = "hospital",
    identity: Identity | str = "driver",
    *,
    timeout: float | None = None,
) -> Remote:
    """Connects to a data-owner worker.

    Args:
      cluster_or_config: A started `tfppml.net.cluster.Cluster`, a `ClusterConfig`, or the path of a
        cluster.json.
      worker: The worker's party name.
      identity: This client's identity: an `Identity`, or a name whose key and certificate are in the cluster's
        cert_dir. The worker's policy applies to this name (its certificate's common name).
      timeout: Default seconds per request (default: the cluster's timeout plus a margin).

    Returns:
      A `Remote`.

    Raises:
      TypeError: `cluster_or_config` is none of the above.
      ValueError: `worker` is not a party of the cluster, or the identity's files are missing.

    Example:
      >>> remote = connect("cluster.json", worker="hospital", identity="analyst")   # doctest: +SKIP
    """
    from tfppml.net.cluster import Cluster

    if isinstance(cluster_or_config, Cluster):
        config = cluster_or_config.config
    elif isinstance(cluster_or_config, ClusterConfig):
        config = cluster_or_config
    elif isinstance(cluster_or_config, (str, os.PathLike)):
        config = load_config(cluster_or_config)
    else:
        raise TypeError(
            "`cluster_or_config` must be a Cluster, a ClusterConfig or a cluster.json path, got "
            f"{type(cluster_or_config).__name__}"
        )
    return Remote(config, worker, identity, timeout)


def send(value: Any, remote: Remote) -> Pointer | ModelPointer:
    """Sends a tensor (or a Keras model) to the worker; returns a pointer to it.

    Args:
      value: A tf.Tensor, NumPy array, Python number or nested list (float32/float64/int32/int64), or a
        `tf.keras.Model` (sent as JSON configuration + weights, compiled as `model.compile` set it, else with
        mse/sgd; use `send_model` to choose).
      remote: The connection.

    Returns:
      A `Pointer` (or `ModelPointer`).

    Raises:
      TypeError: `remote` is not a `Remote`, or the dtype is not allowed (named).

    Example:
      >>> x_ptr = send(tf.constant([1.0, 2.0, 3.0, 4.0]), remote)   # doctest: +SKIP
    """
    if not isinstance(remote, Remote):
        raise TypeError(
            f"`remote` must be a tfppml.remote.Remote (from connect), got {type(remote).__name__}"
        )
    if hasattr(value, "get_weights") and hasattr(value, "to_json"):
        return send_model(value, remote)
    array = _as_array(value, None)
    return remote._tensor({"op": "put"}, {"value": array})


def send_model(model: Any, remote: Remote, **compile_args: Any) -> ModelPointer:
    """Sends a Keras model (JSON configuration + weights) with how to compile it; returns a `ModelPointer`.

    Args:
      model: The Keras model.
      remote: The connection.
      **compile_args: loss, optimizer, learning_rate, metrics, from_logits, l2_norm_clip, noise_multiplier (see
        `tfppml.remote.compiling.compile_spec`); those not given come from `model.compile(...)`, if it was.

    Raises:
      TypeError: `model` is not a Keras model, or a loss / optimizer object the worker cannot build.
      ValueError: a compile setting the worker cannot honour (named).
      tfppml.net.transport.RemoteError: A layer, activation, loss, optimizer or metric the worker does not allow.
    """
    if not (hasattr(model, "get_weights") and hasattr(model, "to_json")):
        raise TypeError(f"`model` must be a tf.keras.Model, got {type(model).__name__}")
    compile_spec = compiling.compile_spec(model, **compile_args)
    model_json = model.to_json()
    weights = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    info, _ = remote.call({"op": "put_model", "model": model_json, "compile": compile_spec}, weights)
    return ModelPointer(remote, info, model_json)


def _as_array(value: Any, dtype: str | None) -> np.ndarray:
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    array = (
        np.asarray(value)
        if dtype is None or isinstance(value, np.ndarray)
        else np.asarray(value, dtype=dtype)
    )
    if array.dtype.name not in ("float32", "float64", "int32", "int64"):
        raise TypeError(
            f"`value` has dtype {array.dtype.name}; remote tensors are float32, float64, int32 or int64"
        )
    return array


def _check_pointer(pointer: Any, remote: Remote, name: str) -> None:
    if not isinstance(pointer, Pointer):
        raise TypeError(f"`{name}` must be a Pointer, got {type(pointer).__name__}")
    if pointer.remote is not remote:
        raise ValueError(
            f"`{name}` points to another connection ({pointer.remote.worker!r}); send it here first"
        )


def _check_model(model: Any, remote: Remote) -> None:
    if not isinstance(model, ModelPointer):
        raise TypeError(f"`model` must be a ModelPointer (from send or fit), got {type(model).__name__}")
    if model.remote is not remote:
        raise ValueError("`model` points to another connection")
