"""The model operations of the remote worker (put_model, fit, predict, evaluate), sized and limited before they run.

Every model is sized from its configuration before it is built (`tfppml.remote.sizing`): its parameters, its
activations per example and its arithmetic, checked against the caller's limits (`tfppml.remote.limits`) with the
rows, the batch size and the epochs of the request.  The Keras loops run with a deadline (``max_seconds``) and
without any worker-wide lock: one identity's long fit does not hold back another identity's requests.  Only the
building of a model (bounded by ``max_params`` and the layer count) and the uses of one built model are
serialised.

A model sent with put_model is built once. The models fit from it share that built Keras model, each object
keeping its own weights (set on the shared model before each use, under its lock): TensorFlow keeps 2-4 MiB
per newly built and traced model that nothing frees, so rebuilding for every fit grew the worker without bound.
The optimizer's state is reset before each fit, as a fresh build had it. A shared model lives as long as any
object that runs on it; each object counts its weights, its optimizer's state and its own copy of the weights.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from tfppml.errors import PolicyDenied, QuotaExceeded
from tfppml.remote.ledger import cost, dp_sgd
from tfppml.remote.limits import Deadline, Limits, check_flops
from tfppml.remote.policy import Label
from tfppml.remote.models import DP_OPTIMIZERS, build_model, check_compile, model_bytes, size_spec
from tfppml.remote.provenance import StoredObject, paired_label

if TYPE_CHECKING:  # pragma: no cover
    from tfppml.remote.sizing import ModelSize

__all__ = ["ModelOps", "SharedModel"]

Message = tuple[dict[str, Any], dict[str, np.ndarray]]

#: Keras's batch size for predict and evaluate (the worker uses it for the activation estimate too).
INFERENCE_BATCH = 32
#: A training step's arithmetic relative to its forward pass (forward, and backward for inputs and weights).
TRAINING_FLOPS_FACTOR = 3


class SharedModel:
    """A built, compiled Keras model and the lock that serialises its uses; `current` is the object whose
    weights it holds now."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.current: StoredObject | None = None

    def load(self, obj: StoredObject) -> Any:
        """The Keras model with `obj`'s weights (call with `lock` held)."""
        if self.current is not obj:
            self.model.set_weights(obj.weights)
            self.current = obj
        return self.model

    def reset_optimizer(self) -> None:
        """Zeroes the optimizer's state (iterations, moments, accumulators): a fit starts as on a fresh build."""
        import tensorflow as tf

        for variable in self.model.optimizer.variables:
            variable.assign(tf.zeros_like(variable))


def _object_bytes(size: ModelSize, optimizer: str) -> int:
    """What a model object holds: its share of a built model (weights and optimizer state) and its own weights."""
    return model_bytes(size, optimizer) + size.param_bytes


