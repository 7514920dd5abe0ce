"""Shared test settings."""

import os

# TensorFlow's start-up chatter (CUDA stubs, oneDNN notices) hides test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hypothesis import HealthCheck, settings  # noqa: E402

# Kernels run on a shared 2-core machine: no per-example deadline, modest example counts by default.
settings.register_profile(
    "tfppml", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tfppml"))
