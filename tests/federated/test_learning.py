"""FedAvg with secure aggregation, DP-FedAvg and Reptile builders, driven by FederatedTrainer."""

import math

import numpy as np
import pytest

from tfppml.errors import ProtocolError
from tfppml.federated import data as fdata
from tfppml.federated import learning
from tfppml.federated.runtime import install_worker_reaper

install_worker_reaper()


@pytest.fixture(scope="module")
def digits():
    (x, y), (xt, yt) = fdata.load("digits")
    parts = fdata.partition(y, 8, "dirichlet:1.0", seed=0)
    return fdata.client_datasets(x, y, parts), fdata.make_model_fn(64, 10), (xt, yt)


def _train(digits, rounds=3, **kwargs):
    cds, model_fn, (xt, yt) = digits
    trainer = learning.FederatedTrainer(cds, model_fn, clients_per_round=4, seed=1, **kwargs)
    history = [trainer.run_round() for _ in range(rounds)]
    return trainer, history, fdata.evaluate(model_fn, trainer.model_weights(), xt, yt)


def test_secure_fedavg_matches_plain_fedavg(digits):
    plain, _, (plain_loss, plain_acc) = _train(digits)
    # With the next round's key exchange overlapped in the helper process (the other secure tests run it inline).
    secure, hist, (loss, acc) = _train(digits, secure=True, overlap_key_exchange=True)
    helper = secure._helper._proc
    secure.close()
    assert helper.poll() is not None, "the key-exchange helper outlived close()"
    assert acc == plain_acc and acc > 0.5
    assert abs(loss - plain_loss) < 1e-4
    for a, b in zip(plain.model_weights().trainable, secure.model_weights().trainable):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sparse_graph_secure_fedavg_matches_plain_fedavg(digits):
    # SecAgg+ graph (each of 6 clients masks with 2 neighbours), masks expanded in TensorFlow inside TFF.
    cds, model_fn, (xt, yt) = digits
    plain = learning.FederatedTrainer(cds, model_fn, clients_per_round=6, seed=2)
    secure = learning.FederatedTrainer(
        cds, model_fn, clients_per_round=6, seed=2, secure=True, neighbours=2, precomputed_masks=False
    )
    assert secure.neighbours == 2 and secure.threshold == 3 and secure.mask_size is None
    for _ in range(2):
        plain.run_round(), secure.run_round()
    for a, b in zip(plain.model_weights().trainable, secure.model_weights().trainable):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_secure_fedavg_survives_dropouts_up_to_the_threshold_only(digits):
    cds, model_fn, _ = digits
    ok = learning.FederatedTrainer(cds, model_fn, clients_per_round=4, secure=True, dropout=0.25)
    assert ok.threshold == 3 and ok.run_round()["dropped"] == 1
    bad = learning.FederatedTrainer(cds, model_fn, clients_per_round=4, secure=True, dropout=0.5)
    with pytest.raises(ProtocolError, match="only 2 clients sent a masked input, fewer than the threshold 3"):
        bad.run_round()


# DP outside secure aggregation is also checked, faster, in test_tff_secure_agg.py.
@pytest.mark.parametrize("secure", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_dp_fedavg_reports_epsilon_every_round(digits, secure):
    _, hist, _ = _train(digits, rounds=2, dp_noise=1.0, secure=secure)
    eps = [h["epsilon"] for h in hist]
    assert 0 < eps[0] < eps[1] < math.inf
    assert eps[1] == pytest.approx(learning.dp_epsilon(2, 8, 4, 1.0, 1e-5))


def test_secure_reptile_learns(digits):
    _, hist, (loss, acc) = _train(digits, rounds=3, algorithm="reptile", secure=True, server_lr=0.5)
    assert loss < math.log(10) - 0.05  # the zero-initialised model starts at log(10)


def test_argument_errors_name_the_argument(digits):
    cds, model_fn, _ = digits
    with pytest.raises(ValueError, match=r"algorithm must be one of \('fedavg', 'reptile'\), got 'sgd'"):
        learning.FederatedTrainer(cds, model_fn, algorithm="sgd")
    with pytest.raises(ValueError, match=r"clients_per_round must be an int in \[1, 8\].*got 9"):
        learning.FederatedTrainer(cds, model_fn, clients_per_round=9)
    with pytest.raises(ValueError, match=r"neighbours must be None, 'auto' or an even int in \[2, 3\], got 3"):
        learning.FederatedTrainer(cds, model_fn, clients_per_round=4, secure=True, neighbours=3)
    with pytest.raises(ValueError, match=r"neighbours applies to secure aggregation only \(secure=True\), got neighbours=2"):
        learning.FederatedTrainer(cds, model_fn, clients_per_round=4, neighbours=2)
    with pytest.raises(ValueError, match=r"meta_step_size must be in \(0, 1\], got 2"):
        learning.build_reptile(model_fn, meta_step_size=2)
    with pytest.raises(ValueError, match=r"partition must be 'iid' or 'dirichlet:ALPHA'.*got 'dirichlet:x'"):
        fdata.partition(np.zeros(10), 2, "dirichlet:x")
