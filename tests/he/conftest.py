"""Shared CKKS contexts (key generation takes ~0.3 s; Galois keys for all powers of two ~40 MB)."""

import pytest

from tfppml import he


@pytest.fixture(scope="session")
def ctx() -> he.CKKSContext:
    """The issue's default parameters: N=8192, [60, 40, 40, 60], scale 2**40 (depth 2, 4096 slots)."""
    return he.CKKSContext(8192, [60, 40, 40, 60], 2.0**40)


@pytest.fixture(scope="session")
def other_ctx() -> he.CKKSContext:
    """Same parameters, another key set."""
    return he.CKKSContext(8192, [60, 40, 40, 60], 2.0**40, galois_steps=[])
