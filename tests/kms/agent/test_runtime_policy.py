"""The agent reads the app's current policy from the nodes' answers (``GET
/v1/policies/{app}``), and nodes that lie cannot raise the root version it asks for: only a
bundle the app's owner signed, for this app and this master public key, valid now, counts.

Each lying node answers over HTTP (an ``httpx.MockTransport`` standing for the network) with
what an attacker controlling it could send."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from kms.agent.runtime import AgentError, clear_stale_socket, current_policy, loopback
from kms.policy import (
    AppPolicy,
    Measurement,
    OwnerChain,
    OwnerKey,
    Pins,
    PolicyBundle,
    SignedPolicy,
)
from kms.policy.app import CTX_APP_POLICY
from kms.policy.policy import MinKeyVersion

MPK = bytes.fromhex(
    "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d"
    "055d042b7e024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805"
    "bbefd48056c8c121bdb8"
)
NOW = int(time.time())
IMAGE = {k: bytes([i + 1]) * 48 for i, k in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2"))}


def _bundle(
    owner: OwnerKey,
    version: int,
    *,
    signer: OwnerKey | None = None,
    mpk: bytes = MPK,
    root_version: int = 0,
    expires: int | None = None,
    rotations: tuple = (),
) -> PolicyBundle:
    pins = (
        Pins.build(min_key_versions=(MinKeyVersion("dstack-app-root", root_version),))
        if root_version
        else None
    )
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=version,
        owner_key=(signer or owner).public_bytes(),
        measurements=[Measurement.compose(**IMAGE, compose_hash=bytes(32))],
        kms_mpk=mpk,
        not_before=NOW - 60,
        expires=expires or NOW + 3600,
        purposes=("dstack-app-root",),
        pins=pins,
    )
    return PolicyBundle(policy.sign(signer or owner), rotations)


def _forged_signature(bundle: PolicyBundle) -> PolicyBundle:
    other = OwnerKey.from_seed(bytes([9]) * 32)
    policy = bundle.signed.policy
    return PolicyBundle(SignedPolicy(policy, other.sign(CTX_APP_POLICY, policy.encode())), ())


def _nodes(answers: dict[str, object]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        answer = answers[f"http://{request.url.host}"]
        if isinstance(answer, PolicyBundle):
            p = answer.signed.policy
            return httpx.Response(200, json={"version": p.version, "bundle": answer.encode().hex()})
        if isinstance(answer, dict):
            return httpx.Response(200, json=answer)
        return httpx.Response(404, json={"error": "no current policy"})

    return httpx.MockTransport(handle)


def _current(answers: dict[str, object], app_id: bytes) -> PolicyBundle:
    bundle, _ = current_policy(list(answers), app_id, MPK, now=NOW, transport=_nodes(answers))
    return bundle


OWNER = OwnerKey.from_seed(bytes([1]) * 32)
APP = OWNER.app_id()


def test_the_highest_version_a_node_holds_wins() -> None:
    got = _current({"http://a": _bundle(OWNER, 3), "http://b": _bundle(OWNER, 4)}, APP)
    assert got.signed.policy.version == 4


@pytest.mark.parametrize(
    "forged",
    [
        # a higher version signed by a key that does not own the app
        lambda: _bundle(OWNER, 9, signer=OwnerKey.from_seed(bytes([2]) * 32)),
        # the owner's key named, the signature someone else's
        lambda: _forged_signature(_bundle(OWNER, 9)),
        # another app's genuine policy, higher version
        lambda: _bundle(OwnerKey.from_seed(bytes([3]) * 32), 9),
        # the app's owner signed it, for another committee's key
        lambda: _bundle(OWNER, 9, mpk=bytes.fromhex("a0") + MPK[1:]),
        # expired
        lambda: _bundle(OWNER, 9, expires=NOW - 1),
        # the summary claims a higher version; the bundle is the old one
        lambda: {"version": 9, "bundle": _bundle(OWNER, 2, root_version=5).encode().hex()},
        # a summary without any bundle
        lambda: {"version": 9, "purposes": ["dstack-app-root"]},
    ],
)
def test_a_lying_node_cannot_raise_the_version(forged: object) -> None:
    answer = forged() if callable(forged) else forged
    got = _current({"http://honest": _bundle(OWNER, 2), "http://liar": answer}, APP)
    assert got.signed.policy.version == 2


def test_the_owner_after_a_rotation_counts_and_the_old_one_no_longer() -> None:
    new = OwnerKey.from_seed(bytes([4]) * 32)
    chain = OwnerChain.genesis(OWNER.public_bytes())
    record = OWNER.rotate(chain, new.public_bytes())
    rotated = _bundle(OWNER, 5, signer=new, rotations=(record,))
    assert _current({"http://a": rotated}, APP).signed.policy.version == 5
    stale_owner = _bundle(OWNER, 6, rotations=(record,))
    got = _current({"http://a": rotated, "http://b": stale_owner}, APP)
    assert got.signed.policy.version == 5


def test_no_valid_policy_anywhere_is_an_error_naming_each_node() -> None:
    with pytest.raises(AgentError, match="no node holds a valid policy") as err:
        _current({"http://a": None, "http://b": _bundle(OWNER, 9, expires=NOW - 1)}, APP)
    assert "http://a" in str(err.value) and "http://b" in str(err.value)


@pytest.mark.parametrize("address", ["0.0.0.0:8090", "10.0.0.1:8090", "localhost:8090", "8090"])
def test_http_serves_on_loopback_addresses_only(address: str) -> None:
    with pytest.raises(AgentError, match="loopback"):
        loopback(address)
    assert loopback("127.0.0.1:8090") == ("127.0.0.1", 8090)
    assert loopback("[::1]:8090") == ("::1", 8090)


def test_a_stale_socket_is_replaced_only_when_nothing_answers(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, then closed: nothing answers there
    clear_stale_socket(stale)
    assert not stale.exists()
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(live))
        s.listen(1)
        with pytest.raises(AgentError, match="already answers"):
            clear_stale_socket(live)
        assert live.exists()
    plain = tmp_path / "not-a-socket"
    plain.write_text("data")
    with pytest.raises(AgentError, match="not a socket"):
        clear_stale_socket(plain)
    assert plain.read_text() == "data"
