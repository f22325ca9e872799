"""Every tag the committee signs or derives under the MPK is its own and is used in one place.

Whatever the committee computes with the master secret is ``s·H(m)`` in G1: a BLS signature
under ``MPK`` and the IBE key of ``m`` under the same hash-to-G1 tag. So each use needs a
tag of its own (docs/crypto.md, "Signatures under the MPK"). The checks walk the source:

- the three tags are pairwise distinct and differ from every BLS ciphersuite DST;
- every hash-to-curve call (``hash_to_g1``, ``hash_to_g2``, ``hash_to_curve``) in ``mpc``,
  ``kms``, ``net`` and ``sim`` outside ``mpc/math`` and ``mpc/bls.py`` passes one of the
  three constants by name, and each constant is passed at exactly one call, in its module;
- each tag's bytes are written in its own module only (no copy under another name);
- nothing outside ``mpc/bls.py`` imports ``mpc.bls`` (its DSTs are never used with the MPK);
- the docs table lists exactly these tags.

``call_sites`` is tested on made-up source too, so a second use would be caught.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from mpc import bls
from mpc.appcert import DST_APPCERT
from mpc.cert import DST_CERT
from mpc.tkd.derive import DST_DERIVE

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mpc", "kms", "net", "sim")
HASHERS = {"hash_to_g1", "hash_to_g2", "hash_to_curve"}
EXEMPT = ("mpc/math/", "mpc/bls.py")
"""Where the hash functions are defined, and the standard ciphersuites (never with MPK)."""

MPK_TAGS = {
    "DST_DERIVE": (DST_DERIVE, "mpc/tkd/derive.py"),
    "DST_CERT": (DST_CERT, "mpc/cert.py"),
    "DST_APPCERT": (DST_APPCERT, "mpc/appcert.py"),
}


def sources() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    return out


def _callee(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


def call_sites(files: dict[str, str]) -> dict[str, list[str]]:
    """DST expression (source text) -> ``path:line`` of each hash-to-curve call passing it."""
    found: dict[str, list[str]] = defaultdict(list)
    for rel, text in files.items():
        if rel.startswith(EXEMPT):
            continue
        for node in ast.walk(ast.parse(text, rel)):
            if not isinstance(node, ast.Call) or _callee(node) not in HASHERS:
                continue
            dst = node.args[1] if len(node.args) > 1 else None
            for kw in node.keywords:
                if kw.arg == "dst":
                    dst = kw.value
            expr = ast.unparse(dst) if dst is not None else "<none>"
            found[expr].append(f"{rel}:{node.lineno}")
    return dict(found)


def problems(files: dict[str, str]) -> list[str]:
    out = []
    sites = call_sites(files)
    for expr, where in sites.items():
        if expr not in MPK_TAGS:
            out.append(f"hash-to-curve with DST {expr} at {where}: not an MPK tag")
    for name, (_, module) in MPK_TAGS.items():
        where = sites.get(name, [])
        if len(where) != 1 or not where[0].startswith(module + ":"):
            out.append(f"{name} is hashed at {where}, want exactly once in {module}")
    return out


def test_the_mpk_tags_are_pairwise_distinct_and_not_ciphersuite_dsts() -> None:
    values = [v for v, _ in MPK_TAGS.values()]
    assert len(set(values)) == len(values)
    suites = {v for k, v in vars(bls).items() if k.startswith("DST_") and isinstance(v, bytes)}
    assert len(suites) == 8  # four MinPk and four MinSig DSTs
    assert not suites & set(values)
    # No tag is a prefix of another: hash_to_curve takes the DST whole, but say it anyway.
    for a in values:
        for b in values:
            assert a == b or not b.startswith(a)


def test_each_mpk_tag_is_hashed_at_exactly_one_call_site_in_its_module() -> None:
    assert problems(sources()) == []


def test_the_check_fails_on_a_second_use_or_a_stray_dst() -> None:
    """The same walk over made-up modules: a second call with DST_CERT, a call with an
    inline DST, and a tag hashed outside its module are all reported."""
    base = sources()
    second = {
        **base,
        "kms/extra.py": "from mpc.math import hash_to_g1\nhash_to_g1(b'm', DST_CERT)\n",
    }
    assert any("DST_CERT is hashed at" in p for p in problems(second))
    inline = {**base, "kms/extra.py": "import mpc.math as m\nm.hash_to_g1(b'm', dst=b'X')\n"}
    assert any("b'X'" in p for p in problems(inline))
    moved = {
        **{k: v for k, v in base.items() if k != "mpc/appcert.py"},
        "kms/elsewhere.py": "hash_to_g1(message, DST_APPCERT)\n",
    }
    assert any("DST_APPCERT is hashed at" in p for p in problems(moved))


def test_each_tag_is_written_in_its_own_module_only() -> None:
    for name, (value, module) in MPK_TAGS.items():
        holders = []
        for rel, text in sources().items():
            for node in ast.walk(ast.parse(text, rel)):
                if isinstance(node, ast.Constant) and node.value == value:
                    holders.append(rel)
        assert holders == [module], (name, holders)


def test_the_bls_ciphersuites_are_never_used_with_the_mpk() -> None:
    importers = []
    for rel, text in sources().items():
        if rel == "mpc/bls.py":
            continue
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if mod == "mpc.bls" or (mod == "mpc" and any(a.name == "bls" for a in node.names)):
                    importers.append(rel)
            elif isinstance(node, ast.Import):
                if any(a.name == "mpc.bls" for a in node.names):
                    importers.append(rel)
    assert importers == []


def test_the_docs_table_lists_exactly_the_mpk_tags() -> None:
    text = (ROOT / "docs" / "crypto.md").read_text(encoding="utf-8")
    start = text.index("### Signatures under the MPK")
    section = text[start : text.index("\n## ", start)]
    rows = re.findall(r"^\| `(DST_\w+)` \| `([^`]+)` \|[^|]+\| `([^`]+)`", section, re.M)
    assert {name: (value.encode(), module) for name, value, module in rows} == MPK_TAGS


@pytest.mark.parametrize("name", sorted(MPK_TAGS))
def test_each_mpk_tag_is_in_the_tag_table(name: str) -> None:
    text = (ROOT / "docs" / "crypto.md").read_text(encoding="utf-8")
    assert f"`{MPK_TAGS[name][0].decode()}`" in text
