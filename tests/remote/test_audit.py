"""The hash-chained audit log and `tfppml audit verify/show` (no worker needed)."""

import json

import pytest

from tfppml.cli import main
from tfppml.remote.audit import GENESIS, AuditLog, AuditLogError, entry_hash, verify_log


def _write(path, count=5):
    with AuditLog(path) as log:
        for index in range(count):
            log.append(who="analyst", op="get", objects=[f"o{index}"], allowed=index % 2 == 0, result_bytes=8)
    return path.read_text().splitlines()


def _rewrite(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_chain_links_every_entry(tmp_path):
    lines = _write(tmp_path / "a.log")
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(5))
    assert entries[0]["prev"] == GENESIS
    for before, after in zip(entries, entries[1:]):
        assert after["prev"] == before["hash"] == entry_hash(before)
    result = verify_log(tmp_path / "a.log")
    assert result.entries == 5 and result.head == entries[-1]["hash"]


def test_edited_entry_is_named(tmp_path):
    path = tmp_path / "a.log"
    lines = _write(path)
    entry = json.loads(lines[2])
    entry["allowed"] = not entry["allowed"]  # pretend a denied request was allowed
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    _rewrite(path, lines)
    with pytest.raises(AuditLogError, match=r"entry 3 \(line 3\): its hash does not match its content"):
        verify_log(path)


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(tmp_path):
    path = tmp_path / "a.log"
    lines = _write(path)
    entry = json.loads(lines[1])
    entry["who"] = "someone-else"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry)
    _rewrite(path, lines)
    with pytest.raises(AuditLogError, match=r"entry 3 \(line 3\): its prev hash does not match entry 2"):
        verify_log(path)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda lines: lines[:2] + lines[3:], r"entry 3 \(line 3\) has seq 3, expected 2"),
        (lambda lines: [lines[1], lines[0], *lines[2:]], r"entry 1 \(line 1\) has seq 1, expected 0"),
        (lambda lines: lines[:2] + ["not json"] + lines[2:], r"entry 3 \(line 3\) is not valid JSON"),
    ],
    ids=["removed", "reordered", "inserted"],
)
def test_removed_reordered_inserted_entries_are_detected(tmp_path, change, match):
    path = tmp_path / "a.log"
    _rewrite(path, change(_write(path)))
    with pytest.raises(AuditLogError, match=match):
        verify_log(path)


def test_reopened_log_continues_the_chain(tmp_path):
    path = tmp_path / "a.log"
    _write(path, 3)
    with AuditLog(path) as log:
        entry = log.append(who="analyst", op="info", allowed=True)
    assert entry["seq"] == 3
    assert verify_log(path).entries == 4


def test_tampered_or_torn_log_is_not_extended(tmp_path):
    path = tmp_path / "a.log"
    lines = _write(path, 3)
    _rewrite(path, [lines[0], lines[1].replace('"analyst"', '"mallory"'), lines[2]])
    with pytest.raises(AuditLogError, match="entry 2"):
        AuditLog(path)
    torn = tmp_path / "torn.log"
    torn.write_text("\n".join(_write(tmp_path / "b.log", 2)) + "\n" + '{"seq": 2, "who"')
    with pytest.raises(AuditLogError, match=r"entry 3 \(line 3\) is incomplete"):
        AuditLog(torn)


def test_reserved_fields_are_refused(tmp_path):
    with AuditLog(tmp_path / "a.log") as log:
        with pytest.raises(ValueError, match=r"fields \['hash'\] are set by the log itself"):
            log.append(hash="x")


def test_cli_verify_and_show(tmp_path, capsys):
    path = tmp_path / "a.log"
    lines = _write(path)
    assert main(["audit", "verify", str(path)]) == 0
    assert "OK: 5 entries" in capsys.readouterr().out
    assert main(["audit", "show", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[1].startswith("#1 ") and "analyst get o1 DENIED" in out[1]
    assert main(["audit", "show", "--denied", "--json", str(path)]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [1, 3]
    _rewrite(path, [lines[0], lines[1].replace('"o1"', '"o9"'), *lines[2:]])
    assert main(["audit", "verify", str(path)]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path / "missing.log")]) == 2