class ModelOps:
    """Model operations of `tfppml.remote.service.RemoteService` (a mixin: it uses the service's object store,
    policy, ledger and limits)."""

    _build_lock: threading.Lock

    def _check_model(self, size: ModelSize, limits: Limits, rule: str, batch: int, training: bool,
                     dp: bool = False) -> None:  # fmt: skip
        """Refuses a model (or a loop over it) whose size passes the caller's limits, before anything is built."""
        if size.params > limits.max_params:
            raise QuotaExceeded(
                f"policy rule '{rule}.limits.max_params': the model declares {size.params} parameters (from its "
                f"configuration), more than the {limits.max_params} one model may have"
            )
        activations = size.batch_bytes(batch, training, per_example_grads=dp)
        if activations > limits.max_activation_bytes:
            raise QuotaExceeded(
                f"policy rule '{rule}.limits.max_activation_bytes': a batch of {batch} through this model is "
                f"estimated at {activations} bytes of activations (from its configuration: {size.activations} "
                f"values per example), more than {limits.max_activation_bytes}"
            )

    def _op_put_model(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        spec = {"model": meta.get("model"), "compile": check_compile(meta.get("compile", {}))}
        limits, rule = self._limits_of(caller)
        size = size_spec(spec)
        self._check_model(size, limits, rule, batch=1, training=False)
        sent = sum(int(np.size(t)) for t in tensors.values())
        if sent != size.params:
            raise ValueError(
                f"the model's configuration declares {size.params} weights; the tensors sent hold {sent}"
            )
        held = _object_bytes(size, spec["compile"]["optimizer"])
        with self._reserve(caller, held, limits, rule, "the model"):
            with self._build_lock:
                model = build_model(spec, tensors)
            obj = StoredObject(caller, "model", Label(), model=SharedModel(model), model_spec=spec, held=held,
                               size=size, weights=model.get_weights())  # fmt: skip
            obj.model.current = obj
            return self._store(caller, obj, record), {}

    def _op_fit(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        import tensorflow as tf

        source = self._lookup(caller, meta, "model", "model", record)
        x = self._lookup(caller, meta, "x", "tensor", record)
        y = self._lookup(caller, meta, "y", "tensor", record)
        limits, rule = self._limits_of(caller)
        epochs = _positive_int(meta.get("epochs", 1), "epochs", 1 << 20)
        batch_size = _positive_int(meta.get("batch_size", 32), "batch_size", 1 << 20)
        _check_rows(x, y)
        record.update(epochs=epochs, batch_size=batch_size)
        if epochs > limits.max_epochs:
            raise QuotaExceeded(
                f"policy rule '{rule}.limits.max_epochs': a fit may run at most {limits.max_epochs} epochs, "
                f"got {epochs}"
            )
        spec = source.model_spec
        size = source.size
        _check_shapes(size, x, y)
        private = spec["compile"]["optimizer"] in DP_OPTIMIZERS
        rows = int(x.value.shape[0])
        self._check_model(size, limits, rule, batch=min(batch_size, rows), training=True, dp=private)
        check_flops(TRAINING_FLOPS_FACTOR * size.flops * rows * epochs, limits, rule,
                    f"a fit of {epochs} epoch(s) over {rows} rows")  # fmt: skip
        held = source.nbytes
        with self._reserve(caller, held, limits, rule, "the trained model"):
            reply: dict[str, Any] = {}
            if private:
                self._check_room(caller, limits, rule)  # a model that could not be stored must not be paid for
                reply = self._charge_training(caller, meta, x, y, spec["compile"], epochs, batch_size, record)
            deadline = Deadline(limits.max_seconds, rule, f"this fit ({epochs} epoch(s))")
            shared = source.model
            data_label = x.label.join(y.label)
            # A DP-SGD model is a DP release of the data (releasable under the dp rule, like a noised sum).
            label = source.label.join(data_label.noised() if private else data_label.trained())
            with shared.lock:
                trained = self._train(shared, source, x, y, private, epochs, batch_size, rows, deadline)
                obj = StoredObject(caller, "model", label, model=shared, model_spec=spec, held=held, size=size,
                                   weights=trained)  # fmt: skip
                shared.current = obj  # the shared model holds the trained weights
            return {**self._store(caller, obj, record), **reply}, {}

    def _train(self, shared: SharedModel, source: StoredObject, x: StoredObject, y: StoredObject, private: bool,
               epochs: int, batch_size: int, rows: int, deadline: Any) -> list[np.ndarray]:  # fmt: skip
        """Trains the shared model from `source`'s weights (lock held); returns the trained weights. The shared
        model holds them afterwards, but belongs to no object until one is stored with them."""
        import tensorflow as tf

        model = shared.load(source)
        shared.reset_optimizer()
        shared.current = None  # from the first step on, its weights are no object's
        try:
            if private:
                import tfppml.dp
                from tfppml.dp.accounting import steps_for

                # Poisson sampling, as the accountant assumes: each row joins each step's batch with
                # probability batch_size / n, for ceil(epochs * n / batch_size) steps (fresh randomness).
                data = tfppml.dp.poisson_sample(
                    x.value, y.value, batch_size=batch_size, steps=steps_for(rows, batch_size, epochs)
                )
                model.fit(data, epochs=1, verbose=0, callbacks=[deadline])
            else:
                model.fit(x.value, y.value, epochs=epochs, batch_size=batch_size, verbose=0,
                          callbacks=[deadline])  # fmt: skip
        except (ValueError, tf.errors.InvalidArgumentError) as err:
            raise ValueError(
                f"fit failed on x {list(x.value.shape)} and y {list(y.value.shape)}: {_first_line(err)}"
            ) from None
        return model.get_weights()

    def _charge_training(
        self, caller: str, meta: dict, x: StoredObject, y: StoredObject, comp: dict, epochs: int, batch_size: int,
        record: dict,
    ) -> dict[str, Any]:
        """Checks that a DP-SGD run's rows are one individual each and charges its epsilon before it starts."""
        pair = paired_label(x, y)
        raw = [o for o in (x, y) if o.label.raw]
        certified = bool(raw) and all(o.label.rows == x.value.shape[0] for o in raw)
        if not certified or pair.aggregate_of or pair.weights or pair.dp:
            rules = self._policy.rules_for(caller)
            raise PolicyDenied(
                f"policy rule '{rules.name}.dp' denies DP training on objects {meta.get('x')} and {meta.get('y')}: "
                "their rows are not certified to be one individual each (mixed with a row-varying tensor, "
                "reshaped, aggregated, from a trained model, or no data set at all), so the accounting's "
                "adjacency does not hold"
            )
        n = int(x.value.shape[0])
        if batch_size > n:
            raise ValueError(f"`batch_size` must be at most the {n} rows for DP training, got {batch_size}")
        datasets = sorted(pair.datasets)
        budgets = self._policy.dp_budgets(caller, datasets)
        event = dp_sgd(n=n, batch_size=batch_size, noise_multiplier=comp["noise_multiplier"], epochs=epochs)
        mine = budgets[0]  # the identity's cap: its delta is the one the caller is told about
        epsilon = cost(event, mine.delta)
        what = (f"this DP training (epsilon={epsilon:.3g} for {epochs} epoch(s) of {n} rows at batch size "
                f"{batch_size}, noise multiplier {comp['noise_multiplier']:g}; raise the noise multiplier or train "
                "fewer epochs)")  # fmt: skip
        spent = self._ledger.charge(caller, datasets, event, budgets, what)
        record.update(dp_training=event, epsilon=epsilon, epsilon_spent=spent)
        return {"epsilon": epsilon, "delta": mine.delta, "epsilon_spent": spent[mine.name]}

    def _inference(self, caller: str, source: StoredObject, x: StoredObject, what: str,
                   y: StoredObject | None = None) -> tuple[Limits, str]:  # fmt: skip
        _check_shapes(source.size, x, y)
        limits, rule = self._limits_of(caller)
        rows = int(x.value.shape[0]) if x.value.ndim else 1
        self._check_model(source.size, limits, rule, batch=min(INFERENCE_BATCH, rows), training=False)
        check_flops(source.size.flops * rows, limits, rule, f"{what} over {rows} rows")
        return limits, rule

    def _op_predict(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        import tensorflow as tf

        source = self._lookup(caller, meta, "model", "model", record)
        x = self._lookup(caller, meta, "x", "tensor", record)
        limits, rule = self._inference(caller, source, x, "predict")
        rows = int(x.value.shape[0]) if x.value.ndim else 1
        out = rows * int(np.prod(source.size.output_shape)) * source.size.itemsize
        with self._reserve(caller, out, limits, rule, "the predictions"), source.model.lock:
            try:
                value = np.asarray(source.model.load(source).predict(
                    x.value, verbose=0, batch_size=INFERENCE_BATCH,
                    callbacks=[Deadline(limits.max_seconds, rule, "this predict")]))  # fmt: skip
            except (ValueError, tf.errors.InvalidArgumentError) as err:
                raise ValueError(f"predict failed on x {list(x.value.shape)}: {_first_line(err)}") from None
            # One output row per input row, computed from that row alone (and the model): the rows stay the data
            # set's rows. (A DP release still refuses them when the model was trained on the data.)
            # A model's output is a non-linear function of the row (a crafted model is a row selector).
            label = x.label.join(source.label).transformed()
            if x.label.rows is not None and value.ndim >= 1 and value.shape[0] == x.label.rows:
                label = label.with_rows(x.label.rows)
            return self._store(caller, StoredObject(caller, "tensor", label, value=value), record), {}

    def _op_evaluate(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        import tensorflow as tf

        source = self._lookup(caller, meta, "model", "model", record)
        x = self._lookup(caller, meta, "x", "tensor", record)
        y = self._lookup(caller, meta, "y", "tensor", record)
        _check_rows(x, y)
        limits, rule = self._inference(caller, source, x, "evaluate", y)
        with source.model.lock:
            try:
                result = source.model.load(source).evaluate(
                    x.value, y.value, verbose=0, return_dict=True, batch_size=INFERENCE_BATCH,
                    callbacks=[Deadline(limits.max_seconds, rule, "this evaluate")])  # fmt: skip
            except (ValueError, tf.errors.InvalidArgumentError) as err:
                raise ValueError(f"evaluate failed on x {list(x.value.shape)}: {_first_line(err)}") from None
        names = list(result)
        value = np.asarray([float(result[key]) for key in names], dtype=np.float64)
        data = paired_label(x, y).transformed().aggregated()  # a mean loss is a sum of non-linear row values
        label = data.join(source.label)
        info = self._store(caller, StoredObject(caller, "tensor", label, value=value), record)
        return {**info, "names": names}, {}


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]


def _positive_int(value: Any, key: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"`{key}` must be an int in [1, {high}], got {value!r}")
    return value


def _check_shapes(size: ModelSize, x: StoredObject, y: StoredObject | None) -> None:
    """Refuses `x` (and `y`) whose example shape is not the model's. Keras compares only as many leading
    dimensions as the model declares and Dense layers take inputs of any rank, so a (rows, 4, 400, 4) `x` ran
    through an Input((4,)) model, 20 times the sized predictions: every estimate must describe what runs."""
    if x.value.ndim < 1 or tuple(x.value.shape[1:]) != tuple(size.input_shape):
        raise ValueError(
            f"`x` must have shape [rows, {', '.join(map(str, size.input_shape))}] (the model's input), got "
            f"{list(x.value.shape)}"
        )
    if y is None:
        return
    out = tuple(size.output_shape)
    # The model's output shape, or class indices for it (sparse losses): nothing that broadcasts wider.
    allowed = {out, out[:-1], out[:-1] + (1,)}
    if y.value.ndim < 1 or tuple(y.value.shape[1:]) not in allowed:
        raise ValueError(
            f"`y` must have shape [rows, {', '.join(map(str, out))}] (the model's output) or [rows"
            f"{''.join(', ' + str(d) for d in out[:-1])}] / [..., 1] for class indices, got {list(y.value.shape)}"
        )


def _check_rows(x: StoredObject, y: StoredObject) -> None:
    if x.value.ndim < 1 or y.value.ndim < 1 or x.value.shape[0] != y.value.shape[0]:
        raise ValueError(
            "`x` and `y` must have the same number of rows, got shapes "
            f"{list(x.value.shape)} and {list(y.value.shape)}"
        )
