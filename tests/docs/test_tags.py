"""Every domain-separation tag in the code is distinct and listed in docs/crypto.md.

A tag is found by walking the source of ``mpc``, ``kms`` and ``net``:

- a module- or class-level constant whose value is a bytes literal and whose
  name is a tag name (``DST_*``, ``CTX_*``, ``*_TAG``, ``*_SALT``, ``*_INFO``,
  ``*_CONTEXT``, ``*_DOMAIN``, ``*_MAGIC``, ``*_PREFIX``, ``*_VERSION``, ``MAGIC``);
- any bytes literal, anywhere, that starts with ``quorum-kms`` or ``QUORUM-KMS``
  (a tag written inline).

Named tags must be pairwise distinct (an inline literal may repeat a named tag:
it is a use of it). Every tag's bytes must appear in ``docs/crypto.md``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mpc", "kms", "net")
TAG_NAME = re.compile(
    r"_?(DST_\w+|CTX_\w+|MAGIC|\w+_(TAG|SALT|INFO|CONTEXT|DOMAIN|MAGIC|PREFIX|VERSION))"
)
TAG_LITERAL = (b"quorum-kms", b"QUORUM-KMS")
CRYPTO_MD = ROOT / "docs" / "crypto.md"


@dataclass(frozen=True)
class Tag:
    where: str  # path:line
    name: str | None  # None for an inline literal
    value: bytes


def _target_name(node: ast.Assign | ast.AnnAssign) -> str | None:
    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
    return target.id if isinstance(target, ast.Name) else None


def tags_in(path: Path, root: Path = ROOT) -> list[Tag]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    rel = path.relative_to(root)
    found: list[Tag] = []
    named: set[int] = set()
    scopes: list[ast.AST] = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]
    for scope in scopes:
        for stmt in getattr(scope, "body", []):
            if not isinstance(stmt, ast.Assign | ast.AnnAssign):
                continue
            value = stmt.value
            name = _target_name(stmt)
            if (
                name is not None
                and isinstance(value, ast.Constant)
                and isinstance(value.value, bytes)
                and TAG_NAME.fullmatch(name)
            ):
                found.append(Tag(f"{rel}:{stmt.lineno}", name, value.value))
                named.add(id(value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, bytes)
            and node.value.startswith(TAG_LITERAL)
            and id(node) not in named
        ):
            found.append(Tag(f"{rel}:{node.lineno}", None, node.value))
    return found


def all_tags() -> list[Tag]:
    return [t for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) for t in tags_in(p)]


TAGS = all_tags()


def test_the_collector_finds_the_known_tags() -> None:
    import mpc.broadcast
    import mpc.cert
    import mpc.ibe
    import mpc.sig
    import mpc.tkd
    from kms.policy import app

    values = {t.value for t in TAGS}
    expected = {
        mpc.tkd.DST_DERIVE,
        mpc.cert.DST_CERT,
        mpc.ibe.HEDGE_TAG,
        mpc.ibe.MAGIC,
        mpc.broadcast.SESSION_TAG,
        app.CTX_APP_POLICY,
        app.APP_ID_DOMAIN,
        *mpc.sig.CONTEXTS.values(),
    }
    assert expected <= values
    assert len(TAGS) >= 40


def test_named_tags_are_pairwise_distinct() -> None:
    by_value: dict[bytes, list[str]] = {}
    for t in TAGS:
        if t.name is not None:
            by_value.setdefault(t.value, []).append(f"{t.name} ({t.where})")
    shared = {v.decode(errors="replace"): names for v, names in by_value.items() if len(names) > 1}
    assert shared == {}, f"one tag value under several names: {shared}"


@pytest.mark.parametrize("tag", TAGS, ids=lambda t: t.name or t.value.decode(errors="replace"))
def test_every_tag_is_listed_in_crypto_md(tag: Tag) -> None:
    text = CRYPTO_MD.read_text(encoding="utf-8")
    assert tag.value.decode("ascii") in text, (
        f"{tag.name or 'an inline tag'} at {tag.where} ({tag.value!r}) is not in docs/crypto.md"
    )


def test_the_collector_sees_new_tags(tmp_path: Path) -> None:
    source = (
        'NEW_TAG = b"quorum-kms/v1/probe"\n'
        "class K:\n"
        '    AUDIT_CONTEXT = b"QUORUM-KMS-PROBE"\n'
        "def f():\n"
        '    return b"quorum-kms/v1/inline" + b"other"\n'
    )
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    found = {(t.name, t.value) for t in tags_in(probe, tmp_path)}
    assert found == {
        ("NEW_TAG", b"quorum-kms/v1/probe"),
        ("AUDIT_CONTEXT", b"QUORUM-KMS-PROBE"),
        (None, b"quorum-kms/v1/inline"),
    }
