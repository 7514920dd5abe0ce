"""A crafty analyst rebuilds data from "aggregates over >= k rows" with data-dependent selectors (issue #18,
attack 1): ``sum(1 / (1 + exp(s * (x - t))))`` counts the rows below `t` exactly once `s` is steep, a bisection on
`t` finds the smallest value, and ``sum(x * indicator)`` reads it exactly.  Row certification must not survive
non-linear functions of the data: the real worker refuses those sums as row-level data; the control shows the
same analyst reading the value against a worker whose certification survives them."""

import os
from pathlib import Path

import numpy as np
import pytest

import tfppml.remote
from tfppml.errors import PolicyDenied

from .conftest import IDENTITIES, MAX_MESSAGE_BYTES, write_setup
from tfppml.net.cluster import Cluster, Worker

STEEP = 1e5  # exp overflows to inf (indicator 0) or underflows to 0 (indicator 1) except within ~1e-3 of t


def below(x, t: float):
    """Per-row indicator of x < t (as a [rows, 1] pointer) built from allowed operations only."""
    return 1.0 / (1.0 + ((x - t) * STEEP).exp())


def smallest_value(x, low: float, high: float, steps: int = 18) -> float:
    """The column's minimum to ~1e-4 by bisection on counts, then its exact value as a masked sum."""
    for _ in range(steps):
        mid = (low + high) / 2
        if float(below(x, mid).sum().get()) >= 0.5:
            high = mid
        else:
            low = mid
    one_row = below(x, high + 5e-4)
    assert float(one_row.sum().get()) == pytest.approx(1.0, abs=1e-6)
    return float((x * one_row).sum().get())


def _column(remote):
    return remote.dataset("patients") @ tfppml.remote.send(np.array([[1.0], [0.0], [0.0], [0.0]]), remote)


def test_real_worker_refuses_sums_of_data_dependent_selectors(hospital, data):
    cluster, _ = hospital
    with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as analyst:
        column = _column(analyst)
        # Linear aggregates stay releasable under the k-row rule ...
        assert float(column.sum().get()) == pytest.approx(data["patients"][:, 0].sum())
        # ... but a sum of a non-linear function of the rows is row-level data.
        for pointer in (below(column, 50.0).sum(), (column * column).sum(), column.exp().mean(),
                        abs(column - 50.0).sum(), (1.0 / column).sum()):
            with pytest.raises(PolicyDenied, match=r"raw_read.*non-linear function") as info:
                pointer.get()
            assert str(data["patients"][0, 0])[:6] not in str(info.value)
        with pytest.raises(PolicyDenied, match="raw_read"):
            smallest_value(column, 0.0, 200.0)  # the attack of the control below, refused at its first count
        # The rows stay certified for a DP release: clipping bounds each row's part whatever the function.
        noisy = below(column, 50.0).dp_sum(lower=0.0, upper=1.0, epsilon=0.5).get()
        assert np.isfinite(noisy).all()


def test_control_a_weakened_worker_gives_up_the_smallest_value_exactly(tmp_path, monkeypatch, data):
    here = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(here)  # the driver checks that the service module exists
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p))
    options = write_setup(tmp_path)
    weakened = Cluster(Worker("127.0.0.1:0", name="hospital"), service="weakened_service:make_service",
                       service_options=options, identities=IDENTITIES, max_message_bytes=MAX_MESSAGE_BYTES,
                       timeout=60.0)
    with weakened:
        with tfppml.remote.connect(weakened, worker="hospital", identity="analyst") as analyst:
            value = smallest_value(_column(analyst), 0.0, 200.0)
    assert value == pytest.approx(data["patients"][:, 0].min(), abs=1e-9)
