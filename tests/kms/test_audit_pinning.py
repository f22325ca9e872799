"""``kms audit verify`` pins the audited node's identity to the epoch chain verified from the
master public key, and ``kms audit show`` reads the entries.

The committee is a real epoch chain (every link a threshold signature under the master
key, ``mpc.membership.testing``), served over HTTP by a stand-in for the node's public
port; the node's admin channel is a stand-in too, because the attacker here IS the node
(its operator rewrites the log and answers whatever it likes on both channels). The
command itself runs through typer's CliRunner: only its HTTP transport and its admin
channel reader are pointed at the stand-ins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from typer.testing import CliRunner

import kms.app.audit as app_audit
from kms.app.config import participant_to_toml
from kms.app.operator import read_audit
from kms.cli import app as cli
from kms.store.audit import (
    AUDIT_HEAD_CONTEXT,
    ZERO_HASH,
    canonical_record,
    chain_hash,
    head_statement,
)
from mpc.cert import EpochCertificate
from mpc.membership import AddMember, RemoveMember
from mpc.membership.messages import (
    ChainUpdate,
    MembershipCertificate,
    MembershipOutcome,
    Proposal,
)
from mpc.membership.testing import ForgedChain, _sign, forged_chain, member_seeds, participants
from mpc.sig import SigningKey

N = 4
REAL_CLIENT = httpx.Client


def _identity(index: int) -> SigningKey:
    return SigningKey.from_seed(member_seeds(N + 1)[index][0])


def _change(chain: ForgedChain, change: Any) -> None:
    """A certified change and the next epoch's certificate, as a committee makes them."""
    last = chain.links[-1]
    assert isinstance(last, EpochCertificate)
    epoch = last.transcript.epoch
    proposal = Proposal.of(epoch, last.hash(), 1, epoch.to_bytes(16, "big"), change)
    out = MembershipOutcome(epoch, epoch, last.hash(), proposal, 1_000_000 + epoch)
    cert = MembershipCertificate(out, _sign(chain.secret, out.encode()))
    chain.links.append(cert)
    if isinstance(change, AddMember):
        chain.committee = tuple(
            sorted([*chain.committee, change.participant], key=lambda p: p.index)
        )
    if isinstance(change, RemoveMember):
        chain.committee = tuple(p for p in chain.committee if p.index != change.index)
    chain.links.append(chain.epoch_certificate(epoch + 1, 0, cert.hash()))


def committee_chain() -> ForgedChain:
    """Genesis with members 1-4; member 5 added (epoch 1) and removed (epoch 3); then
    refreshes, so the recent tail a node serves no longer names member 5."""
    chain = forged_chain(0, n=N, t=2, committee=participants(N + 1)[:N])
    _change(chain, AddMember(participants(N + 1)[N], b"", (), 0, b""))
    chain.grow(1)
    _change(chain, RemoveMember(N + 1))
    chain.grow(3)
    return chain


def log_entries(count: int, start: int = 0) -> list[str]:
    return [
        canonical_record(
            {"event": "key-release", "app": "ab" * 20, "purpose": "app", "time": 1_800_000_000 + k}
        ).decode()
        for k in range(start, start + count)
    ]


def signed_head(entries: list[str], key: SigningKey) -> dict[str, Any]:
    head = ZERO_HASH
    for e in entries:
        head = chain_hash(head, e.encode())
    return {
        "count": len(entries),
        "head": head.hex(),
        "identity": key.verify_key().to_bytes().hex(),
        "signature": key.sign(AUDIT_HEAD_CONTEXT, head_statement(len(entries), head)).hex(),
    }


class Node:
    """What a node answers: its chain and audit head on the public port, its log on the
    admin channel (whatever its operator makes it say)."""

    def __init__(self, chain: ForgedChain, entries: list[str], key: SigningKey) -> None:
        self.chain = chain
        self.entries = entries
        self.head = signed_head(entries, key)
        self.public_head = dict(self.head)

    def http(self, request: httpx.Request) -> httpx.Response:
        links = self.chain.links
        if request.url.path == "/v1/chain":
            q = request.url.params
            if "from" not in q:  # genesis and the recent tail, as a node serves it
                return httpx.Response(200, content=ChainUpdate.of([links[0], links[-1]]).encode())
            start, limit = int(q["from"]), int(q["limit"])
            page = links[start : start + limit]
            return httpx.Response(
                200,
                content=ChainUpdate.of(page).encode(),
                headers={
                    "x-chain-first": str(start),
                    "x-chain-next": str(start + len(page)),
                    "x-chain-head": str(len(links) - 1),
                },
            )
        if request.url.path == "/v1/audit/head":
            return httpx.Response(200, json=self.public_head)
        return httpx.Response(404)

    def admin(self, config: Path, request: dict[str, Any]) -> dict[str, Any]:
        assert request["op"] == "audit"
        start, limit = int(request["start"]), int(request["limit"])
        page = {**self.head, "start": start, "entries": self.entries[start : start + limit]}
        if request.get("check"):
            page["node_check"] = "ok"  # the node vouches for itself, of course
        return {"ok": True, "audit": page}


