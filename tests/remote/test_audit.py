"""The authenticated audit log and `tfppml audit keygen/verify/show` (no worker needed).

A crafty insider who can edit the log's files (issue #18, attack 4) edits a denial to "allowed" and re-chains
every later entry, reorders, deletes or truncates entries, or deletes the checkpoint.  Each is caught by
`verify_log` with the key; the control shows that the former unkeyed SHA-256 chain accepts the re-chained edit.
"""

import hashlib
import json
import os

import pytest

from tfppml.cli import main
from tfppml.remote.audit import (
    GENESIS,
    AuditLog,
    AuditLogError,
    checkpoint_path,
    generate_key,
    load_key,
    verify_log,
)


@pytest.fixture
def key(tmp_path):
    return generate_key(tmp_path / "keys" / "audit.key")


@pytest.fixture
def path(tmp_path):
    return tmp_path / "logs" / "a.log"


def _write(path, key, count=5):
    with AuditLog(path, key) as log:
        for index in range(count):
            log.append(who="analyst", op="get", objects=[f"o{index}"], allowed=index % 2 == 0, result_bytes=8)
    return path.read_text().splitlines()


def _rewrite(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _canonical(entry):
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _rechain(lines, digest):
    """An insider's re-chaining: every entry's link and MAC recomputed with `digest` (no key)."""
    prev, out = GENESIS, []
    for line in lines:
        entry = json.loads(line)
        entry["prev"] = prev
        entry.pop("mac", None)
        entry["mac"] = digest(_canonical(entry).encode())
        prev = entry["mac"]
        out.append(_canonical(entry))
    return out


def _unkeyed_verify(lines):
    """The verification of the log before #18: an unkeyed SHA-256 chain (the weakened build of the control)."""
    prev = GENESIS
    for line in lines:
        entry = json.loads(line)
        body = {k: v for k, v in entry.items() if k != "mac"}
        if entry["prev"] != prev or entry["mac"] != hashlib.sha256(_canonical(body).encode()).hexdigest():
            return False
        prev = entry["mac"]
    return True


def test_every_entry_is_authenticated_and_chained(path, key):
    lines = _write(path, key)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(5)) and entries[0]["prev"] == GENESIS
    for before, after in zip(entries, entries[1:]):
        assert after["prev"] == before["mac"]
    result = verify_log(path, key)
    assert result.entries == 5 and result.head == entries[-1]["mac"] and result.checkpointed


def _flip_denial(lines):
    entry = json.loads(lines[1])
    assert entry["allowed"] is False
    entry["allowed"] = True
    return [lines[0], _canonical(entry), *lines[2:]]


def test_control_the_unkeyed_chain_accepts_a_rechained_edit(path, key):
    lines = _rechain(_write(path, key), lambda body: hashlib.sha256(body).hexdigest())
    assert _unkeyed_verify(_flip_denial(lines)) is False  # a plain edit is caught even there ...
    assert _unkeyed_verify(_rechain(_flip_denial(lines), lambda body: hashlib.sha256(body).hexdigest()))  # ... not this


