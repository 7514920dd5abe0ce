"""`tfppml audit keygen KEY`, `tfppml audit verify LOG --key KEY` and `tfppml audit show LOG`.

tfppml audit keygen /etc/tfppml/hospital-audit.key        # a fresh 0600 audit key (never overwrites one)
tfppml audit verify hospital-audit.log --key KEY          # exit 0 and the head MAC if the log and its checkpoint
                                                          # authenticate; 1 naming the first bad entry if not
tfppml audit verify hospital-audit.log.ledger --key KEY --ledger   # the privacy ledger
tfppml audit verify hospital-audit.log --key KEY --extends HEAD    # also fail if rolled back before HEAD
tfppml audit show hospital-audit.log                      # one readable line per entry (--json for the raw lines)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["format_entry", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `audit keygen`, `audit verify` and `audit show` to the tfppml command line."""
    audit = subparsers.add_parser(
        "audit",
        help="make a key for, authenticate or print a remote worker's audit log",
        description="Make an audit key, authenticate a remote worker's audit log or ledger, or print a log.",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    keygen = actions.add_parser(
        "keygen",
        help="make an audit key",
        description="Write a fresh random audit key (mode 0600) for a worker's audit_key option; never overwrites.",
    )
    keygen.add_argument("key", metavar="KEY", help="the key file to create (outside the log's directory)")
    keygen.set_defaults(func=_run_keygen)
    verify = actions.add_parser(
        "verify",
        help="authenticate a log",
        description=(
            "Authenticate every entry (HMAC-SHA256 under the audit key), its link to the previous entry and the "
            "log's checkpoint. Exit 0 with the entry count and the head MAC (record it elsewhere to detect an "
            "older copy of the log put back), or 1 naming the first bad entry: edited, re-chained, inserted, "
            "removed, reordered, cut off the end, a missing checkpoint, or the wrong key."
        ),
    )
    verify.add_argument("log", metavar="LOG", help="the audit log file (or the ledger, with --ledger)")
    verify.add_argument("--key", required=True, metavar="KEY", help="the worker's audit key file")
    verify.add_argument("--ledger", action="store_true", help="LOG is a privacy ledger (<audit log>.ledger)")
    verify.add_argument(
        "--extends",
        default=None,
        metavar="HEAD",
        help="a head printed by an earlier verify: fail unless LOG still contains that entry (catches a rollback)",
    )
    verify.set_defaults(func=_run_verify)
    show = actions.add_parser(
        "show", help="print the entries", description="Print the log, one entry per line."
    )
    show.add_argument("log", metavar="LOG", help="the audit log file")
    show.add_argument("--json", action="store_true", help="print the raw JSON lines")
    show.add_argument("--who", default=None, help="only entries of this identity")
    show.add_argument("--denied", action="store_true", help="only denied requests")
    show.set_defaults(func=_run_show)
    audit.set_defaults(func=lambda args: (audit.print_help(), 2)[1])


def format_entry(entry: dict) -> str:
    """One readable line for an audit entry.

    Example:
        >>> format_entry({"seq": 3, "time": 0, "who": "analyst", "op": "get", "objects": ["o1"],
        ...               "allowed": False, "rule": "identities.analyst.raw_read", "hash": "ab" * 32})[:40]
        '#3 1970-01-01T00:00:00Z analyst get o1 D'
    """
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(entry.get("time", 0))))
    parts = [f"#{entry.get('seq')}", when, str(entry.get("who")), str(entry.get("op"))]
    if entry.get("fn"):
        parts[-1] += f"/{entry['fn']}"
    if entry.get("dataset"):
        parts.append(f"dataset={entry['dataset']}")
    objects = entry.get("objects") or []
    parts.append(",".join(map(str, objects)) if objects else "-")
    if entry.get("result"):
        parts.append(f"-> {entry['result']}")
    verdict = "DENIED" if entry.get("allowed") is False else "allowed"
    if entry.get("rule"):
        verdict += f" ({entry['rule']})"
    if entry.get("error"):
        verdict = f"failed ({entry['error']})"
    parts.append(verdict)
    if entry.get("result_bytes") is not None:
        parts.append(f"{entry['result_bytes']} B")
    if entry.get("epsilon") is not None:
        parts.append(f"epsilon={entry['epsilon']:g}")
    if entry.get("freed"):
        parts.append(f"freed={entry['freed']}")
    parts.append(f"mac={str(entry.get('mac', ''))[:12]}")
    return " ".join(parts)


def _run_keygen(args: argparse.Namespace) -> int:
    from tfppml.remote.audit import generate_key

    try:
        key = generate_key(args.key)
    except FileExistsError:
        print(f"tfppml: error: {args.key} exists; an audit key is never overwritten", file=sys.stderr)
        return 2
    print(f"wrote a new audit key to {key.path} (mode 0600); give it to the worker as --option audit_key={key.path}")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from tfppml.remote.audit import AuditLogError, load_key, verify_log

    try:
        key = load_key(args.key, log=args.log)
    except (OSError, ValueError) as err:
        print(f"tfppml: error: --key: {err}", file=sys.stderr)
        return 2
    try:
        result = verify_log(args.log, key, purpose="ledger" if args.ledger else "audit", extends=args.extends)
    except FileNotFoundError:
        print(f"tfppml: error: no such audit log: {args.log}", file=sys.stderr)
        return 2
    except AuditLogError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a malformed --extends
        print(f"tfppml: error: --extends: {err}", file=sys.stderr)
        return 2
    note = "" if result.checkpointed else (
        " (the last entry's checkpoint was not written, as after a crash: the next start repairs it)"
    )
    print(f"OK: {result.entries} entries authenticated, checkpoint intact; head {result.head}{note}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from tfppml.remote.audit import AuditLogError, read_entries

    try:
        for _, entry in read_entries(args.log):
            if args.who is not None and entry.get("who") != args.who:
                continue
            if args.denied and entry.get("allowed") is not False:
                continue
            print(json.dumps(entry, sort_keys=True) if args.json else format_entry(entry))
    except FileNotFoundError:
        print(f"tfppml: error: no such audit log: {args.log}", file=sys.stderr)
        return 2
    except AuditLogError as err:
        print(f"tfppml: error: {err}", file=sys.stderr)
        return 1
    return 0
