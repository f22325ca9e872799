"""Checking a CVM's evidence that a node answered a key request with a wrong partial, sans-I/O.

A ``WrongPartialEvidence`` is the node's signed answer, the request, and the
private half of the ephemeral key the request bound for that node's index
(``kms.protocol``). The CVM client builds it (``kms.client.core``); the node
checks it before it gossips it or proposes removing the accused member
(``kms.node.service``, ``kms.node.admission``), and so does ``kms`` on the
command line. All of them use :func:`verify_wrong_partial` from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kms.protocol import KeyRequest, WrongCertPartialEvidence, WrongPartialEvidence, release_info
from mpc import appcert, hpke
from mpc.errors import DecryptionError, InvalidEncoding, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.math import G1
from mpc.membership import ChainState
from mpc.tkd import KeyId, Partial, verify_partial


def verify_wrong_partial(
    evidence: WrongPartialEvidence,
    chain: ChainState,
    app_id_of: Callable[[KeyRequest], bytes] | None = None,
) -> str:
    """Check CVM-disclosed evidence against a verified chain; returns what it proves.

    Raises ``InvalidSignature`` unless: the node of that index signed the answer,
    the answer names this request, the disclosed private key is the one the
    request bound for that index, and the partial either does not decrypt or
    does not match the node's public share.
    """
    req, share = evidence.request, evidence.response
    idx = ParticipantIndex(share.index)
    member = next((p for p in chain.committee.members if p.index == share.index), None)
    if member is None or share.epoch != chain.epoch:
        raise InvalidSignature("the answer's index or epoch is not in the verified chain")
    share.verify(member.verify_key())
    if share.request_hash != req.request_hash():
        raise InvalidSignature("the answer is for another request")
    sk = hpke.PrivateKey.from_private_bytes(evidence.ephemeral_private)
    if req.body.ephemeral_key(share.index) != sk.public_bytes():
        raise InvalidSignature("the disclosed key is not the one the request bound for this index")
    info = release_info(share.request_hash, share.purpose, share.epoch, share.index)
    try:
        point = G1.from_bytes(hpke.open(share.enc, sk, info, info, share.ciphertext))
    except (DecryptionError, InvalidEncoding):
        return "the signed partial does not decrypt"
    key_id = KeyId(
        (app_id_of or (lambda r: r.body.app_id))(req), share.purpose.purpose, share.purpose.version
    )
    if verify_partial(Partial(idx, point), key_id, chain.public_shares[idx]):
        raise InvalidSignature("the partial is correct")
    return "the signed partial does not match the node's public share"


def verify_wrong_cert_partial(evidence: WrongCertPartialEvidence, chain: ChainState) -> str:
    """Check a client's evidence that a node signed a wrong partial app-key certificate,
    against a verified chain; returns what it proves.

    Raises ``InvalidSignature`` unless: the node of that index signed the share for the
    chain's epoch, the share answers this request (its hash, app, version and root key),
    and one of its two partials does not decode or does not match the node's public
    share. Partials are public, so nothing secret is disclosed."""
    req, share = evidence.request, evidence.share
    member = next((p for p in chain.committee.members if p.index == share.index), None)
    if member is None or share.epoch != chain.epoch:
        raise InvalidSignature("the answer's index or epoch is not in the verified chain")
    share.verify(member.verify_key())
    body = req.body
    if (
        share.request_hash != req.request_hash()
        or share.app_id != body.app_id
        or share.version != body.version
        or share.root_public != body.root_public
    ):
        raise InvalidSignature("the answer is for another request")
    idx = ParticipantIndex(share.index)
    public = chain.public_shares[idx]
    app_id, pk = bytes(share.app_id), bytes(share.root_public)
    for name, raw, message in (
        ("link", share.link_partial, appcert.link_message(app_id, pk)),
        (
            "quorum-kms",
            share.qkms_partial,
            appcert.qkms_message(app_id, pk, share.version, share.epoch),
        ),
    ):
        try:
            partial = appcert.CertPartial.from_bytes(idx, raw)
        except InvalidEncoding:
            return f"the signed {name} partial does not decode"
        if not appcert.verify_partial(partial, message, public):
            return f"the signed {name} partial does not match the node's public share"
    raise InvalidSignature("the partials are correct")


__all__ = ["judge_wrong_partial", "verify_wrong_cert_partial", "verify_wrong_partial"]


def judge_wrong_partial(
    evidence: WrongPartialEvidence, epochs: Sequence[ChainState]
) -> dict[str, object]:
    """A third party's verdict on ``evidence`` (``kms evidence verify``), judged against the
    epoch its answer names among ``epochs`` verified from the pinned key (the last one if
    none matches): ``ok`` with what it ``proves``, or not ``ok`` with the ``error``."""
    chain = next((st for st in epochs if st.epoch == evidence.response.epoch), epochs[-1])
    try:
        proven = verify_wrong_partial(evidence, chain)
    except (InvalidSignature, InvalidEncoding) as exc:
        return {"ok": False, "node": evidence.response.index, "error": str(exc)}
    return {
        "ok": True,
        "node": evidence.response.index,
        "epoch": evidence.response.epoch,
        "proves": proven,
    }
