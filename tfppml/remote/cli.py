"""`tfppml audit verify LOG` and `tfppml audit show LOG`.

tfppml audit verify hospital-audit.log     # exit 0 and the head hash if the chain holds; 1 naming the entry if not
tfppml audit show hospital-audit.log       # one readable line per entry (--json for the raw lines)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["format_entry", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `audit verify` and `audit show` to the tfppml command line."""
    audit = subparsers.add_parser(
        "audit",
        help="check or print a remote worker's audit log",
        description="Check the hash chain of a remote worker's audit log, or print it readably.",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check the hash chain",
        description=(
            "Check every entry's hash and its link to the previous entry. Exit 0 with the entry count and the head "
            "hash (compare it with one recorded elsewhere to detect entries cut off the end), or 1 naming the "
            "first broken entry."
        ),
    )
    verify.add_argument("log", metavar="LOG", help="the audit log file")
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
    parts.append(f"hash={str(entry.get('hash', ''))[:12]}")
    return " ".join(parts)


def _run_verify(args: argparse.Namespace) -> int:
    from tfppml.remote.audit import AuditLogError, verify_log

    try:
        result = verify_log(args.log)
    except FileNotFoundError:
        print(f"tfppml: error: no such audit log: {args.log}", file=sys.stderr)
        return 2
    except AuditLogError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"OK: {result.entries} entries, chain intact; head {result.head}")
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
