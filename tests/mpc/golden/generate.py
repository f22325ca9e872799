"""Golden wire bytes for every registered message type (FROST ``tests/snapshots/`` style).

``golden_messages()`` builds one instance of every message type in
``mpc.codec.mpc_message_types()`` from fixed seeds only: identity keys come from
``SigningKey.from_seed``, DKG keys from ``hpke.derive_key_pair``, HPKE
encapsulation draws from a SHA-256 counter stream, and polynomial coefficients
are hashes of fixed labels. Nothing depends on the OS, the clock or on the
protocol state machines, so the bytes change only when the wire format (or a
primitive: Ed25519, HPKE, BLS) changes. The signatures are real: the
certificates verify under the MPK, the acknowledgement and the evidence verify
under the signers' identity keys.

``tests/mpc/test_codec.py`` recomputes every encoding and compares it with
``messages.json`` (type name → hex of ``encode()``). Regenerate the file with::

    .venv/bin/python tests/mpc/golden/generate.py

A diff in ``messages.json`` means the wire format changed: deployed nodes will
refuse (or, worse, misread) the new bytes. Bump ``VERSION`` of every changed
message type, and of the messages that embed it, before committing the new
file; regenerate only to record such a deliberate, versioned change.
``--check`` compares without writing (exit status 1 on a difference).
"""

# ``mpc.cert`` imports ``mpc.dkg.messages``, whose package ``__init__`` imports
# ``mpc.dkg.session``, which imports ``mpc.cert``: importing ``mpc.cert`` first
# in a fresh interpreter fails on that cycle, so load ``mpc.dkg`` before it.
import mpc.dkg  # noqa: F401  # isort: skip

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from mpc import hpke
from mpc.broadcast import (
    BroadcastPayload,
    DigestRelay,
    EquivocationEvidence,
    PullRequest,
    RelaySignature,
    SignedDigest,
    session_id,
    statement,
)
from mpc.cert import (
    ZERO_HASH,
    EpochCertificate,
    EpochTranscript,
    cert_base,
    hash_indices,
    hash_points,
    sign_partial,
)
from mpc.codec import Message, message_types
from mpc.dkg.evidence import InvalidJustificationEvidence, ReshareConstantEvidence
from mpc.dkg.messages import (
    CertificatePartial,
    DealBundle,
    DealsAnswer,
    DealsRequest,
    EncryptedShare,
    JustificationBundle,
    Participant,
    Response,
    ResponseBundle,
    RevealedShare,
    RunKey,
)
from mpc.ids import ParticipantIndex
from mpc.math import G2, R
from mpc.math.fields import scalar_to_bytes
from mpc.membership.messages import (
    AddMember,
    Ballot,
    ChainRequest,
    ChainUpdate,
    ChangeAdmissionPolicy,
    ChangeThreshold,
    GenesisEndorsement,
    GenesisEndorsements,
    LockReport,
    MembershipCertificate,
    MembershipIntent,
    MembershipOutcome,
    OutcomePartial,
    Proposal,
    ProposalNotice,
    Refresh,
    RemoveMember,
)
from mpc.reshare.retention import Acknowledgement
from mpc.secret import SecretScalar, SecretShare
from mpc.sig import CTX_BROADCAST_DIGEST, CTX_BROADCAST_RELAY, CTX_DKG_KEY, SigningKey


def mpc_message_types() -> dict[str, type]:
    """The wire types of the ``mpc`` protocols (``kms`` registers its own, tested apart)."""
    return {k: v for k, v in message_types().items() if v.__module__.startswith("mpc.")}


GOLDEN_FILE = Path(__file__).with_name("messages.json")

N = 4
T = 2
MEMBERS = tuple(range(1, N + 1))


def label(*parts: str | int) -> bytes:
    """32 bytes named by ``parts``: the only source of "randomness" here."""
    return hashlib.sha256("/".join(["golden", *map(str, parts)]).encode()).digest()


