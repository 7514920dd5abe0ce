"""A worker restart continues the audit log and the DP budgets; a tampered log stops the worker from starting, and
a tampered or deleted privacy ledger makes it refuse DP releases (issue #18, attack 4: dropping an identity's DP
entries from the log, re-chaining and restarting used to give the whole budget back)."""

import hashlib
import json

import pytest

import tfppml.remote
from tfppml.cli import main
from tfppml.errors import PolicyDenied
from tfppml.remote.audit import GENESIS, AuditLogError, checkpoint_path, load_key, read_entries, verify_log
from tfppml.remote.service import ledger_path, make_service

from .conftest import make_hospital, write_setup


def _spend(cluster, epsilon=1.5):
    with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as remote:
        x = remote.dataset("patients")
        x.mean(axis=0).get()
        return x.dp_mean(lower=0, upper=100, epsilon=epsilon).get()


def test_restart_keeps_log_and_budget_and_refuses_a_tampered_log(tmp_path, capsys):
    options = write_setup(tmp_path)
    key = load_key(options["audit_key"])
    with make_hospital(options) as cluster:
        _spend(cluster)
    before = verify_log(options["audit"], key)
    assert before.entries >= 4

    with make_hospital(options) as cluster:
        config = cluster.config
        with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as remote:
            x = remote.dataset("patients")
            # The budget spent before the restart still counts: 1.5 + 1.5 > 2.0 (the analyst's cap).
            with pytest.raises(PolicyDenied, match=r"analyst\.dp\.epsilon_budget.*spent so far: 1\.5"):
                x.dp_mean(lower=0, upper=100, epsilon=1.5)
    after = verify_log(options["audit"], key)
    entries = [entry for _, entry in read_entries(options["audit"])]
    assert after.entries > before.entries
    assert entries[before.entries]["prev"] == before.head and entries[before.entries]["seq"] == before.entries
    assert main(["audit", "verify", options["audit"], "--key", options["audit_key"]]) == 0
    assert main(["audit", "verify", str(ledger_path(options["audit"])), "--key", options["audit_key"],
                 "--ledger"]) == 0  # fmt: skip

    lines = open(options["audit"]).read().splitlines()
    lines[2] = lines[2].replace('"analyst"', '"auditor"')
    open(options["audit"], "w").write("\n".join(lines) + "\n")
    assert main(["audit", "verify", options["audit"], "--key", options["audit_key"]]) == 1
    assert "entry 3 (line 3)" in capsys.readouterr().err
    # A worker does not extend a tampered log: its service refuses to start, naming the entry. (Checked on the
    # service factory that `tfppml worker` calls, to spare a third worker start-up.)
    with pytest.raises(AuditLogError, match=r"entry 3 \(line 3\)"):
        make_service("hospital", config, None, options=options)


def test_a_worker_without_an_audit_key_does_not_start(tmp_path):
    options = write_setup(tmp_path)
    del options["audit_key"]
    with pytest.raises(ValueError, match="option audit_key=PATH is required"):
        make_service("hospital", None, None, options=options)


@pytest.mark.parametrize("manipulation", ["deleted", "edited", "truncated"])
def test_a_tampered_or_deleted_ledger_refuses_dp_releases_instead_of_resetting(tmp_path, manipulation):
    options = write_setup(tmp_path)
    with make_hospital(options) as cluster:
        _spend(cluster)
    ledger = ledger_path(options["audit"])
    if manipulation == "deleted":
        ledger.unlink()
        checkpoint_path(ledger).unlink()
    elif manipulation == "edited":
        entry = json.loads(ledger.read_text().splitlines()[0])
        entry["event"]["noise_multiplier"] = 1e6  # "that release cost nothing"
        ledger.write_text(json.dumps(entry) + "\n")
    else:
        ledger.write_text("")
    with make_hospital(options) as cluster:
        with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as remote:
            x = remote.dataset("patients")
            with pytest.raises(PolicyDenied, match=r"'ledger': DP releases are refused until the data owner"):
                x.dp_mean(lower=0, upper=100, epsilon=0.1)
            assert x.mean(axis=0).get().shape == (4,)  # everything else goes on


def test_control_budgets_rebuilt_from_the_log_come_back_after_dropping_entries(tmp_path):
    """The weakened design (before #18): budgets replayed from the log's DP entries.  The insider drops the
    analyst's DP entries and re-chains the log with plain SHA-256: replayed, nothing was spent.  The real worker
    refuses that log (its MACs need the key) and keeps the spending in the authenticated ledger."""
    options = write_setup(tmp_path)
    with make_hospital(options) as cluster:
        _spend(cluster)

    def replayed(lines):  # what the weakened worker rebuilt at start
        return [json.loads(line)["noise_multiplier"] for line in lines if '"noise_multiplier"' in line]

    lines = open(options["audit"]).read().splitlines()
    assert len(replayed(lines)) == 1
    kept = [line for line in lines if '"noise_multiplier"' not in line]
    prev, rechained = GENESIS, []
    for line in kept:
        entry = {k: v for k, v in json.loads(line).items() if k != "mac"}
        entry["seq"], entry["prev"] = len(rechained), prev
        entry["mac"] = prev = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
        rechained.append(json.dumps(entry))
    assert replayed(rechained) == []  # the weakened worker: the whole budget back
    open(options["audit"], "w").write("\n".join(rechained) + "\n")
    with pytest.raises(AuditLogError, match="MAC does not authenticate"):
        make_service("hospital", None, None, options=options)
