"""The operator guide's ``/metrics`` table lists exactly the metrics a node exports, with
their types, and every ``qkms_*`` name the docs mention is one of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kms.node.core import RunProgress
from kms.node.metrics import NodeMetrics, NodeSnapshot, PolicyCounts

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
ROW = re.compile(r"^\| `(qkms_[a-z0-9_]+)(\{[a-z_,]+\})?` \| (gauge|counter|histogram) \|", re.M)
MENTION = re.compile(r"\bqkms_[a-z0-9_]+")
NOT_METRICS = frozenset({"qkms_partial", "qkms_signature", "qkms_message", "qkms_cert"})
"""Names of app-key certificate fields and functions (``kms.protocol``, ``mpc.appcert``)."""
SUFFIXES = ("_bucket", "_count", "_sum")


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric a serving node exports: name -> (type, labels), with every labelled
    series made to appear (each counter moved once)."""
    m = NodeMetrics(lambda: NodeSnapshot(policies=PolicyCounts()))
    m.set_members([2])
    m.received(2, "bcast/relay", 10)
    m.queued("bcast/relay")
    m.sent(2, 10)
    m.rejected_input("malformed message")
    m.misbehaved("no deal")
    m.run_failed("dkg")
    m.signature_withheld("dkg")
    m.encode_failed("chain/update")
    m.key_request(None, 0.01)
    m.run_progress(RunProgress("dkg", 0, 0, "dealing"), 1.0)
    m.run_progress(None, 2.0)
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = sorted(
            {k for s in family.samples for k in s.labels if k != "le"},
        )
        out[name] = (family.type, tuple(labels))
    return out


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    text = GUIDE.read_text()
    section = text[text.index("### `/metrics`") : text.index("## Logs")]
    rows = {}
    for name, labels, kind in ROW.findall(section):
        assert name not in rows, f"{name} is listed twice"
        rows[name] = (kind, tuple(sorted(labels.strip("{}").split(","))) if labels else ())
    return rows


def test_the_metrics_table_lists_every_exported_metric_with_its_type_and_labels() -> None:
    code, docs = exported(), documented()
    assert sorted(set(code) - set(docs)) == [], "exported but not in the operator guide's table"
    assert sorted(set(docs) - set(code)) == [], "in the operator guide's table but not exported"
    assert {n: code[n] for n in docs} == docs


def test_every_metric_name_the_docs_mention_is_exported() -> None:
    code = exported()
    names = set(code)
    names |= {n + s for n, (kind, _) in code.items() if kind == "histogram" for s in SUFFIXES}
    names |= NOT_METRICS
    for path in sorted((ROOT / "docs").rglob("*.md")):
        for mention in MENTION.findall(path.read_text()):
            assert mention in names, f"{path.relative_to(ROOT)} names {mention}"


# --- the log events table ----------------------------------------------------------------------

NODE_LOGGER = "quorum_kms.node"
LEVELS = ("debug", "info", "warning", "error", "exception")
LOG_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \|", re.M)


def _is_node_logger(node: ast.expr, names: set[str]) -> bool:
    """``log`` (a module-level ``logging.getLogger("quorum_kms.node")``) or that call itself."""
    if isinstance(node, ast.Name):
        return node.id in names
    return (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) == "logging.getLogger"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == NODE_LOGGER
    )


def emitted() -> dict[str, set[str]]:
    """Every message the code writes to the node's logger, with its levels (``?`` for a
    level chosen at run time), read from the source."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "kms").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {
            t.id
            for stmt in tree.body
            if isinstance(stmt, ast.Assign) and _is_node_logger(stmt.value, set())
            for t in stmt.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not _is_node_logger(node.func.value, names):
                continue
            attr, args = node.func.attr, node.args
            if attr in LEVELS and args and isinstance(args[0], ast.Constant):
                # ``exception`` logs at error level, with the traceback
                out.setdefault(str(args[0].value), set()).add(
                    "error" if attr == "exception" else attr
                )
            elif attr == "log" and len(args) >= 2 and isinstance(args[1], ast.Constant):
                out.setdefault(str(args[1].value), set()).add("?")
    return out


def documented_log_events() -> dict[str, str]:
    text = GUIDE.read_text()
    section = text[text.index("### Log events") : text.index("## The admin channel")]
    rows = {}
    for msg, level in LOG_ROW.findall(section):
        if msg == "msg":
            continue
        assert msg not in rows, f"{msg!r} is listed twice"
        rows[msg] = level
    return rows


def test_the_log_events_table_lists_every_line_the_node_logs_with_its_level() -> None:
    code, docs = emitted(), documented_log_events()
    assert {"admin request", "decision window started", "sharing run ended"} <= set(code)
    assert sorted(set(code) - set(docs)) == [], "logged but not in the operator guide's table"
    assert sorted(set(docs) - set(code)) == [], "in the operator guide's table but not logged"
    for msg, levels in code.items():
        for level in levels - {"?"}:
            assert level in docs[msg], f"{msg!r} is logged at {level}, the table says {docs[msg]}"
