"""The key-release pipeline (``kms.node.release``) on values: every refusal reason is reached
by the input an attacker (or a stale node) controls, in the documented order; the quote is
parsed once per request; the releaser holds no callables."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from release_committee import genesis_cores

import kms.attest.verify as attest_verify
from kms.attest import QuoteFailure, QuoteVerificationError, Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.core import KeyRequestSession
from kms.node.release import (
    CERT_ONLY_REASONS,
    Admitted,
    AppFrozen,
    AppNotMeasured,
    AwaitingCommittee,
    BundleUnusable,
    Candidate,
    KeyRefusalReason,
    KeyReleaser,
    Needs,
    NoCommittee,
    Released,
    ReleaseInputs,
    ReleaseRefused,
    gate,
)
from kms.policy import AppPolicy, Measurement, OwnerKey
from kms.protocol import EphemeralKey, KeyRequest
from mpc.ids import ParticipantIndex as PI

NOW = 1_800_000_000
MR = {
    name: bytes([i + 1]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
R = KeyRefusalReason


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    nodes, cores, _ = genesis_cores(3, 2, key_seed=81, rng_seed=8, mesh_seed=3)
    from mpc.membership import verify_chain

    mpk = cores[PI(1)].state.mpk
    chain = verify_chain(cores[PI(2)].chain, mpk=mpk)
    tee = SimulatedTEE(random.Random(21).randbytes, now=NOW)
    owner = OwnerKey.from_seed(bytes([3]) * 32)
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**MR)],
        kms_mpk=mpk.to_bytes(),
        not_before=NOW - 60,
    )
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    return {
        "chain": chain,
        "tee": tee,
        "owner": owner,
        "policy": policy,
        "share": cores[PI(1)].share,
        "releaser": KeyReleaser(PI(1), nodes[PI(1)].identity, verifier),
        "identity": nodes[PI(1)].identity,
        "verifier": verifier,
        "collateral": tee.collateral(NOW),
    }


def request(w: dict[str, Any], *, seed: int = 1, now: int = NOW, tee: Any = None) -> KeyRequest:
    s = KeyRequestSession(
        w["chain"], w["owner"].app_id(), (("app", 1),), now=now, rng=random.Random(seed).randbytes
    )
    return s.attach_quote((tee or w["tee"]).quote(s.report_data, **MR))


def inputs(w: dict[str, Any], **kw: Any) -> ReleaseInputs:
    base: dict[str, Any] = {
        "now": NOW,
        "epoch": w["chain"].epoch,
        "share": w["share"],
        "nonce_seen": False,
        "app": Admitted(w["policy"]),
        "collateral": w["collateral"],
        "rng": random.Random(5).randbytes,
    }
    return ReleaseInputs(**{**base, **kw})


def run(
    w: dict[str, Any],
    req: KeyRequest,
    *,
    releaser: KeyReleaser | None = None,
    now: int = NOW,
    share: Any = "node",
    nonce_seen: bool = False,
    **kw: Any,
) -> Released | ReleaseRefused:
    """check, screen, gate, answer: the order the release role runs them in."""
    r = releaser or w["releaser"]
    share = w["share"] if share == "node" else share
    needs = r.check(req, now=now, share=share)
    if isinstance(needs, ReleaseRefused):
        return needs
    early = r.screen(needs, now=now, nonce_seen=nonce_seen)
    if early is not None:
        return early
    ins = inputs(w, now=now, share=share, nonce_seen=nonce_seen, **kw)
    closed = gate(needs, ins.app)
    if closed is not None:
        return closed
    return r.answer(needs, ins)


def requote(w: dict[str, Any], req: KeyRequest, body: Any) -> KeyRequest:
    """The same request with another body, quoted again over it (a CVM may send any body)."""
    return replace(req, body=body, quote=w["tee"].quote(body.report_data(), **MR))


def _malformed(w: dict[str, Any]) -> Released | ReleaseRefused:
    # An ephemeral key for this node that HPKE cannot encrypt to (the all-zero point).
    req = request(w, seed=2)
    keys = tuple(
        EphemeralKey(k.index, bytes(32)) if k.index == 1 else k for k in req.body.ephemeral_keys
    )
    return run(w, requote(w, req, replace(req.body, ephemeral_keys=keys)))


def _no_key_for_index(w: dict[str, Any]) -> Released | ReleaseRefused:
    other = KeyReleaser(PI(9), w["identity"], w["verifier"])
    return run(w, request(w), releaser=other)


def _binding(w: dict[str, Any]) -> Released | ReleaseRefused:
    return run(w, replace(request(w), quote=request(w, seed=3).quote))


def _quote(w: dict[str, Any]) -> Released | ReleaseRefused:
    rogue = SimulatedTEE(random.Random(22).randbytes, now=NOW)
    return run(w, request(w, tee=rogue))


def _policy(w: dict[str, Any]) -> Released | ReleaseRefused:
    other = AppPolicy.build(
        app_id=w["owner"].app_id(),
        version=1,
        owner_key=w["owner"].public_bytes(),
        measurements=[Measurement.explicit(**{**MR, "rtmr3": bytes(48)})],
        kms_mpk=w["chain"].mpk.to_bytes(),
        not_before=NOW - 60,
    )
    return run(w, request(w), app=Admitted(other))


CASES = {
    R.MALFORMED: _malformed,
    R.NOT_SERVING: lambda w: run(w, request(w), share=None),
    R.NO_KEY_FOR_INDEX: _no_key_for_index,
    R.STALE: lambda w: run(w, request(w), now=NOW + 3600),
    R.BINDING: _binding,
    R.REPLAY: lambda w: run(w, request(w), nonce_seen=True),
    R.QUOTE: _quote,
    R.NO_POLICY: lambda w: run(w, request(w), app=Admitted(None)),
    R.POLICY: _policy,
    R.FROZEN: lambda w: run(w, request(w), app=AppFrozen()),
    R.BUNDLE: lambda w: run(w, request(w), app=BundleUnusable("another owner chain")),
    R.RETRY: lambda w: run(w, request(w), app=AwaitingCommittee()),
}


KEY_REQUEST_REASONS = [r for r in KeyRefusalReason if r not in CERT_ONLY_REASONS]


def test_every_reason_has_a_case() -> None:
    assert set(CASES) == set(KEY_REQUEST_REASONS)


@pytest.mark.parametrize("reason", KEY_REQUEST_REASONS, ids=lambda r: r.value)
def test_each_refusal_reason_is_reached_by_its_input(world: Any, reason: KeyRefusalReason) -> None:
    res = CASES[reason](world)
    assert isinstance(res, ReleaseRefused), res
    assert res.reason is reason, res
    assert res.refusal.reason == reason.value  # the wire answer carries the code


def test_the_same_request_with_good_inputs_is_released(world: Any) -> None:
    res = run(world, request(world))
    assert isinstance(res, Released)
    assert res.nonce == bytes(request(world).body.nonce)
    assert [a.purpose for a in res.audit] == ["app"]


def test_the_refusal_order_holds_when_several_checks_fail(world: Any) -> None:
    """Cheapest first: a replayed nonce is refused before the quote's chain is checked, and
    a stale timestamp before the quote is parsed."""
    rogue = SimulatedTEE(random.Random(23).randbytes, now=NOW)
    assert run(world, request(world, tee=rogue), nonce_seen=True).reason is R.REPLAY  # type: ignore[union-attr]
    junk = replace(request(world), quote=b"not a quote")
    assert run(world, junk, now=NOW + 3600).reason is R.STALE  # type: ignore[union-attr]
    assert run(world, junk).reason is R.QUOTE  # type: ignore[union-attr]


def test_answer_judges_again_what_may_have_changed_while_collateral_was_fetched(
    world: Any,
) -> None:
    r: KeyReleaser = world["releaser"]
    needs = r.check(request(world), now=NOW, share=world["share"])
    assert isinstance(needs, Needs)
    assert r.screen(needs, now=NOW, nonce_seen=False) is None
    later = {
        "share": (dict(share=None), R.NOT_SERVING),
        "time": (dict(now=NOW + 3600), R.STALE),
        "nonce": (dict(nonce_seen=True), R.REPLAY),
        "frozen": (dict(app=AppFrozen()), R.FROZEN),
        "no collateral": (
            dict(collateral=QuoteVerificationError(QuoteFailure.COLLATERAL_UNAVAILABLE, "none")),
            R.QUOTE,
        ),
    }
    for name, (change, reason) in later.items():
        res = r.answer(needs, inputs(world, **change))
        assert isinstance(res, ReleaseRefused) and res.reason is reason, name


def test_gate_maps_every_app_state(world: Any) -> None:
    needs = world["releaser"].check(request(world), now=NOW, share=world["share"])
    assert gate(needs, Admitted(None)) is None
    assert gate(needs, Candidate(world["policy"])) is None
    assert gate(needs, AppNotMeasured()).reason is R.POLICY  # type: ignore[union-attr]
    assert gate(needs, NoCommittee()).reason is R.NOT_SERVING  # type: ignore[union-attr]


def test_a_candidate_policy_needs_a_cvm_that_measured_the_app(world: Any) -> None:
    """Admitting a new app takes an event log naming it: without one, a candidate policy
    refuses what the same policy admits for an admitted app."""
    assert isinstance(run(world, request(world), app=Admitted(world["policy"])), Released)
    res = run(world, request(world), app=Candidate(world["policy"]))
    assert isinstance(res, ReleaseRefused) and res.reason is R.POLICY
    assert not world["releaser"].check(request(world), now=NOW, share=world["share"]).measures_app()


def test_the_quote_is_parsed_once_per_request(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One decode of the quote's bytes (``kms.attest.verify._parse``, dcap-qvl's parser)
    for the whole pipeline: check parses it, screen and answer reuse the parsed quote."""
    calls: list[int] = []
    real = attest_verify._parse

    def counting(quote: bytes) -> Any:
        calls.append(len(quote))
        return real(quote)

    monkeypatch.setattr(attest_verify, "_parse", counting)
    res = run(world, request(world, seed=11))
    assert isinstance(res, Released)
    assert len(calls) == 1


def test_the_releaser_holds_no_callables(world: Any) -> None:
    r: KeyReleaser = world["releaser"]
    held = {k: v for k, v in vars(r).items() if callable(v)}
    assert held == {}
