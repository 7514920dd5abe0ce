"""A deliberately weakened remote worker for the controls in test_selectors.py: row certification survives every
elementwise function of the data (the worker before issue #18).  Loaded by a worker process as
"weakened_service:make_service" with this directory on PYTHONPATH; never part of the package."""

from tfppml.remote import policy
from tfppml.remote.service import make_service as _make_service


def make_service(*args, **kwargs):
    policy.Label.transformed = lambda self: self  # a sum of exp(...) of the data counts as an aggregate again
    return _make_service(*args, **kwargs)
