"""A worker restart continues the audit chain and the DP budgets; a tampered log stops the worker from starting."""

import pytest

import tfppml.remote
from tfppml.cli import main
from tfppml.errors import PolicyDenied
from tfppml.remote.audit import AuditLogError, read_entries, verify_log
from tfppml.remote.service import make_service

from .conftest import make_hospital, write_setup


def test_restart_keeps_chain_and_budget_and_refuses_a_tampered_log(tmp_path, capsys):
    options = write_setup(tmp_path)
    with make_hospital(options) as cluster:
        with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as remote:
            x = remote.dataset("patients")
            x.mean(axis=0).get()
            x.dp_mean(lower=0, upper=100, epsilon=1.5).get()
    before = verify_log(options["audit"])
    assert before.entries >= 4

    with make_hospital(options) as cluster:
        config = cluster.config
        with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as remote:
            x = remote.dataset("patients")
            with pytest.raises(PolicyDenied):
                x.get()
            # The budget spent before the restart still counts: 1.5 + 1.5 > 2.0.
            with pytest.raises(PolicyDenied, match=r"dp\.epsilon_budget.*spent so far: 1\.5"):
                x.dp_mean(lower=0, upper=100, epsilon=1.5)
    after = verify_log(options["audit"])
    assert after.entries > before.entries
    entries = [entry for _, entry in read_entries(options["audit"])]
    assert entries[before.entries]["prev"] == before.head and entries[before.entries]["seq"] == before.entries
    assert main(["audit", "verify", options["audit"]]) == 0

    lines = open(options["audit"]).read().splitlines()
    lines[2] = lines[2].replace('"analyst"', '"auditor"')
    open(options["audit"], "w").write("\n".join(lines) + "\n")
    assert main(["audit", "verify", options["audit"]]) == 1
    assert "entry 3 (line 3)" in capsys.readouterr().err
    # A worker does not extend a tampered log: its service refuses to start, naming the entry. (Checked on the
    # service factory that `tfppml worker` calls, to spare a third worker start-up.)
    with pytest.raises(AuditLogError, match=r"entry 3 \(line 3\)"):
        make_service("hospital", config, None, options=options)
