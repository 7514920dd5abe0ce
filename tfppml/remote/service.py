"""The data-owner worker service ("remote"): data sets and objects stay here; drivers get pointers.

Started by the network layer's worker command::

    tfppml worker --name hospital --config cluster.json --service remote \\
        --option data=patients.npz --option policy=policy.yaml --option audit=hospital-audit.log \\
        --option audit_key=/etc/tfppml/hospital-audit.key

Options (all ``--option KEY=VALUE``):

- ``data``: an .npz file; each array is a data set named by its key (optional).
- ``policy``: a policy YAML file (see `tfppml.remote.policy`); without it no data set may be used.
- ``audit_key``: the audit key file (required; `tfppml audit keygen PATH` makes one): it authenticates the audit
  log and the privacy ledger, so keep it outside the log's directory, readable by the worker's user only.
- ``audit``: the audit log (default ``<worker name>-audit.log`` in the working directory; the privacy ledger is
  ``<audit log>.ledger`` beside it). Paths are taken
  relative to the worker's working directory: a `tfppml.net.cluster.Cluster` runs its workers in a temporary
  directory that is deleted at stop, so give it absolute paths, the audit log's above all.
- ``max_object_bytes``, ``max_objects``, ``max_held_bytes``, ``max_concurrent``, ``max_seconds``, ``max_flops``,
  ``max_epochs``, ``max_params``, ``max_activation_bytes``: the worker's default resource limits per identity
  (see `tfppml.remote.limits`); the policy file's ``limits`` override them.
- ``max_worker_rss_bytes``: a ceiling on the whole worker process's resident memory (default 80% of the
  machine's; 0 turns it off). Past it, every request that could allocate is refused (info, get and delete still
  work) until the owner restarts the worker. It is a backstop, not a per-identity limit: TensorFlow keeps
  memory per Keras loop (~0.25 MiB) and per newly built model (2-4 MiB) that no object accounts for and nothing
  frees, so a stream of fits would otherwise grow the worker until the kernel kills it.

Requests (meta "op"; a request may also carry "free": [object ids] to delete first, which is how the client's
pointer finalizers release objects without calling out of a garbage collector):

==============  ==========================================================================================
info            the data sets the caller may use (name, shape, dtype) and its live object count
dataset         {"name"} -> a pointer to a data set
put             tensor "value" -> a pointer
put_model       {"model": JSON config, "compile": {...}} + tensors "w0".."wN" -> a model pointer
binary          {"fn": add|sub|mul|truediv|matmul, "a", "b"} -> a pointer
unary           {"fn": neg|abs|square|sqrt|exp|log, "x"} -> a pointer
reduce          {"fn": sum|mean|max|min, "x", "axis": int|null} -> a pointer
reshape         {"x", "shape"} -> a pointer
dp              {"fn": sum|mean|count|histogram|quantiles, "x", "epsilon", ...} -> a DP release (`releases`)
fit             {"model", "x", "y", "epochs", "batch_size"} -> a pointer to the trained model (a new object)
predict         {"model", "x"} -> a pointer
evaluate        {"model", "x", "y"} -> a pointer to [loss, metrics...]
get             {"x"} -> the value (or the model's weights), if the policy allows it
delete          {"ids"} -> how many were freed
==============  ==========================================================================================

Only the operations above run; models arrive as a Keras JSON configuration whose every class name and
activation is on an allow-list (no Lambda layers, no custom objects) plus weight arrays, never as pickle or h5.
Every request is written to the audit log (who, op, object ids, allowed/denied and the rule, result size).
Objects belong to the identity that created them; another identity's ids are "unknown" to a caller.

Each object carries a `Label` (its provenance) computed from shapes and operations only. Row-level values of a
data set may be aggregated (sum/mean over axis 0) only while the object's leading axis is still certified to be
the data set's rows, one individual each: combining them elementwise with a client tensor that varies along the
rows (a mask), reshaping the row axis away or multiplying them from the left (a row selector) removes the
certification, and a later "aggregate" of such an object stays row-level data.

Example:
    >>> service = make_service("hospital", config, channel, options={"data": "d.npz"})   # doctest: +SKIP
    >>> service.handle("analyst", {"op": "dataset", "name": "patients"}, {})              # doctest: +SKIP
    ({'id': 'o3f...', 'shape': [100, 4], 'dtype': 'float64', 'kind': 'tensor', ...}, {})
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tfppml.errors import PolicyDenied, QuotaExceeded
from tfppml.net.channel import Channel
from tfppml.net.config import ClusterConfig
from tfppml.remote.audit import AuditLog, load_key
from tfppml.remote.ledger import PrivacyLedger, gaussian
from tfppml.remote.limits import DEFAULT_LIMITS, FIELDS, Limits, Usage, check_flops, parse_limits
from tfppml.remote.model_ops import ModelOps
from tfppml.remote.models import check_model_config
from tfppml.remote.policy import Label, Policy, calibrate_gaussian
from tfppml.remote.provenance import (
    StoredObject,
    elementwise_label,
    matmul_label,
    matmul_shape,
    unary_label,
)

__all__ = ["RemoteService", "check_model_config", "make_service"]

_log = logging.getLogger(__name__)

Message = tuple[dict[str, Any], dict[str, np.ndarray]]

#: dtypes remote tensors may have.
TENSOR_DTYPES = ("float32", "float64", "int32", "int64")

_BINARY = ("add", "sub", "mul", "truediv", "matmul")
_UNARY = ("neg", "abs", "square", "sqrt", "exp", "log")
_REDUCE = ("sum", "mean", "max", "min")


class RemoteService(ModelOps):
    """The "remote" service (see the module docstring).

    Args:
      name: The worker's party name.
      datasets: Data set name -> array.
      policy: The policy to enforce.
      audit: The audit log.
      ledger: The privacy ledger (DP charges per data set and identity).
      limits: The worker's default resource limits per identity (the policy's ``limits`` override them).

    Raises:
      ValueError: A data set has a dtype that is not allowed.
    """

    def __init__(
        self,
        name: str,
        datasets: dict[str, np.ndarray],
        policy: Policy,
        audit: AuditLog,
        ledger: PrivacyLedger,
        *,
        limits: Limits = DEFAULT_LIMITS,
        max_worker_rss_bytes: int = 0,
    ) -> None:
        self._name = name
        self._max_rss = int(max_worker_rss_bytes)
        self._datasets: dict[str, np.ndarray] = {}
        for key, array in datasets.items():
            if array.dtype.name not in TENSOR_DTYPES:
                raise ValueError(
                    f"data set {key!r} has dtype {array.dtype.name}; allowed: {', '.join(TENSOR_DTYPES)}"
                )
            array = np.ascontiguousarray(array)
            array.setflags(write=False)
            self._datasets[key] = array
        self._policy = policy
        self._audit = audit
        self._ledger = ledger
        self._limits = limits
        self._usage = Usage()
        self._objects: dict[str, StoredObject] = {}
        self._lock = threading.Lock()
        # Keras builds models through process-wide state; builds are short (bounded by max_params), the Keras
        # loops that follow hold no worker-wide lock.
        self._build_lock = threading.Lock()
        self._in_use = threading.local()  # the objects the current request (this thread) looked up
        self._ops: dict[
            str, Callable[[str, dict[str, Any], dict[str, np.ndarray], dict[str, Any]], Message]
        ] = {
            "info": self._op_info,
            "dataset": self._op_dataset,
            "put": self._op_put,
            "put_model": self._op_put_model,
            "binary": self._op_binary,
            "unary": self._op_unary,
            "reduce": self._op_reduce,
            "reshape": self._op_reshape,
            "dp": self._op_dp,
            "fit": self._op_fit,
            "predict": self._op_predict,
            "evaluate": self._op_evaluate,
            "get": self._op_get,
            "delete": self._op_delete,
        }
        if ledger.broken:
            _log.error("remote service %s refuses DP releases: %s", name, ledger.broken)

    @property
    def audit(self) -> AuditLog:
        """The audit log."""
        return self._audit

    def close(self) -> None:
        """Closes the audit log and the ledger and drops every object."""
        with self._lock:
            self._objects.clear()
            self._usage.clear()
        self._ledger.close()
        self._audit.close()

    # -- entry point

    def handle(self, caller: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Message:
        """Answers one request (see the module docstring); every request is audited.

        Raises:
          PolicyDenied: The policy refused it (the message names the rule, nothing of the data).
          LookupError: An unknown object id or data set.
          ValueError, TypeError: A bad argument (named, with what was given and expected).
        """
        op = meta.get("op")
        record: dict[str, Any] = {"who": caller, "op": op if isinstance(op, str) else repr(op)[:40]}
        self._in_use.objects = []
        try:
            freed = self._free(caller, meta.get("free", []))
            if freed:
                record["freed"] = freed
            self._policy.check_rate(caller)
            if not isinstance(op, str) or op not in self._ops:
                raise ValueError(f"`op` must be one of {sorted(self._ops)}, got {op!r}")
            if op not in _NON_ALLOCATING and self._max_rss:
                self._check_worker_memory()
            limits, rule = self._limits_of(caller)
            with self._usage.request(caller, limits, rule):
                reply = self._ops[op](caller, meta, tensors, record)
        except PolicyDenied as err:
            record.update(allowed=False, rule=_rule_of(err))
            self._audit.append(**record)
            raise
        except Exception as err:
            record.update(allowed=True, error=type(err).__name__)
            self._audit.append(**record)
            raise
        finally:
            self._release()
        record.setdefault("allowed", True)
        self._audit.append(**record)
        return reply

    def _check_worker_memory(self) -> None:
        rss = _resident_bytes()
        if rss > self._max_rss:
            raise QuotaExceeded(
                f"policy rule 'worker.max_worker_rss_bytes': the worker process holds {rss} bytes, past its "
                f"ceiling of {self._max_rss}; requests that allocate are refused until its owner restarts it "
                "(the audit log and the privacy ledger persist; info, get and delete still work)"
            )

    # -- object store

    def _limits_of(self, caller: str) -> tuple[Limits, str]:
        """The caller's resource limits and the name of its rule (for refusals)."""
        return self._policy.limits_for(caller, self._limits), self._policy.rules_for(caller).name

    def _reserve(self, caller: str, nbytes: int, limits: Limits, rule: str, what: str = "the result") -> Any:
        """Reserves a result's bytes before it is computed (see `tfppml.remote.limits.Usage.reserve`)."""
        return self._usage.reserve(caller, nbytes, limits, rule, what)

    def _check_room(self, caller: str, limits: Limits, rule: str) -> None:
        """Refuses a new object past ``max_objects`` (checked again before a DP charge: a release that could not
        be stored must not be paid for)."""
        owned = sum(1 for o in list(self._objects.values()) if o.owner == caller)
        if owned >= limits.max_objects:
            raise QuotaExceeded(
                f"policy rule '{rule}.limits.max_objects': identity {caller!r} holds {owned} objects, the most "
                "it may on this worker; delete some first"
            )

    def _store(self, caller: str, obj: StoredObject, record: dict[str, Any]) -> dict[str, Any]:
        """Stores a result computed under a reservation of its bytes (`_reserve`), or one that holds nothing new."""
        size = obj.nbytes
        limits, rule = self._limits_of(caller)
        if size > limits.max_object_bytes:  # a reservation that undercounted must not be stored
            raise ValueError(
                f"the result holds {size} bytes, more than this worker's max_object_bytes={limits.max_object_bytes} "
                f"(policy rule '{rule}.limits.max_object_bytes')"
            )
        object_id = "o" + secrets.token_hex(8)
        with self._lock:
            self._check_room(caller, limits, rule)
            self._objects[object_id] = obj
            self._usage.add(caller, size)
        record.update(result=object_id, result_bytes=size, label=obj.label.to_json())
        return self._describe(object_id, obj)

    def _describe(self, object_id: str, obj: StoredObject) -> dict[str, Any]:
        info: dict[str, Any] = {"id": object_id, "kind": obj.kind, "label": obj.label.to_json()}
        if obj.value is not None:
            info.update(shape=list(obj.value.shape), dtype=obj.value.dtype.name)
        return info

    def _lookup(
        self, caller: str, meta: dict[str, Any], key: str, kind: str, record: dict[str, Any]
    ) -> _Object:
        object_id = meta.get(key)
        record.setdefault("objects", []).append(
            object_id if isinstance(object_id, str) else repr(object_id)[:40]
        )
        if not isinstance(object_id, str):
            raise TypeError(f"`{key}` must be an object id (str), got {type(object_id).__name__}")
        with self._lock:
            obj = self._objects.get(object_id)
            uses = getattr(self._in_use, "objects", None)
            if obj is not None and obj.owner == caller and uses is not None:
                obj.users += 1  # until this request ends: deleting it meanwhile must not uncount its bytes
                uses.append(obj)
        if obj is None or obj.owner != caller:
            raise LookupError(
                f"`{key}`: unknown object {object_id[:40]!r} on worker {self._name!r} (deleted, never created, or "
                "not yours)"
            )
        if obj.kind != kind:
            raise TypeError(f"`{key}`: object {object_id} is a {obj.kind}, expected a {kind}")
        return obj

    def _free(self, caller: str, ids: Any) -> int:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise TypeError(f"`free` must be a list of object ids, got {type(ids).__name__}")
        count = 0
        with self._lock:
            for object_id in ids:
                obj = self._objects.get(object_id)
                if obj is not None and obj.owner == caller:
                    del self._objects[object_id]
                    if obj.users:  # a running request still computes with it: uncounted when it ends
                        obj.freed = True
                    else:
                        self._usage.remove(caller, obj.nbytes)
                    count += 1
        return count

    def _release(self) -> None:
        """Ends this request's uses of the objects it looked up; uncounts those deleted meanwhile."""
        used, self._in_use.objects = getattr(self._in_use, "objects", []), []
        with self._lock:
            for obj in used:
                obj.users -= 1
                if obj.users == 0 and obj.freed:
                    obj.freed = False
                    self._usage.remove(obj.owner, obj.nbytes)

    def count_objects(self, caller: str) -> int:
        """Live objects owned by `caller`."""
        with self._lock:
            return sum(1 for o in self._objects.values() if o.owner == caller)

    # -- operations

    def _op_info(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        rules = self._policy.rules_for(caller)
        datasets = {
            key: {"shape": list(array.shape), "dtype": array.dtype.name}
            for key, array in self._datasets.items()
            if key in rules.datasets
        }
        limits, _ = self._limits_of(caller)
        return {"worker": self._name, "datasets": datasets, "objects": self.count_objects(caller),
                "held_bytes": self._usage.held(caller), "limits": {k: getattr(limits, k) for k in FIELDS}}, {}  # fmt: skip

    def _op_dataset(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        name = meta.get("name")
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a data set name (str), got {type(name).__name__}")
        record["dataset"] = name
        self._policy.check_dataset(caller, name)
        if name not in self._datasets:
            raise LookupError(f"`name`: worker {self._name!r} has no data set {name!r}")
        array = self._datasets[name]
        label = Label(raw=frozenset({name}), rows=array.shape[0] if array.ndim else None)
        obj = StoredObject(caller, "tensor", label, value=array, held=0)  # a view of the data set: nothing new
        return self._store(caller, obj, record), {}

    def _op_put(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        if set(tensors) != {"value"}:
            raise ValueError(f"`put` takes exactly one tensor named 'value', got {sorted(tensors)}")
        value = _check_tensor(tensors["value"], "value")
        limits, rule = self._limits_of(caller)
        with self._reserve(caller, int(value.nbytes), limits, rule, "the tensor sent"):
            return self._store(caller, StoredObject(caller, "tensor", Label(), value=value), record), {}

    def _op_binary(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        import tensorflow as tf

        fn = meta.get("fn")
        if fn not in _BINARY:
            raise ValueError(f"`fn` of a binary op must be one of {list(_BINARY)}, got {fn!r}")
        record["fn"] = fn
        a = self._lookup(caller, meta, "a", "tensor", record)
        b = self._lookup(caller, meta, "b", "tensor", record)
        if a.value.dtype != b.value.dtype:
            raise TypeError(
                f"`{fn}` needs operands of one dtype: `a` is {a.value.dtype.name}, `b` is {b.value.dtype.name} "
                "(cast one of them before sending)"
            )
        if fn == "matmul":
            shape = matmul_shape(a.value.shape, b.value.shape)
            label = matmul_label(a, b)
        else:
            try:
                shape = np.broadcast_shapes(a.value.shape, b.value.shape)
            except ValueError:
                raise ValueError(
                    f"`{fn}`: shapes {list(a.value.shape)} (`a`) and {list(b.value.shape)} (`b`) do not broadcast"
                ) from None
            label = elementwise_label([a, b], shape, fn)
        limits, rule = self._limits_of(caller)
        elements = int(np.prod(shape, dtype=object))
        flops = 2 * a.value.shape[0] * a.value.shape[1] * b.value.shape[1] if fn == "matmul" else elements
        check_flops(flops, limits, rule, f"this {fn}")
        op = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "truediv": tf.math.truediv,
              "matmul": tf.linalg.matmul}[fn]  # fmt: skip
        # TF's truediv of integers is float64 (int32/int64) or float32 (narrower): reserve what it makes.
        itemsize = a.value.dtype.itemsize
        if fn == "truediv" and a.value.dtype.kind in "iu":
            itemsize = 8 if itemsize >= 4 else 4
        with self._reserve(caller, elements * itemsize, limits, rule, f"the result of shape {list(shape)}"):
            value = op(a.value, b.value).numpy()
            return self._store(caller, StoredObject(caller, "tensor", label, value=value), record), {}

    def _op_unary(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        import tensorflow as tf

        fn = meta.get("fn")
        if fn not in _UNARY:
            raise ValueError(f"`fn` of a unary op must be one of {list(_UNARY)}, got {fn!r}")
        record["fn"] = fn
        x = self._lookup(caller, meta, "x", "tensor", record)
        if fn in ("sqrt", "exp", "log") and x.value.dtype.kind != "f":
            raise TypeError(f"`{fn}` needs a float tensor, got {x.value.dtype.name}")
        op = {"neg": tf.negative, "abs": tf.abs, "square": tf.square, "sqrt": tf.sqrt, "exp": tf.exp,
              "log": tf.math.log}[fn]  # fmt: skip
        limits, rule = self._limits_of(caller)
        with self._reserve(caller, int(x.value.nbytes), limits, rule):
            value = op(x.value).numpy()
            return self._store(caller, StoredObject(caller, "tensor", unary_label(x, fn), value=value), record), {}

    def _op_reduce(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        import tensorflow as tf

        fn = meta.get("fn")
        if fn not in _REDUCE:
            raise ValueError(f"`fn` of a reduction must be one of {list(_REDUCE)}, got {fn!r}")
        record["fn"] = fn
        x = self._lookup(caller, meta, "x", "tensor", record)
        axis = meta.get("axis")
        ndim = x.value.ndim
        if axis is not None and (
            isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim
        ):
            raise ValueError(f"`axis` must be None or an int in [{-ndim}, {ndim}), got {axis!r}")
        record["axis"] = axis
        if fn == "mean" and x.value.dtype.kind != "f":
            raise TypeError(f"`mean` needs a float tensor, got {x.value.dtype.name} (cast before sending)")
        over_rows = axis is None or axis % max(ndim, 1) == 0
        if over_rows and fn in ("sum", "mean"):
            label = x.label.aggregated()
        elif over_rows:
            label = x.label.with_rows(None)  # max/min over the rows is one row's value, not an aggregate
        else:
            # A per-row reduction keeps the row axis; a per-row max/min is a non-linear function of the row.
            label = x.label if fn in ("sum", "mean") else x.label.transformed()
        op = {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "max": tf.reduce_max, "min": tf.reduce_min}[fn]
        kept = () if axis is None else x.value.shape[: axis % ndim] + x.value.shape[axis % ndim + 1 :]
        limits, rule = self._limits_of(caller)
        with self._reserve(caller, int(np.prod(kept, dtype=object)) * x.value.dtype.itemsize, limits, rule):
            value = np.asarray(op(x.value, axis=axis).numpy())
            return self._store(caller, StoredObject(caller, "tensor", label, value=value), record), {}

    def _op_reshape(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        x = self._lookup(caller, meta, "x", "tensor", record)
        shape = meta.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise TypeError(f"`shape` must be a list of ints, got {shape!r}")
        try:
            value = x.value.reshape(shape)
        except ValueError:
            raise ValueError(f"`shape`: cannot reshape {list(x.value.shape)} into {shape}") from None
        rows = x.label.rows
        keeps_rows = rows is not None and value.ndim >= 1 and value.shape[0] == rows
        label = x.label.with_rows(rows if keeps_rows else None)
        # A view of `x`: it holds what `x` holds (nothing for a data set), counted again while both live.
        limits, rule = self._limits_of(caller)
        with self._reserve(caller, x.nbytes, limits, rule):
            obj = StoredObject(caller, "tensor", label, value=value, held=x.nbytes)
            return self._store(caller, obj, record), {}

    def _op_dp(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        # The mechanics (argument checks, sensitivity, noise) are in tfppml.remote.releases; here the object
        # is looked up, its rows' certification checked and the release charged before it runs.
        from tfppml.remote import releases

        fn = releases.check_fn(meta.get("fn"))
        record["fn"] = fn
        x = self._lookup(caller, meta, "x", "tensor", record)
        # Every argument is checked against x's shape before anything is charged or allocated.
        release = releases.prepare(meta, x.value.shape)
        label = x.label
        if not label.public and (label.rows is None or label.aggregate_of or label.weights or label.dp):
            rules = self._policy.rules_for(caller)
            raise PolicyDenied(
                f"policy rule '{rules.name}.dp' denies a DP release of object {meta.get('x')}: its rows are not "
                "certified to be one individual each (mixed with a row-varying tensor, reshaped, aggregated, or "
                "from a trained model), so its sensitivity is unknown"
            )
        epsilon = release.epsilon
        record["epsilon"] = epsilon
        reply: dict[str, Any] = {"epsilon": epsilon}
        # Charged before the noise is drawn; a release that the budget cannot afford never happens.
        multiplier = 0.0
        self._check_room(caller, *self._limits_of(caller))
        if not label.public:
            budgets = self._policy.dp_budgets(caller, label.datasets)
            multiplier = calibrate_gaussian(epsilon, budgets[0].delta)
            spent = self._ledger.charge(
                caller, sorted(label.datasets), gaussian(multiplier), budgets, f"this release (epsilon={epsilon:g})"
            )
            record["epsilon_spent"] = spent
            reply.update(delta=budgets[0].delta, epsilon_spent=spent[budgets[0].name])
        record["noise_multiplier"] = multiplier
        value = release.run(x.value, multiplier)
        # Public facts only (epsilon, delta, the arguments and the shape), so that callers can post-process.
        reply.update(noise_stddev=multiplier * release.sensitivity * release.noise_scale, clamped=release.clamped,
                     **release.extra)  # fmt: skip
        return {**self._store(caller, StoredObject(caller, "tensor", label.noised(), value=value), record),
                **reply}, {}  # fmt: skip

    def _op_get(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        object_id = meta.get("x")
        with self._lock:
            obj = self._objects.get(object_id) if isinstance(object_id, str) else None
        kind = obj.kind if obj is not None else "tensor"
        obj = self._lookup(caller, meta, "x", kind, record)
        record["rule"] = self._policy.check_release(caller, obj.label, object_id)
        if obj.kind == "model":
            weights = {f"w{i}": w for i, w in enumerate(obj.weights)}
            record["result_bytes"] = int(sum(w.nbytes for w in weights.values()))
            return {"kind": "model", "count": len(weights)}, weights
        record["result_bytes"] = int(obj.value.nbytes)
        return {"kind": "tensor"}, {"value": obj.value}

    def _op_delete(self, caller: str, meta: dict, tensors: dict, record: dict) -> Message:
        ids = meta.get("ids", [])
        record["objects"] = ids if isinstance(ids, list) else []
        return {"deleted": self._free(caller, ids)}, {}




#: Requests that allocate nothing that stays (still served past the worker's memory ceiling).
_NON_ALLOCATING = frozenset({"info", "get", "delete"})


def _resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where it cannot be read, which turns the ceiling off)."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _default_rss_ceiling() -> int:
    """80% of the machine's memory (0 where it cannot be read)."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError):
        return 0


def _rule_of(err: PolicyDenied) -> str:
    text = str(err)
    start = text.find("policy rule '")
    if start < 0:
        return "unknown"
    start += len("policy rule '")
    return text[start : text.find("'", start)]


def _check_tensor(value: np.ndarray, key: str) -> np.ndarray:
    if value.dtype.name not in TENSOR_DTYPES:
        raise TypeError(
            f"`{key}` has dtype {value.dtype.name}; remote tensors are {', '.join(TENSOR_DTYPES)}"
        )
    return value


def make_service(
    name: str, config: ClusterConfig, channel: Channel, options: dict[str, str] | None = None
) -> RemoteService:
    """Service factory for "remote" (see the module docstring for the options).

    Raises:
      ValueError: An unknown option, an unreadable data file or policy, a broken audit log.
    """
    options = dict(options or {})
    known = {"data", "policy", "audit", "audit_key", "max_worker_rss_bytes", *FIELDS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"remote service: unknown option(s) {unknown}; known options are {sorted(known)}")
    ceiling = _default_rss_ceiling()
    if options.get("max_worker_rss_bytes") is not None:
        try:
            ceiling = int(options["max_worker_rss_bytes"])
        except ValueError:
            ceiling = -1
        if ceiling < 0:
            raise ValueError(
                "remote service: option max_worker_rss_bytes must be an int >= 0 (0: no ceiling), got "
                f"{options['max_worker_rss_bytes']!r}"
            )
    datasets: dict[str, np.ndarray] = {}
    if options.get("data"):
        path = Path(options["data"])
        try:
            with np.load(path, allow_pickle=False) as archive:
                datasets = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as err:
            raise ValueError(
                f"remote service: option data={path} is not a readable .npz file: {err}"
            ) from None
    policy = Policy.load(options["policy"]) if options.get("policy") else Policy.deny_all()
    audit_path = Path(options.get("audit") or f"{name}-audit.log")
    if not options.get("audit_key"):
        raise ValueError(
            "remote service: option audit_key=PATH is required: the audit log and the privacy ledger are "
            "authenticated with that key, kept outside the log's directory (make one with `tfppml audit keygen "
            "PATH`)"
        )
    try:
        key = load_key(options["audit_key"], log=audit_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"remote service: option audit_key: {err}") from None
    audit = AuditLog(audit_path, key)
    # Fail closed: a ledger that is missing although the log shows DP releases was deleted, not new.
    released = any(e.get("epsilon") is not None and e.get("allowed") for e in audit.entries())
    ledger = PrivacyLedger(ledger_path(audit_path), key, expected=released)
    overrides: dict[str, Any] = {}
    for key in FIELDS:
        if key in options:
            try:
                overrides[key] = float(options[key]) if key in ("max_seconds", "max_flops") else int(options[key])
            except ValueError:
                raise ValueError(f"remote service: option {key} must be a number, got {options[key]!r}") from None
    limits = DEFAULT_LIMITS.merged(parse_limits(overrides, "remote service: option"))
    _log.info(
        "remote service %s: data sets %s, policy %s, audit log %s",
        name,
        sorted(datasets),
        policy.source,
        audit.path,
    )
    return RemoteService(name, datasets, policy, audit, ledger, limits=limits, max_worker_rss_bytes=ceiling)


def ledger_path(audit: str | Path) -> Path:
    """The privacy ledger beside the audit log at `audit`."""
    audit = Path(audit)
    return audit.with_name(audit.name + ".ledger")