@pytest.mark.parametrize(
    "change, match",
    [
        (_flip_denial, r"entry 2 \(line 2\): its MAC does not authenticate"),
        (lambda lines: _rechain(_flip_denial(lines), lambda b: hashlib.sha256(b).hexdigest()),
         r"entry 1 \(line 1\): its MAC does not authenticate"),
        (lambda lines: [lines[1], lines[0], *lines[2:]], r"entry 1 \(line 1\) has seq 1, expected 0"),
        (lambda lines: lines[:2] + lines[3:], r"entry 3 \(line 3\) has seq 3, expected 2"),
        (lambda lines: lines[:2] + ["not json"] + lines[2:], r"entry 3 \(line 3\) is not valid JSON"),
        (lambda lines: lines[:3], r"holds 3 entries but its checkpoint records 5: entries were cut off the end"),
        (lambda lines: [], r"holds 0 entries but its checkpoint records 5"),
    ],
    ids=["edited", "edited-and-rechained", "reordered", "deleted", "inserted", "truncated", "emptied"],
)
def test_every_manipulation_is_caught(path, key, change, match, capsys):
    _rewrite(path, change(_write(path, key)))
    with pytest.raises(AuditLogError, match=match):
        verify_log(path, key)
    with pytest.raises(AuditLogError):
        AuditLog(path, key)  # nor is a tampered log extended
    assert main(["audit", "verify", str(path), "--key", str(key.path)]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_a_deleted_checkpoint_or_log_and_a_forged_checkpoint_are_caught(path, key, tmp_path):
    lines = _write(path, key)
    saved = checkpoint_path(path).read_text()
    checkpoint_path(path).unlink()
    with pytest.raises(AuditLogError, match="checkpoint a.log.checkpoint is missing"):
        verify_log(path, key)
    forged = json.loads(saved)
    forged["entries"] = 3
    checkpoint_path(path).write_text(json.dumps(forged))
    _rewrite(path, lines[:3])
    with pytest.raises(AuditLogError, match="checkpoint a.log.checkpoint does not authenticate"):
        verify_log(path, key)
    checkpoint_path(path).write_text(saved)
    path.unlink()
    with pytest.raises(AuditLogError, match="missing but its checkpoint exists"):
        AuditLog(path, key)


def test_the_wrong_key_fails(path, key, tmp_path):
    _write(path, key)
    other = generate_key(tmp_path / "keys" / "other.key")
    with pytest.raises(AuditLogError, match=r"entry 1 \(line 1\): its MAC does not authenticate"):
        verify_log(path, other)
    with pytest.raises(AuditLogError):
        verify_log(path, key, purpose="ledger")  # a log cannot pass as the ledger, nor the reverse


def test_a_crash_between_entry_and_checkpoint_verifies_and_is_repaired(path, key):
    lines = _write(path, key, 3)
    saved = checkpoint_path(path).read_text()
    with AuditLog(path, key) as log:
        log.append(who="analyst", op="info", allowed=True)
    checkpoint_path(path).write_text(saved)  # as if the process died before rewriting the checkpoint
    result = verify_log(path, key)
    assert result.entries == 4 and not result.checkpointed
    with AuditLog(path, key) as log:
        assert log.append(who="analyst", op="info", allowed=True)["seq"] == 4
    assert verify_log(path, key).checkpointed and len(lines) == 3


def test_keys_are_checked_where_they_are_loaded(tmp_path, path, key):
    with pytest.raises(FileExistsError):
        generate_key(key.path)
    assert oct(key.path.stat().st_mode & 0o777) == "0o600"
    os.chmod(key.path, 0o644)
    with pytest.raises(ValueError, match="group and others must have no access"):
        load_key(key.path)
    os.chmod(key.path, 0o600)
    inside = generate_key(path.parent / "key")
    with pytest.raises(ValueError, match="in the audit log's directory"):
        load_key(inside.path, log=path)
    bad = tmp_path / "keys" / "bad.key"
    bad.write_text("not hex")
    os.chmod(bad, 0o600)
    with pytest.raises(ValueError, match="must hold 64 hex digits"):
        load_key(bad)
    assert "secret" not in repr(load_key(key.path)) and key.secret.hex() not in repr(load_key(key.path))


def test_reserved_fields_are_refused(path, key):
    with AuditLog(path, key) as log:
        with pytest.raises(ValueError, match=r"fields \['mac'\] are set by the log itself"):
            log.append(mac="x")


def test_cli_keygen_verify_and_show(tmp_path, path, key, capsys):
    _write(path, key)
    assert main(["audit", "verify", str(path), "--key", str(key.path)]) == 0
    assert "OK: 5 entries authenticated" in capsys.readouterr().out
    assert main(["audit", "show", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[1].startswith("#1 ") and "analyst get o1 DENIED" in out[1]
    assert main(["audit", "show", "--denied", "--json", str(path)]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [1, 3]
    assert main(["audit", "verify", str(tmp_path / "missing.log"), "--key", str(key.path)]) == 2
    made = tmp_path / "keys" / "new.key"
    assert main(["audit", "keygen", str(made)]) == 0 and load_key(made)
    assert main(["audit", "keygen", str(made)]) == 2


def test_a_rollback_to_an_earlier_authentic_state_is_caught_against_a_recorded_head(path, key, capsys):
    """An insider puts back an older copy of the log *and* its checkpoint: each is authentic, so the log alone
    verifies (the control); against the head the owner recorded later, `extends` catches it."""
    _write(path, key, 3)
    older = (path.read_bytes(), checkpoint_path(path).read_bytes())
    with AuditLog(path, key) as log:
        for _ in range(2):
            log.append(who="analyst", op="dp_sum", allowed=True, epsilon=0.5)
    recorded = verify_log(path, key).head
    assert verify_log(path, key, extends=recorded).entries == 5
    early = json.loads(path.read_text().splitlines()[1])["mac"]
    assert verify_log(path, key, extends=early).entries == 5  # a continuation of an earlier head passes
    with AuditLog(path, key) as log:  # the worker goes on: the recorded head stays in the log
        log.append(who="analyst", op="info", allowed=True)
    assert verify_log(path, key, extends=recorded).entries == 6

    path.write_bytes(older[0])
    checkpoint_path(path).write_bytes(older[1])
    assert verify_log(path, key).entries == 3  # control: the rolled-back copy is authentic on its own
    with pytest.raises(AuditLogError, match="rolled back to an earlier state or replaced"):
        verify_log(path, key, extends=recorded)
    assert main(["audit", "verify", str(path), "--key", str(key.path), "--extends", recorded]) == 1
    assert "rolled back" in capsys.readouterr().err
    assert main(["audit", "verify", str(path), "--key", str(key.path), "--extends", early]) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match="`extends` must be a head of 64 lowercase hex digits"):
        verify_log(path, key, extends="abc")
    assert main(["audit", "verify", str(path), "--key", str(key.path), "--extends", "xyz"]) == 2
    assert "--extends" in capsys.readouterr().err


def test_a_rolled_back_ledger_is_caught_the_same_way(tmp_path, key):
    ledger = tmp_path / "logs" / "a.log.ledger"
    with AuditLog(ledger, key, purpose="ledger") as log:
        log.append(who="analyst", dataset="table", epsilon=0.25)
    older = (ledger.read_bytes(), checkpoint_path(ledger).read_bytes())
    with AuditLog(ledger, key, purpose="ledger") as log:
        log.append(who="analyst", dataset="table", epsilon=0.75)
    recorded = verify_log(ledger, key, purpose="ledger").head
    ledger.write_bytes(older[0])
    checkpoint_path(ledger).write_bytes(older[1])
    assert verify_log(ledger, key, purpose="ledger").entries == 1  # control: the budget would come back
    assert main(["audit", "verify", str(ledger), "--key", str(key.path), "--ledger", "--extends", recorded]) == 1