def stream(name: str) -> Callable[[int], bytes]:
    """A deterministic ``rng(n)``: SHA-256 in counter mode over ``name``."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += label(name, counter)
            counter += 1
        return out[:n]

    return rng


def scalar(*parts: str | int) -> int:
    return int.from_bytes(label(*parts), "big") % R


def evaluate(coefficients: list[int], x: int) -> int:
    return sum(c * pow(x, k, R) for k, c in enumerate(coefficients)) % R


def identity_key(index: int) -> SigningKey:
    return SigningKey.from_seed(label("identity", index))


def participant(index: int) -> Participant:
    key = identity_key(index)
    _, dkg_pub = hpke.derive_key_pair(label("dkg-key", index))
    sig = key.sign(CTX_DKG_KEY, Participant.dkg_key_statement(index, dkg_pub))
    return Participant(index, key.verify_key().to_bytes(), dkg_pub, sig)


def signed(session: bytes, sender: int, payload: bytes) -> BroadcastPayload:
    """What ``BroadcastRound.make_payload`` produces for ``sender``'s slot."""
    digest = hashlib.sha256(payload).digest()
    sig = identity_key(sender).sign(
        CTX_BROADCAST_DIGEST, statement(session, ParticipantIndex(sender), digest)
    )
    return BroadcastPayload(SignedDigest(session, sender, digest, sig), payload)


def deal(
    dealer: int, coefficients: list[int], recipients: tuple[int, ...], bad: frozenset[int]
) -> DealBundle:
    commitments = tuple((c * G2.generator()).to_bytes() for c in coefficients)
    aad = DealBundle(dealer, commitments, ()).commitments_hash()
    rng = stream(f"hpke/{dealer}/{len(coefficients)}")
    shares = []
    for j in recipients:
        value = (evaluate(coefficients, j) + (1 if j in bad else 0)) % R
        pk = participant(j).dkg_key
        info = b"golden/share/" + bytes([dealer, j])
        enc, ct = hpke.seal(pk, info, aad, scalar_to_bytes(value), rng=rng)
        shares.append(EncryptedShare(j, enc, ct))
    return DealBundle(dealer, commitments, tuple(shares))


