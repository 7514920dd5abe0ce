"""A deliberately weakened remote worker for the controls in test_selectors.py: row certification survives every
elementwise function of the data (the worker before issue #18).  Loaded by a worker process as
"weakened_service:make_service" with this directory on PYTHONPATH; never part of the package."""

from tfppml.remote import policy
from tfppml.remote.service import make_service as _make_service


def make_service(*args, **kwargs):
    policy.Label.transformed = lambda self: self  # a sum of exp(...) of the data counts as an aggregate again
    return _make_service(*args, **kwargs)


def make_unlimited_service(*args, **kwargs):
    """The worker before issue #18's limits: nothing is reserved or sized before it is computed or built."""
    import contextlib

    from tfppml.remote import limits, model_ops
    from tfppml.remote.sizing import ModelSize

    limits.Usage.reserve = lambda self, *a, **k: contextlib.nullcontext()
    model_ops.size_spec = lambda spec: ModelSize(0, 0, 0, (), (), 4, 0)
    model_ops.ModelOps._check_model = lambda self, *a, **k: None
    model_ops._check_shapes = lambda *a, **k: None  # nothing is sized, so there is no shape to compare with
    import dataclasses

    from tfppml.remote import service

    limits_of = service.RemoteService._limits_of
    service.RemoteService._limits_of = lambda self, caller: (
        dataclasses.replace(limits_of(self, caller)[0], max_object_bytes=1 << 62), limits_of(self, caller)[1]
    )  # nor is a stored result's size checked after the fact
    # A weightless request then passes the weight count (0 == 0) and the model is built before anything else.
    return _make_service(*args, **kwargs)


def make_locked_service(*args, **kwargs):
    """The worker before issue #18's limits: every Keras loop runs under one worker-wide lock."""
    import threading

    from tfppml.remote import model_ops

    lock = threading.RLock()

    def locked(method):
        def run(self, *a, **k):
            with lock:
                return method(self, *a, **k)

        return run

    for name in ("_op_fit", "_op_predict", "_op_evaluate"):
        setattr(model_ops.ModelOps, name, locked(getattr(model_ops.ModelOps, name)))
    return _make_service(*args, **kwargs)


def make_eager_free_service(*args, **kwargs):
    """The worker before the red team's finding: deleting an object uncounts its bytes at once, even while a
    running request still computes with it."""
    from tfppml.remote import service

    def free(self, caller, ids):
        count = 0
        with self._lock:
            for object_id in ids:
                obj = self._objects.pop(object_id, None)
                if obj is not None:
                    self._usage.remove(caller, obj.nbytes)
                    count += 1
        return count

    service.RemoteService._free = free
    service.RemoteService._release = lambda self: None
    return _make_service(*args, **kwargs)


def make_unchecked_shapes_service(*args, **kwargs):
    """The worker before the red team's finding: x is not compared with the model's declared input shape."""
    from tfppml.remote import model_ops

    model_ops._check_shapes = lambda *a, **k: None
    return _make_service(*args, **kwargs)
