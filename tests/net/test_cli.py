"""`tfppml worker` argument and start-up errors (the running worker is covered by test_cluster.py)."""

import pytest

from tfppml.cli import main

from .conftest import loopback_config


def test_worker_reports_bad_config(tmp_path, capsys):
    assert (
        main(["worker", "--name", "server0", "--config", str(tmp_path / "missing.json"), "--service", "echo"])
        == 2
    )
    assert "cannot read cluster config" in capsys.readouterr().err


def test_worker_reports_unknown_party_and_service(cert_dir, tmp_path, capsys):
    path = loopback_config(cert_dir).save(tmp_path / "cluster.json")
    assert main(["worker", "--name", "server7", "--config", str(path), "--service", "echo"]) == 2
    assert "`name` must be one of the cluster's parties" in capsys.readouterr().err
    assert main(["worker", "--name", "server0", "--config", str(path), "--service", "nope"]) == 2
    assert "unknown service 'nope'" in capsys.readouterr().err
    assert main(["worker", "--name", "server0", "--config", str(path), "--option", "novalue"]) == 2
    assert "--option must be KEY=VALUE" in capsys.readouterr().err


def test_worker_requires_name_and_config():
    with pytest.raises(SystemExit):
        main(["worker", "--config", "cluster.json"])