def golden_messages() -> dict[str, Message]:
    """One deterministic, internally consistent instance of every message type."""
    committee = tuple(participant(i) for i in MEMBERS)
    polys = {d: [scalar("poly", d, k) for k in range(T)] for d in MEMBERS}
    group = [sum(polys[d][k] for d in MEMBERS) % R for k in range(T)]
    secret = group[0]
    public_polynomial = tuple((c * G2.generator()).to_bytes() for c in group)
    shares = {
        j: SecretShare(ParticipantIndex(j), SecretScalar(evaluate(group, j))) for j in MEMBERS
    }

    run = label("run")
    deal_session = session_id(run, b"deal")
    justify_session = session_id(run, b"justify")

    # Dealer 3 deals a bad share to member 1 and then reveals another bad one.
    deals = {d: deal(d, polys[d], MEMBERS, frozenset({1} if d == 3 else ())) for d in MEMBERS}
    deal_payload = signed(deal_session, 1, deals[1].encode())
    header = deal_payload.header
    relays = tuple(
        RelaySignature(i, identity_key(i).sign(CTX_BROADCAST_RELAY, header.statement()))
        for i in (2, 3)
    )
    responses = ResponseBundle(1, tuple(Response(d, d == 3) for d in MEMBERS))
    justification = JustificationBundle(
        3, (RevealedShare(1, scalar_to_bytes(evaluate(polys[3], 1) + 1)),)
    )
    invalid_justification = InvalidJustificationEvidence(
        run,
        signed(deal_session, 3, deals[3].encode()),
        signed(justify_session, 3, justification.encode()),
        1,
    )
    # Dealer 2 signs two different deals for its one slot.
    other = deal(2, [scalar("equivocation", k) for k in range(T)], MEMBERS, frozenset())
    a = signed(deal_session, 2, deals[2].encode()).header
    b = signed(deal_session, 2, other.encode()).header
    equivocation = EquivocationEvidence(*sorted((a, b), key=lambda h: h.digest))
    # A reshare dealer 4 whose constant term is not its share.
    wrong = [(evaluate(group, 4) + 1) % R, scalar("reshare", 4, 1)]
    reshare_constant = ReshareConstantEvidence(
        label("reshare"),
        signed(
            session_id(label("reshare"), b"deal"), 4, deal(4, wrong, MEMBERS, frozenset()).encode()
        ),
    )

    transcript = EpochTranscript(
        kind="dkg",
        epoch=0,
        attempt=0,
        mpk=public_polynomial[0],
        threshold=T,
        committee=committee,
        qual_hash=hash_indices(MEMBERS),
        public_polynomial_hash=hash_points(public_polynomial),
        admission_policy_hash=hashlib.sha256(b"golden admission policy").digest(),
        previous_certificate_hash=ZERO_HASH,
    )
    signature = (secret * cert_base(transcript.encode())).to_bytes()
    certificate = EpochCertificate(transcript, public_polynomial, signature)
    partial = CertificatePartial(
        1, transcript.hash(), sign_partial(shares[1], transcript.encode()).to_bytes()
    )
    ack = Acknowledgement.create(certificate, shares[2], identity_key(2))

    add = AddMember(participant(5), b"golden attestation evidence")
    proposal = Proposal.of(0, certificate.hash(), 1, label("nonce")[:16], add)
    ballot = Ballot(0, 1, 1, (proposal,), (proposal.id(),))
    outcome = MembershipOutcome(0, 1, certificate.hash(), proposal, 1_000)
    outcome_partial = OutcomePartial(
        1, outcome.fingerprint(), sign_partial(shares[1], outcome.encode()).to_bytes()
    )
    membership_certificate = MembershipCertificate(
        outcome, (secret * cert_base(outcome.encode())).to_bytes()
    )
    window_session = session_id(b"membership", certificate.hash(), (1).to_bytes(8, "big"))
    lock = LockReport(
        outcome, 1, outcome_partial.signature, (signed(window_session, 1, ballot.encode()),)
    )
    intent = MembershipIntent((proposal,), (proposal.id(),), (bytes(32),))
    notice = ProposalNotice(proposal)

    endorsement = GenesisEndorsement.create(identity_key(1), 1, transcript)
    run_key = RunKey.create(run, 1, hpke.derive_key_pair(label("run-key", 1))[1], identity_key(1))

    instances: list[Message] = [
        run_key,
        header,
        deal_payload,
        PullRequest(deal_session, 1, header.digest),
        DigestRelay(header, relays),
        relays[0],
        transcript,
        certificate,
        outcome,
        membership_certificate,
        outcome_partial,
        partial,
        deals[1],
        deals[1].shares[0],
        justification,
        Response(3, True),
        responses,
        justification.shares[0],
        equivocation,
        invalid_justification,
        reshare_constant,
        add,
        ChangeAdmissionPolicy(b"golden admission policy"),
        ballot,
        proposal,
        Refresh(),
        RemoveMember(4, b"golden removal evidence"),
        ChangeThreshold(3),
        ChainUpdate(
            ("epoch", "membership"), (certificate.encode(), membership_certificate.encode())
        ),
        ChainRequest(1),
        lock,
        intent,
        notice,
        GenesisEndorsements((endorsement,)),
        endorsement,
        committee[0],
        ack,
        DealsRequest(run),
        DealsAnswer(
            run,
            tuple(MEMBERS),
            tuple(signed(deal_session, d, deals[d].encode()) for d in MEMBERS),
            (signed(justify_session, 3, justification.encode()),),
        ),
    ]
    out = {m.TYPE: m for m in instances}
    if len(out) != len(instances):
        raise AssertionError("two golden instances of one type")
    return dict(sorted(out.items()))


def golden_hex() -> dict[str, str]:
    messages = golden_messages()
    missing = sorted(set(mpc_message_types()) - set(messages))
    if missing:
        raise SystemExit(f"no golden instance for {missing}: add one to golden_messages()")
    return {name: m.encode().hex() for name, m in messages.items()}


def render(golden: dict[str, str]) -> str:
    return json.dumps(golden, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(golden_hex())
    if "--check" in argv:
        current = GOLDEN_FILE.read_text() if GOLDEN_FILE.exists() else ""
        if current != text:
            print(f"{GOLDEN_FILE} is out of date: the wire format changed", file=sys.stderr)
            return 1
        return 0
    GOLDEN_FILE.write_text(text)
    print(f"wrote {len(json.loads(text))} messages to {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
