"""The app-key certification pipeline (``kms.node.appcert``) on values: every refusal reason a
certificate request can get is reached by the input that causes it, and a certified answer
carries two partials that match the node's public share, signed by its identity."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from release_committee import genesis_cores

from kms.attest import QuoteFailure, QuoteVerificationError, Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.appcert import AppKeyCertSession
from kms.node.appcert import AppKeyCertifier, Certified, CertInputs, certified_name
from kms.node.release import (
    CERT_ONLY_REASONS,
    Admitted,
    AppFrozen,
    AwaitingCommittee,
    BundleUnusable,
    KeyRefusalReason,
    KeyReleaser,
    ReleaseRefused,
    gate,
)
from kms.policy import ROOT_PURPOSE, AppPolicy, Measurement, MinKeyVersion, OwnerKey, Pins
from kms.protocol import AppKeyCertRequest
from mpc import appcert
from mpc.codec import MessageDecodeError
from mpc.ids import ParticipantIndex as PI
from mpc.sig import VerifyKey

NOW = 1_800_000_000
MR = {
    name: bytes([i + 1]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
R = KeyRefusalReason
PK1 = bytes(coincurve.PrivateKey(b"\x01" * 32).public_key.format())
PK2 = bytes(coincurve.PrivateKey(b"\x02" * 32).public_key.format())


def policy(owner: OwnerKey, mpk: bytes, **kw: Any) -> AppPolicy:
    return AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**kw.pop("mr", MR))],
        kms_mpk=mpk,
        not_before=NOW - 60,
        purposes=kw.pop("purposes", ("app", ROOT_PURPOSE)),
        **kw,
    )


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    nodes, cores, _ = genesis_cores(3, 2, key_seed=91, rng_seed=9, mesh_seed=4)
    from mpc.membership import verify_chain

    mpk = cores[PI(1)].state.mpk
    chain = verify_chain(cores[PI(2)].chain, mpk=mpk)
    tee = SimulatedTEE(random.Random(31).randbytes, now=NOW)
    owner = OwnerKey.from_seed(bytes([4]) * 32)
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    return {
        "chain": chain,
        "tee": tee,
        "owner": owner,
        "policy": policy(owner, mpk.to_bytes()),
        "share": cores[PI(1)].share,
        "certifier": AppKeyCertifier(KeyReleaser(PI(1), nodes[PI(1)].identity, verifier)),
        "identity": nodes[PI(1)].identity,
        "collateral": tee.collateral(NOW),
    }


def request(
    w: dict[str, Any], *, seed: int = 1, version: int = 1, pk: bytes = PK1, tee: Any = None
) -> AppKeyCertRequest:
    s = AppKeyCertSession(
        w["chain"], w["owner"].app_id(), version, pk, now=NOW, rng=random.Random(seed).randbytes
    )
    return s.attach_quote((tee or w["tee"]).quote(s.report_data, **MR))


def run(
    w: dict[str, Any],
    req: AppKeyCertRequest,
    *,
    now: int = NOW,
    share: Any = "node",
    nonce_seen: bool = False,
    **kw: Any,
) -> Certified | ReleaseRefused:
    c: AppKeyCertifier = w["certifier"]
    share = w["share"] if share == "node" else share
    needs = c.check(req, now=now, share=share)
    if isinstance(needs, ReleaseRefused):
        return needs
    early = c.screen(needs, now=now, nonce_seen=nonce_seen)
    if early is not None:
        return early
    base: dict[str, Any] = {
        "now": now,
        "epoch": w["chain"].epoch,
        "share": share,
        "nonce_seen": nonce_seen,
        "app": Admitted(w["policy"]),
        "collateral": w["collateral"],
        "certified": None,
    }
    ins = CertInputs(**{**base, **kw})
    closed = gate(needs, ins.app)
    if closed is not None:
        return closed
    return c.answer(needs, ins)


def _pinned(w: dict[str, Any]) -> Certified | ReleaseRefused:
    pins = Pins.build(min_key_versions=[MinKeyVersion(ROOT_PURPOSE, 3)])
    pinned = policy(w["owner"], w["chain"].mpk.to_bytes(), pins=pins)
    return run(w, request(w, version=4), app=Admitted(pinned))


CASES = {
    R.NOT_SERVING: lambda w: run(w, request(w), share=None),
    R.STALE: lambda w: run(w, request(w), now=NOW + 3600),
    R.BINDING: lambda w: run(w, replace(request(w), quote=request(w, seed=3).quote)),
    R.REPLAY: lambda w: run(w, request(w), nonce_seen=True),
    R.QUOTE: lambda w: run(
        w,
        request(w),
        collateral=QuoteVerificationError(QuoteFailure.COLLATERAL_UNAVAILABLE, "none"),
    ),
    R.NO_POLICY: lambda w: run(w, request(w), app=Admitted(None)),
    R.POLICY: lambda w: run(
        w,
        request(w),
        app=Admitted(policy(w["owner"], w["chain"].mpk.to_bytes(), purposes=("app",))),
    ),
    R.FROZEN: lambda w: run(w, request(w), app=AppFrozen()),
    R.BUNDLE: lambda w: run(w, request(w), app=BundleUnusable("x")),
    R.RETRY: lambda w: run(w, request(w), app=AwaitingCommittee()),
    R.NOT_CURRENT_ROOT: _pinned,
    R.KEY_CONFLICT: lambda w: run(w, request(w), certified=PK2),
}
"""Not reachable by a certificate request: ``malformed-request`` (only an undecodable body,
refused before the pipeline) and ``no-ephemeral-key-for-this-node`` (no ephemeral keys)."""


def test_the_cert_only_reasons_and_the_cases_cover_the_enum() -> None:
    assert CERT_ONLY_REASONS <= set(CASES)
    assert set(CASES) | {R.MALFORMED, R.NO_KEY_FOR_INDEX} == set(KeyRefusalReason)


@pytest.mark.parametrize("reason", sorted(CASES, key=lambda r: r.value), ids=lambda r: r.value)
def test_each_refusal_reason_is_reached_by_its_input(world: Any, reason: KeyRefusalReason) -> None:
    res = CASES[reason](world)
    assert isinstance(res, ReleaseRefused), res
    assert res.reason is reason, res


def test_a_rogue_tee_is_refused_at_the_pck_chain(world: Any) -> None:
    rogue = SimulatedTEE(random.Random(32).randbytes, now=NOW)
    res = run(world, request(world, tee=rogue))
    assert isinstance(res, ReleaseRefused) and res.reason is R.QUOTE


def test_a_certified_answer_is_two_good_partials_signed_by_the_node(world: Any) -> None:
    req = request(world)
    res = run(world, req)
    assert isinstance(res, Certified), res
    share, chain, app = res.share, world["chain"], world["owner"].app_id()
    share.verify(VerifyKey.from_bytes(world["identity"].verify_key().to_bytes()))
    assert (share.index, share.epoch, share.version, share.root_public) == (1, chain.epoch, 1, PK1)
    assert share.request_hash == req.request_hash()
    public = chain.public_shares[PI(1)]
    link = appcert.CertPartial.from_bytes(PI(1), share.link_partial)
    qkms = appcert.CertPartial.from_bytes(PI(1), share.qkms_partial)
    assert appcert.verify_partial(link, appcert.link_message(app, PK1), public)
    assert appcert.verify_partial(qkms, appcert.qkms_message(app, PK1, 1, chain.epoch), public)
    assert res.record == (certified_name(app, 1), PK1)
    audit = res.audit.as_dict()
    assert audit["kind"] == "app-key-cert" and audit["purpose"] == ROOT_PURPOSE
    assert audit["root_public"] == PK1.hex() and audit["request"] == req.request_hash().hex()
    # The same key already certified: certified again.
    assert isinstance(run(world, request(world, seed=4), certified=PK1), Certified)
    # The pinned current version is certified.
    pins = Pins.build(min_key_versions=[MinKeyVersion(ROOT_PURPOSE, 3)])
    pinned = policy(world["owner"], chain.mpk.to_bytes(), pins=pins)
    assert isinstance(run(world, request(world, version=3), app=Admitted(pinned)), Certified)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_requests_decode_to_a_typed_refusal_or_are_refused_undecoded(
    world: Any, data: st.DataObject
) -> None:
    """Any bytes near a valid request: ``decode`` raises only ``MessageDecodeError``, and
    whatever decodes runs through the pipeline to a typed result, never an exception."""
    raw = bytearray(request(world).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        req = AppKeyCertRequest.decode(bytes(raw[: max(cut, len(raw) - 8)]))
    except MessageDecodeError:
        return
    res = run(world, req)
    assert isinstance(res, Certified | ReleaseRefused)