def one_line(output: str) -> str:
    return " ".join(output.split())


def write_config(tmp_path: Path, index: int, chain: ForgedChain, *, pin: bool) -> Path:
    com: dict[str, Any] = {
        "threshold": 2,
        "genesis_start": 1_700_000_000.0,
        "genesis": [participant_to_toml(p) for p in participants(N + 1)[:N]],
    }
    if pin:
        com["genesis_mpk"] = chain.mpk.to_bytes().hex()
    path = tmp_path / f"node-{index}" / "node.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "node": {"index": index, "http": "127.0.0.1:8080", "passphrase_file": "pass"},
        "committee": com,
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def verify(
    monkeypatch: pytest.MonkeyPatch,
    node: Node,
    config: Path,
    *args: str,
    chain_node: Node | None = None,
) -> tuple[int, dict[str, Any], str]:
    """``kms audit verify --config CONFIG --json ARGS``, with ``node`` answering its HTTP
    (and ``chain_node`` answering at http://other) and its admin channel."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "other" and chain_node is not None:
            return chain_node.http(request)
        return node.http(request)

    mock = httpx.MockTransport(route)

    def client(**kwargs: Any) -> httpx.Client:
        return REAL_CLIENT(**{**kwargs, "transport": mock})

    monkeypatch.setattr(app_audit.httpx, "Client", client)
    monkeypatch.setattr(
        app_audit, "read_audit", lambda config, admin=None: read_audit(config, admin=node.admin)
    )
    r = CliRunner().invoke(cli, ["audit", "verify", "--config", str(config), "--json", *args])
    doc = json.loads(r.stdout) if r.exit_code in (0, 1) and r.stdout.strip() else {}
    return r.exit_code, doc, r.output


@pytest.fixture(scope="module")
def chain() -> ForgedChain:
    return committee_chain()


def test_an_honest_log_verifies_against_the_identity_in_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    node = Node(chain, log_entries(5), _identity(2))
    code, doc, output = verify(monkeypatch, node, write_config(tmp_path, 2, chain, pin=True))
    assert code == 0, output
    assert doc["ok"] is True and doc["index"] == 2 and doc["member"] == "current"
    assert doc["identity"] == _identity(2).verify_key().to_bytes().hex()
    assert doc["count"] == 5 and doc["chain_epoch"] == 6


def test_a_rewritten_log_re_signed_with_a_fresh_served_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    """The attack: the operator edits an entry, recomputes the chain, signs the new head
    with a fresh key and serves that key as its identity (admin channel and public head)."""
    honest = log_entries(5)
    rewritten = [*honest[:2], honest[2].replace('"purpose":"app"', '"purpose":"xyz"'), *honest[3:]]
    fresh = SigningKey.from_seed(bytes(range(32)))
    node = Node(chain, rewritten, fresh)
    code, doc, output = verify(monkeypatch, node, write_config(tmp_path, 2, chain, pin=True))
    assert code == 1, output
    assert doc["ok"] is False
    problems = " ".join(doc["problems"])
    assert "not by member 2's identity in the verified chain" in problems
    assert "public head names identity" in problems


def test_a_head_signed_by_another_members_real_identity_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    """Node 1's admin channel and port answer with member 3's genuine log and head."""
    node = Node(chain, log_entries(4), _identity(3))
    code, doc, output = verify(monkeypatch, node, write_config(tmp_path, 1, chain, pin=True))
    assert code == 1, output
    assert "not by member 1's identity" in " ".join(doc["problems"])


def test_a_removed_members_log_is_checked_against_its_certified_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    """Member 5 was added and removed in epochs the recent tail does not cover: its
    identity comes from the whole chain, paged from genesis and verified link by link."""
    node = Node(chain, log_entries(3), _identity(5))
    config = write_config(tmp_path, 5, chain, pin=True)
    code, doc, output = verify(monkeypatch, node, config)
    assert code == 0, output
    assert doc["member"] == "removed" and doc["named_in_epoch"] == 2
    liar = Node(chain, log_entries(3), SigningKey.from_seed(bytes(32)))
    code, doc, _ = verify(monkeypatch, liar, config)
    assert code == 1 and "not by member 5's identity" in " ".join(doc["problems"])


def test_the_chain_may_come_from_another_member_and_must_verify_from_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    """The audited node serves a chain of its own making (another master key, naming its
    fresh key as member 2): with ``--chain-url`` of another member the pinned identity
    comes from the real chain; from the node itself, its chain does not verify (exit 2)."""
    fresh = SigningKey.from_seed(bytes(range(32)))
    fake_members = list(participants(N + 1)[:N])
    fake = forged_chain(0, n=N, t=2, seed=7, committee=fake_members)
    liar = Node(fake, log_entries(2), fresh)
    honest_peer = Node(chain, [], _identity(1))
    config = write_config(tmp_path, 2, chain, pin=True)
    code, _, output = verify(monkeypatch, liar, config)
    assert code == 2 and "does not verify from the master public key" in " ".join(output.split())
    code, doc, output = verify(
        monkeypatch, liar, config, "--chain-url", "http://other", chain_node=honest_peer
    )
    assert code == 1, output
    assert doc["chain_url"] == "http://other"
    assert "not by member 2's identity" in " ".join(doc["problems"])


def test_truncation_is_detected_against_a_head_kept_from_an_earlier_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    """A node that drops its newest entries and signs the shorter head with its real
    identity passes a check on its own answers (nothing in them shows the loss); a head it
    signed earlier, kept by the auditor, shows it."""
    key = _identity(2)
    config = write_config(tmp_path, 2, chain, pin=True)
    full = Node(chain, log_entries(6), key)
    code, before, _ = verify(monkeypatch, full, config)
    assert code == 0
    kept = tmp_path / "head.json"
    kept.write_text(json.dumps(before))
    truncated = Node(chain, log_entries(4), key)
    code, doc, output = verify(monkeypatch, truncated, config)
    assert code == 0, output  # not detectable from the node's own answers
    code, doc, output = verify(monkeypatch, truncated, config, "--expect-head", str(kept))
    assert code == 1, output
    assert "truncated" in " ".join(doc["problems"])
    # A rewrite behind the kept head (same length, re-signed by the real key) too.
    rewritten = Node(chain, [*log_entries(1, start=9), *log_entries(5, start=1)], key)
    code, doc, _ = verify(monkeypatch, rewritten, config, "--expect-head", str(kept))
    assert code == 1 and "rewritten" in " ".join(doc["problems"])
    # The log grew honestly: the kept head is still its prefix.
    grown = Node(chain, [*log_entries(6), *log_entries(2, start=6)], key)
    code, doc, _ = verify(monkeypatch, grown, config, "--expect-head", str(kept))
    assert code == 0 and doc["count"] == 8


def test_a_public_head_that_is_not_a_head_of_the_log_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    """The node shows the public one log and the admin channel another (both really signed)."""
    key = _identity(2)
    node = Node(chain, log_entries(5), key)
    node.public_head = signed_head(log_entries(3, start=20), key)
    code, doc, _ = verify(monkeypatch, node, write_config(tmp_path, 2, chain, pin=True))
    assert code == 1 and "not a head of the chain" in " ".join(doc["problems"])


def test_without_a_master_public_key_the_command_says_how_to_get_one(
    tmp_path: Path, chain: ForgedChain
) -> None:
    config = write_config(tmp_path, 2, chain, pin=False)
    r = CliRunner().invoke(cli, ["audit", "verify", "--config", str(config)])
    assert r.exit_code == 2
    assert "kms member mpk" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["audit", "verify", "--config", str(config), "--mpk", "00" * 96])
    assert r.exit_code == 2 and "master public key refused" in r.output
    r = CliRunner().invoke(cli, ["audit", "verify"])
    assert r.exit_code == 2 and "--config" in r.output


def test_audit_show_prints_one_line_per_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    import kms.cli.common as common

    node = Node(chain, log_entries(5), _identity(2))
    monkeypatch.setattr(common, "admin_request", node.admin)
    config = write_config(tmp_path, 2, chain, pin=True)
    r = CliRunner().invoke(cli, ["audit", "show", "--config", str(config), "--start", "1"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == [
        "1",
        "2027-01-15T08:00:01Z",
        "key-release",
        "app=" + "ab" * 20,
        "purpose=app",
    ]
    r = CliRunner().invoke(
        cli, ["audit", "show", "--config", str(config), "--start", "3", "--limit", "1", "--json"]
    )
    assert r.exit_code == 0
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {"position": 3, "record": json.loads(log_entries(1, start=3)[0])}
    ]
    r = CliRunner().invoke(cli, ["audit", "show", "--config", str(config), "--start", "99"])
    assert r.exit_code == 0 and r.stdout.strip() == "(none)"


def test_a_malformed_admin_answer_is_an_error_line_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: ForgedChain
) -> None:
    node = Node(chain, log_entries(2), _identity(2))
    config = write_config(tmp_path, 2, chain, pin=True)
    for answer in ({"ok": True}, {"ok": True, "audit": {"entries": 5}}, {"ok": True, "audit": []}):
        node.admin = lambda config, request, answer=answer: answer  # type: ignore[method-assign]
        code, _, output = verify(monkeypatch, node, config)
        assert code == 2, output
        assert one_line(output).startswith("error: the node's admin channel answered a malformed")
