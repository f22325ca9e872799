"""The wire codec: every message type round-trips, has golden bytes, and decoding is strict.

* Every type in ``mpc_message_types()`` has a realistic instance, captured from a
  real DKG, byzantine DKGs, a reshare and a membership window on the mesh
  (the ``real`` fixture), and a deterministic one built from fixed seeds (``GOLDEN``, see
  ``golden/generate.py``). Both fail loudly when a new type is registered
  without an instance.
* Golden bytes (FROST ``tests/snapshots/``): ``golden/messages.json`` holds the
  hex encoding of every golden instance; a diff is a wire-format change.
* A rejection table: every malformed, non-canonical, oversized or invalid
  input raises ``MessageDecodeError`` (an ``InvalidEncoding``, a ``ValueError``).
* Fuzzing (h11 ``fuzz/``): arbitrary bytes, mutated golden encodings and
  msgpack values shaped like messages either decode to a message whose
  encoding is exactly the input, or raise ``MessageDecodeError``; nothing else.
* Evidence survives the codec and still verifies; a tampered signature does not,
  and neither should an honest dealer's signed
  messages taken from two different runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import importlib
import importlib.util
import json
import pkgutil
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import mesh
import msgpack
import pytest
from byzantine import Misbehaviour
from dkg_harness import Adversary, Run, check_agreement, run_sharing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mesh import Mesh, make_nodes

import mpc
from mpc import codec
from mpc.broadcast import BroadcastPayload, EquivocationEvidence, PullRequest, SignedDigest
from mpc.cert import EpochCertificate, EpochTranscript
from mpc.codec import (
    MAX_MESSAGE_SIZE,
    MaxSize,
    Message,
    MessageDecodeError,
    Size,
    decode,
    message_types,
)
from mpc.dkg.evidence import InvalidJustificationEvidence, ReshareConstantEvidence
from mpc.dkg.messages import (
    DealBundle,
    DealsRequest,
    JustificationBundle,
    Participant,
    Response,
)
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.membership import (
    AddMember,
    Ballot,
    ChangeAdmissionPolicy,
    ChangeThreshold,
    DecisionWindow,
    Proposal,
    ProposalNotice,
    Refresh,
    RemoveMember,
    WindowSchedule,
    genesis_state,
)
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
    GenesisEndorsement,
    GenesisEndorsements,
    MembershipIntent,
)
from mpc.reshare import Acknowledgement
from mpc.sig import VerifyKey


def mpc_message_types() -> dict[str, type]:
    """The wire types of the ``mpc`` protocols (``kms`` registers its own, tested apart)."""
    return {k: v for k, v in message_types().items() if v.__module__.startswith("mpc.")}


def _import_every_mpc_module() -> None:
    """Register every message type, whatever else this pytest process imported."""
    for info in pkgutil.walk_packages(mpc.__path__, "mpc."):
        importlib.import_module(info.name)


_import_every_mpc_module()
TYPES = mpc_message_types()


def _load_generator() -> types.ModuleType:
    path = Path(__file__).with_name("golden") / "generate.py"
    spec = importlib.util.spec_from_file_location("codec_golden_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()
GOLDEN: dict[str, Message] = generate.golden_messages()
GOLDEN_FILE: Path = generate.GOLDEN_FILE


def packb(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def walk(message: Message) -> Iterator[Message]:
    """``message``, every message nested in it, and the messages broadcast payloads carry."""
    yield message
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Message):
                yield from walk(v)
    if isinstance(message, BroadcastPayload):
        yield from walk(decode(message.payload))


# --- realistic instances, captured from protocol runs -----------------------------


@dataclass
class Real:
    """One captured instance per type, and the runs they came from."""

    instances: dict[str, Message]
    genesis: Run
    equivocation: Run
    invalid_justification: Run
    reshare_constant: Run


@contextlib.contextmanager
def recording() -> Iterator[list[Message]]:
    """Every message the mesh delivers while this is open, as decoded on arrival."""
    seen: list[Message] = []

    def record(data: bytes) -> Message:
        message = decode(data)
        seen.append(message)
        return message

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mesh, "decode", record)
        yield seen


def _capture_real() -> Real:
    with recording() as seen:
        nodes = make_nodes(range(1, 6), seed=1)
        genesis = run_sharing(
            4, 2, Adversary(), seed=1, nodes={i: nodes[i] for i in nodes if i <= 4}
        )
        res = check_agreement(genesis)
        certificate: EpochCertificate = genesis.sessions[PI(1)].certificate
        shares = {i: genesis.sessions[i].result.share for i in genesis.honest}

        # A membership window deciding to admit node 5 (ballots, outcome, partials, cert).
        state = genesis_state(res.mpk, certificate)
        add = AddMember(nodes[PI(5)].participant, b"TDX quote of node 5")
        proposal = Proposal.of(0, state.head_hash, 1, bytes(range(16)), add)
        sched = WindowSchedule(
            start=50.0, window=2.0, delta=1.0, sign_window=3.0, reshare_delay=5.0
        )
        windows = {
            i: DecisionWindow(
                state,
                0,
                sched,
                i,
                nodes[i].identity,
                shares[i],
                proposals=(proposal,) if i == 1 else (),
                approvals=(proposal.id(),) if i <= 2 else (),
            )
            for i in state.committee.indices
        }
        f = state.threshold - 1
        ticks = [sched.start - 1 + k * 0.25 for k in range(44)]  # live through the window
        window_mesh = Mesh(windows, seed=1, max_delay=0.3, ticks=ticks)
        window_mesh.run_until(sched.sign_end(f) + 1)
        membership_certificate = windows[PI(1)].certificate
        assert membership_certificate is not None
        lock = windows[PI(1)].lock
        assert lock is not None

        equivocation = run_sharing(5, 3, Adversary({2: Misbehaviour(equivocate_deal=True)}), seed=2)
        invalid_justification = run_sharing(
            5,
            3,
            Adversary({3: Misbehaviour(bad_share_to=frozenset({1}), justification="wrong")}),
            seed=2,
        )
        genesis_5_3 = run_sharing(5, 3, Adversary(), seed=25)
        res_5_3 = check_agreement(genesis_5_3)
        reshare_constant = run_sharing(
            4,
            3,
            Adversary({2: Misbehaviour(wrong_constant=True)}),
            seed=26,
            kind="reshare",
            dealers=[1, 2, 3, 4, 5],
            recipients=[1, 3, 4, 5],
            old={i: genesis_5_3.sessions[i].result.share for i in genesis_5_3.honest},
            old_public_polynomial=res_5_3.public_polynomial,
            old_threshold=3,
            epoch=1,
            nodes=genesis_5_3.nodes,
            start=100.0,
        )

    ev_eq = equivocation.exclusions(PI(1))[PI(2)].evidence
    ev_ij = invalid_justification.exclusions(PI(1))[PI(3)].evidence
    ev_rc = reshare_constant.exclusions(PI(1))[PI(2)].evidence
    ack = Acknowledgement.create(certificate, shares[PI(2)], nodes[PI(2)].identity)
    certified_deals = genesis.sessions[PI(1)].certified_deals()
    assert certified_deals is not None
    built: list[Message] = [
        certificate,
        membership_certificate,
        ack,
        ev_eq,
        ev_ij,
        ev_rc,
        RemoveMember(3, ev_eq.encode()),
        ChangeThreshold(3),
        ChangeAdmissionPolicy(b'{"mrtd": "' + bytes(48).hex().encode() + b'"}'),
        Refresh(),
        ChainUpdate(
            ("epoch", "membership"), (certificate.encode(), membership_certificate.encode())
        ),
        ChainRequest(1),
        DealsRequest(genesis.sessions[PI(1)].run_id),
        certified_deals,
        lock,
        MembershipIntent((proposal,), (proposal.id(),), (bytes(32),)),
        ProposalNotice(proposal),
        GenesisEndorsements(
            (GenesisEndorsement.create(nodes[PI(1)].identity, 1, certificate.transcript),)
        ),
    ]
    instances: dict[str, Message] = {}
    for message in [*seen, *built]:
        for m in walk(message):
            instances.setdefault(m.TYPE, m)
    if PullRequest.TYPE not in instances:  # pulls happen only when a relay outruns a payload
        h = next(m for m in seen if isinstance(m, BroadcastPayload)).header
        instances[PullRequest.TYPE] = PullRequest(h.session, h.sender, h.digest)
    return Real(
        dict(sorted(instances.items())),
        genesis,
        equivocation,
        invalid_justification,
        reshare_constant,
    )


@pytest.fixture(scope="module")
def real() -> Real:
    return _capture_real()


def test_every_registered_type_has_a_real_instance(real: Real) -> None:
    assert set(real.instances) == set(mpc_message_types()), (
        "add a realistic instance of each new message type to _capture_real()"
    )
    for name, m in real.instances.items():
        assert type(m) is TYPES[name]


def test_every_registered_type_has_a_golden_instance() -> None:
    assert set(GOLDEN) == set(mpc_message_types()), (
        "add a deterministic instance of each new message type to golden/generate.py"
    )
    for name, m in GOLDEN.items():
        assert type(m) is TYPES[name]


@pytest.mark.parametrize("name", sorted(TYPES))
def test_real_instance_round_trips(real: Real, name: str) -> None:
    m = real.instances[name]
    data = m.encode()
    assert decode(data) == m
    assert type(m).decode(data) == m
    assert type(type(m).decode(data)) is type(m)
    assert decode(bytearray(data)) == m
    assert decode(memoryview(data)) == m
    assert m.fingerprint() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("name", sorted(TYPES))
def test_golden_instance_round_trips(name: str) -> None:
    m = GOLDEN[name]
    assert decode(m.encode()) == m
    assert type(m).decode(m.encode()) == m


def test_the_schema_covers_only_supported_field_types() -> None:
    for cls in TYPES.values():
        for name, tp in codec._fields(cls):
            _check_field_type(tp, f"{cls.__name__}.{name}")


def _check_field_type(tp: Any, where: str) -> None:
    if get_origin(tp) is Annotated:
        tp, *extras = get_args(tp)
        assert all(isinstance(e, Size | MaxSize | _Since) for e in extras), where
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        assert len(args) == 1 and len(get_args(tp)) == 2, f"{where}: only T | None"
        return _check_field_type(args[0], where)
    if get_origin(tp) is tuple:
        inner, ellipsis = get_args(tp)
        assert ellipsis is Ellipsis, f"{where}: only tuple[T, ...]"
        return _check_field_type(inner, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = {type(m.value) for m in tp}
        assert values in ({str}, {int}), f"{where}: enum values all str or all int"
        return None
    assert tp in (int, bool, bytes, str) or issubclass(tp, Message), where
    return None


# --- golden bytes --------------------------------------------------------------


def test_golden_bytes_match_the_wire_format() -> None:
    stored = json.loads(GOLDEN_FILE.read_text())
    current = {name: m.encode().hex() for name, m in GOLDEN.items()}
    assert set(stored) == set(current), "regenerate golden/messages.json for new types"
    changed = sorted(name for name in current if stored[name] != current[name])
    assert not changed, (
        f"the wire format of {changed} changed: bump VERSION, then run golden/generate.py"
    )
    assert GOLDEN_FILE.read_text() == generate.render(current)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_golden_bytes_decode_to_the_golden_instance(name: str) -> None:
    stored = json.loads(GOLDEN_FILE.read_text())
    assert decode(bytes.fromhex(stored[name])) == GOLDEN[name]


def test_golden_instances_are_deterministic() -> None:
    again = generate.golden_messages()
    assert {n: m.encode() for n, m in again.items()} == {n: m.encode() for n, m in GOLDEN.items()}


def test_golden_instances_carry_valid_signatures() -> None:
    """The golden messages are realistic: every signature in them verifies."""
    key = {i: generate.identity_key(i).verify_key() for i in (1, 2, 3, 4)}
    cert = GOLDEN["cert/epoch-certificate"]
    mpk = G2.from_bytes(cert.transcript.mpk)
    cert.verify(mpk)
    for p in cert.transcript.committee:
        p.check()
    GOLDEN["reshare/ack"].verify(key[2])
    GOLDEN["dkg/run-key"].verify(key[1])
    GOLDEN["evidence/equivocation"].verify(key[2])
    GOLDEN["evidence/invalid-justification"].verify(key[3], run=generate.label("run"))
    GOLDEN["evidence/reshare-constant"].verify(
        key[4], cert.public_shares()[PI(4)], run=generate.label("reshare")
    )
    for name in ("bcast/payload", "bcast/relay"):
        h = GOLDEN[name].header
        key[h.sender].verify(generate.CTX_BROADCAST_DIGEST, h.statement(), h.signature)
    relay = GOLDEN["bcast/relay"]
    for r in relay.relays:
        key[r.relayer].verify(generate.CTX_BROADCAST_RELAY, relay.header.statement(), r.signature)


# --- the rejection table -----------------------------------------------------------


def wire(name: str) -> list[Any]:
    """The golden instance of ``name`` as a msgpack-ready list, to corrupt."""
    return GOLDEN[name].to_wire()


def with_field(name: str, index: int, value: Any) -> bytes:
    """The golden ``name`` with field ``index`` (0 is the first field) replaced."""
    w = wire(name)
    w[2 + index] = value
    return packb(w)


def replaced(name: str, **changes: Any) -> bytes:
    """The golden ``name`` with fields changed, encoded without validation."""
    return dataclasses.replace(GOLDEN[name], **changes).encode()


def response(*items: bytes) -> bytes:
    """A hand-assembled ``Response``: fixarray of 4, type, then raw items."""
    return b"\x94" + packb("dkg/response") + b"".join(items)


PULL = GOLDEN["bcast/pull"]
DEAL: DealBundle = GOLDEN["dkg/deal"]
TRANSCRIPT: EpochTranscript = GOLDEN["cert/epoch"]
CERT: EpochCertificate = GOLDEN["cert/epoch-certificate"]


@dataclass(frozen=True, slots=True)
class _BoundedStr(Message):
    """A bounded ``str`` field (no ``mpc`` message has one since kinds became enums)."""

    TYPE = "test/bounded-str"
    name: Annotated[str, MaxSize(16)]


REJECTED: list[tuple[str, Callable[[], bytes], str]] = [
    # Not a message at all.
    ("empty bytes are rejected", lambda: b"", "malformed msgpack"),
    ("a reserved msgpack byte is rejected", lambda: b"\xc1", "malformed msgpack"),
    ("non-msgpack garbage is rejected", lambda: b"\xdc\xff\xffgarbage", "malformed msgpack"),
    ("invalid UTF-8 in a str is rejected", lambda: b"\x92\xa2\xff\xfe\x01", "malformed msgpack"),
    ("a truncated message is rejected", lambda: PULL.encode()[:-1], "malformed msgpack"),
    ("a msgpack map is rejected", lambda: packb({"bcast/pull": 1}), "malformed msgpack"),
    ("an empty map is rejected", lambda: b"\x80", "not a message array"),
    ("a msgpack ext value is rejected", lambda: b"\xd4\x01\x00", "malformed msgpack"),
    ("a bare string is rejected", lambda: packb("bcast/pull"), "not a message array"),
    ("an empty array is rejected", lambda: packb([]), "not a message array"),
    ("a non-string type name is rejected", lambda: packb([7, 1]), "not a message array"),
    (
        "a type name sent as bytes is rejected",
        lambda: packb([b"dkg/response", 1, 3, True]),
        "not a message array",
    ),
    ("an unknown type name is rejected", lambda: packb(["dkg/nope", 1]), "unknown message type"),
    (
        "a type name missing its version is rejected",
        lambda: packb(["member/refresh"]),
        "not a message array",
    ),
    # Versions.
    ("version 2 is rejected", lambda: packb(["dkg/response", 2, 3, True]), "unsupported version"),
    ("version 0 is rejected", lambda: packb(["dkg/response", 0, 3, True]), "unsupported version"),
    ("version -1 is rejected", lambda: packb(["dkg/response", -1, 3, True]), "unsupported"),
    ("version True is rejected", lambda: packb(["dkg/response", True, 3, True]), "unsupported"),
    ("version None is rejected", lambda: packb(["dkg/response", None, 3, True]), "unsupported"),
    ("version '1' is rejected", lambda: packb(["dkg/response", "1", 3, True]), "unsupported"),
    ("version 1.0 is rejected", lambda: packb(["dkg/response", 1.0, 3, True]), "non-canonical"),
    (
        "a nested message of version 2 is rejected",
        lambda: with_field("bcast/payload", 0, ["bcast/digest", 2, *wire("bcast/digest")[2:]]),
        "unsupported version",
    ),
    # Arity.
    ("too few fields are rejected", lambda: packb(["dkg/response", 1, 3]), "expected 2 fields"),
    (
        "too many fields are rejected",
        lambda: packb(["dkg/response", 1, 3, True, None]),
        "expected 2 fields",
    ),
    (
        "a field on a fieldless message is rejected",
        lambda: packb(["member/refresh", 1, 0]),
        "expected 0 fields",
    ),
    (
        "a nested message with too few fields is rejected",
        lambda: with_field("bcast/payload", 0, wire("bcast/digest")[:-1]),
        "expected 4 fields",
    ),
    # Field types.
    ("an int where bytes belong is rejected", lambda: with_field("bcast/pull", 2, 5), "bytes"),
    (
        "a str where bytes belong is rejected",
        lambda: with_field("bcast/pull", 2, "x" * 32),
        "expected bytes",
    ),
    ("bytes where a str belongs are rejected", lambda: with_field("cert/epoch", 0, b"dkg"), "str"),
    (
        "a bool where an int belongs is rejected",
        lambda: packb(["dkg/response", 1, True, True]),
        "int",
    ),
    ("an int where a bool belongs is rejected", lambda: packb(["dkg/response", 1, 3, 1]), "bool"),
    (
        "a float where an int belongs is rejected",
        lambda: packb(["dkg/response", 1, 3.0, True]),
        "int",
    ),
    (
        "None where an int belongs is rejected",
        lambda: packb(["dkg/response", 1, None, True]),
        "int",
    ),
    (
        "a list where a nested message belongs is rejected",
        lambda: with_field("bcast/payload", 0, [1, 2, 3]),
        "expected bcast/digest",
    ),
    (
        "bytes where a nested message belongs are rejected",
        lambda: with_field("bcast/payload", 0, GOLDEN["bcast/digest"].encode()),
        "not a message array",
    ),
    (
        "a nested message of another type is rejected",
        lambda: with_field("bcast/payload", 0, wire("bcast/pull")),
        "expected bcast/digest",
    ),
    (
        "a nested message where bytes belong is rejected",
        lambda: with_field("bcast/payload", 1, wire("dkg/deal")),
        "expected bytes",
    ),
    ("bytes where a tuple belongs are rejected", lambda: with_field("dkg/deal", 1, b""), "list"),
    (
        "a wrong nested type inside a tuple is rejected",
        lambda: with_field("dkg/deal", 2, [wire("dkg/revealed-share")]),
        "expected dkg/encrypted-share",
    ),
    (
        "a non-optional nested message set to None is rejected",
        lambda: with_field("bcast/payload", 0, None),
        "not a message array",
    ),
    (
        "an optional change of the wrong type is rejected",
        lambda: with_field("member/proposal", 4, wire("member/remove")),
        "expected member/add",
    ),
    # Lengths.
    (
        "a Size(32) field of 31 bytes is rejected",
        lambda: with_field("bcast/pull", 2, bytes(31)),
        "31",
    ),
    (
        "a Size(32) field of 33 bytes is rejected",
        lambda: with_field("bcast/pull", 2, bytes(33)),
        "33",
    ),
    (
        "an empty Size(64) signature is rejected",
        lambda: with_field("bcast/digest", 3, b""),
        "got 0",
    ),
    (
        "a MaxSize(16) str of 17 bytes is rejected",
        lambda: packb(["test/bounded-str", 1, "d" * 17]),
        "exceeds the limit of 16",
    ),
    (
        "a MaxSize str is counted in UTF-8 bytes",
        lambda: packb(["test/bounded-str", 1, "é" * 9]),
        "18 exceeds the limit of 16",
    ),
    (
        "a MaxSize(64 KiB) bytes field over the limit is rejected",
        lambda: packb(["member/admission-policy", 1, bytes(64 * 1024 + 1)]),
        "exceeds the limit of 65536",
    ),
    (
        "a MaxSize(16) tuple of 17 proposals is rejected",
        lambda: with_field("member/ballot", 3, [wire("member/proposal")] * 17),
        "17 exceeds the limit of 16",
    ),
    (
        "a message over MAX_MESSAGE_SIZE is rejected before parsing",
        lambda: packb(["member/admission-policy", 1, bytes(MAX_MESSAGE_SIZE)]),
        f"exceeds {MAX_MESSAGE_SIZE}",
    ),
    (
        "garbage over MAX_MESSAGE_SIZE is rejected",
        lambda: b"\xc1" * (MAX_MESSAGE_SIZE + 1),
        f"exceeds {MAX_MESSAGE_SIZE}",
    ),
    # Non-canonical encodings of valid messages.
    (
        "an int in a wider width (uint16) is rejected",
        lambda: response(b"\x01", b"\xcd\x00\x05", b"\xc2"),
        "non-canonical",
    ),
    (
        "an int in a wider width (uint8) is rejected",
        lambda: response(b"\x01", b"\xcc\x05", b"\xc2"),
        "non-canonical",
    ),
    (
        "a negative int is rejected",
        lambda: response(b"\x01", b"\xd1\xff\xff", b"\xc2"),
        "out of range",
    ),
    (
        "an int above 2**32 - 1 is rejected",
        lambda: response(b"\x01", b"\xcf" + (2**32).to_bytes(8, "big"), b"\xc2"),
        "out of range",
    ),
    (
        "a version in a wider width is rejected",
        lambda: response(b"\xd3" + (1).to_bytes(8, "big"), b"\x05", b"\xc2"),
        "non-canonical",
    ),
    (
        "a type name in str8 when fixstr fits is rejected",
        lambda: b"\x94\xd9\x0cdkg/response\x01\x05\xc2",
        "non-canonical",
    ),
    (
        "an outer array16 when fixarray fits is rejected",
        lambda: b"\xdc\x00\x04" + response(b"\x01", b"\x05", b"\xc2")[1:],
        "non-canonical",
    ),
    (
        "bytes in bin16 when bin8 fits are rejected",
        lambda: PULL.encode().replace(b"\xc4\x20", b"\xc5\x00\x20", 1),
        "non-canonical",
    ),
    (
        "a nested array in array16 is rejected",
        lambda: CERT.encode().replace(b"\x9c\xaacert/epoch", b"\xdc\x00\x0c\xaacert/epoch"),
        "non-canonical",
    ),
    ("trailing bytes are rejected", lambda: PULL.encode() + b"\x00", "malformed msgpack"),
    ("two concatenated messages are rejected", lambda: PULL.encode() * 2, "malformed msgpack"),
    # Messages whose validate() fails.
    (
        "a broadcast payload that does not match its digest is rejected",
        lambda: replaced("bcast/payload", payload=GOLDEN["bcast/payload"].payload + b"\x00"),
        "does not match its digest",
    ),
    (
        "a deal with unsorted recipients is rejected",
        lambda: replaced("dkg/deal", shares=DEAL.shares[::-1]),
        "sorted by distinct recipient",
    ),
    (
        "a deal with a repeated recipient is rejected",
        lambda: replaced("dkg/deal", shares=(DEAL.shares[0], DEAL.shares[0])),
        "sorted by distinct recipient",
    ),
    (
        "a deal with a commitment of the wrong size is rejected",
        lambda: replaced("dkg/deal", commitments=(DEAL.commitments[0][:48],)),
        "commitment of the wrong size",
    ),
    (
        "responses with unsorted dealers are rejected",
        lambda: replaced("dkg/responses", responses=GOLDEN["dkg/responses"].responses[::-1]),
        "sorted by distinct dealer",
    ),
    (
        "a justification with a repeated recipient is rejected",
        lambda: replaced("dkg/justification", shares=GOLDEN["dkg/justification"].shares * 2),
        "sorted by distinct recipient",
    ),
    (
        "a ballot with unsorted approvals is rejected",
        lambda: replaced("member/ballot", approvals=(b"\x02" * 32, b"\x01" * 32)),
        "sorted and distinct",
    ),
    (
        "a ballot with a repeated approval is rejected",
        lambda: replaced("member/ballot", approvals=(b"\x01" * 32, b"\x01" * 32)),
        "sorted and distinct",
    ),
    (
        "a ballot approving a 31-byte id is rejected",
        lambda: replaced("member/ballot", approvals=(b"\x01" * 31,)),
        "32-byte proposal ids",
    ),
    (
        "a proposal with two changes set is rejected",
        lambda: replaced("member/proposal", refresh=Refresh()),
        "exactly one change",
    ),
    (
        "a proposal with no change set is rejected",
        lambda: replaced("member/proposal", add=None),
        "exactly one change",
    ),
    (
        "an epoch transcript with threshold above the committee size is rejected",
        lambda: replaced("cert/epoch", threshold=len(TRANSCRIPT.committee) + 1),
        "threshold out of range",
    ),
    (
        "an epoch transcript with threshold 1 is rejected",
        lambda: replaced("cert/epoch", threshold=1),
        "threshold out of range",
    ),
    (
        "an epoch transcript of an unknown kind is rejected",
        lambda: replaced("cert/epoch", kind="genesis"),
        "unknown RunKind value 'genesis'",
    ),
    (
        "an epoch transcript with an unsorted committee is rejected",
        lambda: replaced("cert/epoch", committee=TRANSCRIPT.committee[::-1]),
        "sorted by distinct index",
    ),
    (
        "an epoch transcript with a negative epoch is rejected",
        lambda: replaced("cert/epoch", epoch=-1),
        "out of range",
    ),
    (
        "an epoch certificate whose public polynomial does not match its hash is rejected",
        lambda: replaced(
            "cert/epoch-certificate",
            public_polynomial=(CERT.public_polynomial[0], CERT.public_polynomial[0]),
        ),
        "does not match its hash",
    ),
    (
        "an epoch certificate whose polynomial has the wrong degree is rejected",
        lambda: replaced("cert/epoch-certificate", public_polynomial=CERT.public_polynomial[:1]),
        "degree does not match",
    ),
    (
        "a participant of index 0 is rejected",
        lambda: replaced("participant", index=0),
        "index out of range",
    ),
    (
        "equivocation evidence naming one digest twice is rejected",
        lambda: replaced("evidence/equivocation", second=GOLDEN["evidence/equivocation"].first),
        "two digests of one slot",
    ),
    (
        "equivocation evidence naming two slots is rejected",
        lambda: replaced(
            "evidence/equivocation",
            second=dataclasses.replace(GOLDEN["evidence/equivocation"].second, sender=3),
        ),
        "two digests of one slot",
    ),
    (
        "a nested validate() failure rejects the outer message",
        lambda: packb(
            [
                "evidence/reshare-constant",
                1,
                bytes(32),
                dataclasses.replace(
                    GOLDEN["bcast/payload"], payload=b"not what was signed"
                ).to_wire(),
            ]
        ),
        "does not match its digest",
    ),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(b, r, id=i) for i, b, r in REJECTED],
)
def test_decode_rejects(build: Callable[[], bytes], reason: str) -> None:
    data = build()
    with pytest.raises(MessageDecodeError, match=reason) as info:
        decode(data)
    assert isinstance(info.value, InvalidEncoding)
    assert isinstance(info.value, ValueError)


def test_the_hand_built_response_is_canonical() -> None:
    """So the non-canonical cases above differ from a valid message only in one width."""
    data = response(b"\x01", b"\x05", b"\xc2")
    assert data == Response(5, False).encode()
    assert decode(data) == Response(5, False)


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        pytest.param(PullRequest, GOLDEN["dkg/response"].encode(), id="a response is no pull"),
        pytest.param(
            BroadcastPayload, GOLDEN["bcast/digest"].encode(), id="a bare digest is no payload"
        ),
        pytest.param(
            EpochCertificate,
            GOLDEN["cert/epoch"].encode(),
            id="a transcript is no certificate",
        ),
        pytest.param(
            EquivocationEvidence,
            GOLDEN["evidence/reshare-constant"].encode(),
            id="one kind of evidence is not another",
        ),
        pytest.param(SignedDigest, b"", id="empty bytes are no digest"),
    ],
)
def test_typed_decode_rejects_another_type(cls: type[Message], data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        cls.decode(data)


@pytest.mark.parametrize(
    "value",
    ["bcast/pull", None, 7, [PULL.encode()]],
    ids=["a str is not bytes", "None is not bytes", "an int is not bytes", "a list is not bytes"],
)
def test_decode_rejects_non_bytes(value: Any) -> None:
    with pytest.raises(MessageDecodeError, match="must be bytes"):
        decode(value)


def test_a_field_over_its_limit_is_rejected_under_the_message_limit() -> None:
    data = packb(["bcast/payload", 1, wire("bcast/digest"), bytes(MAX_MESSAGE_SIZE - 300)])
    assert len(data) <= MAX_MESSAGE_SIZE
    with pytest.raises(MessageDecodeError, match="exceeds the limit of 2097152"):
        decode(data)


# --- fuzzing -----------------------------------------------------------------------


def check_strict(data: bytes) -> Message | None:
    """The fuzz property: a canonical message comes back, anything else is rejected."""
    try:
        m = decode(data)
    except MessageDecodeError:
        return None
    assert m.encode() == data
    assert type(m).decode(data) == m
    return m


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOLDEN_BYTES = [m.encode() for m in GOLDEN.values()]


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_strict(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(GOLDEN_BYTES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_golden_messages(data: bytes) -> None:
    check_strict(data)


LEAVES = (
    st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=100)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
)
VALUES = st.recursive(LEAVES, lambda children: st.lists(children, max_size=6), max_leaves=30)


@FUZZ
@given(
    st.sampled_from(sorted(TYPES)), st.sampled_from([1, 1, 1, 2, 0]), st.lists(VALUES, max_size=12)
)
def test_fuzz_msgpack_values_under_a_registered_type(
    name: str, version: int, fields: list[Any]
) -> None:
    check_strict(packb([name, version, *fields]))


def _sized(tp: Any) -> tuple[Any, Size | MaxSize | None]:
    if get_origin(tp) is Annotated:
        tp, *extras = get_args(tp)
        return tp, next((e for e in extras if isinstance(e, Size | MaxSize)), None)
    return tp, None


REAL_POINTS = st.sampled_from([*DEAL.commitments, *CERT.public_polynomial])


def schema_values(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Wire values shaped like field type ``tp``: mostly well-typed, sometimes just off."""
    tp, limit = _sized(tp)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return st.none() | schema_values(Annotated[inner, limit] if limit else inner, depth)
    if origin is tuple:
        inner, _ = get_args(tp)
        return st.lists(schema_values(inner, depth + 1), max_size=3 if depth < 2 else 1)
    if isinstance(tp, type) and issubclass(tp, Message):
        return message_values(tp, depth + 1)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = st.sampled_from([m.value for m in tp])
        off = members.map(lambda v: v.upper() if isinstance(v, str) else v + 1000)
        return members | off | st.text(max_size=20) | st.just(b"dkg") | st.just(True)
    if tp is bool:
        return st.booleans() | st.just(1)
    if tp is int:
        return st.integers(0, 6) | st.integers(-(2**63), 2**64 - 1) | st.just(True)
    if tp is bytes:
        if isinstance(limit, Size):
            return st.binary(min_size=limit.n, max_size=limit.n) | st.binary(
                min_size=limit.n - 1, max_size=limit.n + 1
            )
        return REAL_POINTS | st.binary(min_size=32, max_size=32) | st.binary(max_size=100)
    if tp is str:
        return st.sampled_from(["dkg", "reshare"]) | st.text(max_size=20)
    raise AssertionError(f"no strategy for {tp!r}")


def message_values(cls: type[Message], depth: int = 0) -> st.SearchStrategy[list[Any]]:
    """``[TYPE, VERSION, fields...]`` of ``cls`` built from the schema, or its golden wire."""
    fields = st.tuples(*(schema_values(tp, depth) for _, tp in codec._fields(cls)))
    version = st.sampled_from([cls.VERSION] * 4 + [cls.VERSION + 1])
    shaped = st.tuples(version, fields).map(lambda p: [cls.TYPE, p[0], *p[1]])
    return st.just(GOLDEN[cls.TYPE].to_wire()) | shaped


@st.composite
def golden_with_one_field_replaced(draw: st.DrawFn) -> list[Any]:
    name = draw(st.sampled_from(sorted(TYPES)))
    raw = GOLDEN[name].to_wire()
    fields = codec._fields(TYPES[name], raw[1])
    if fields:
        i = draw(st.integers(0, len(fields) - 1))
        raw[2 + i] = draw(schema_values(fields[i][1]))
    return raw


@FUZZ
@given(
    st.sampled_from(sorted(TYPES)).flatmap(lambda n: message_values(TYPES[n]))
    | golden_with_one_field_replaced()
)
def test_fuzz_schema_shaped_values(raw: list[Any]) -> None:
    m = check_strict(packb(raw))
    event("decoded" if m is not None else "rejected")


def test_one_replaced_field_can_still_decode() -> None:
    """The schema-shaped fuzzer reaches valid messages as well as rejections."""
    raw = GOLDEN["dkg/response"].to_wire()
    raw[2] = 6
    assert check_strict(packb(raw)) == Response(6, GOLDEN["dkg/response"].complaint)


# --- evidence through the codec ----------------------------------------------------


def _tamper(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 0x01]) + sig[1:]


def _tamper_header(p: BroadcastPayload) -> BroadcastPayload:
    return dataclasses.replace(
        p, header=dataclasses.replace(p.header, signature=_tamper(p.header.signature))
    )


def _evidence_cases(real: Real) -> dict[str, tuple[Message, Callable[[Message], None]]]:
    eq = real.equivocation.exclusions(PI(1))[PI(2)].evidence
    ij = real.invalid_justification.exclusions(PI(1))[PI(3)].evidence
    rc = real.reshare_constant.exclusions(PI(1))[PI(2)].evidence
    key = {
        name: run.nodes[dealer].identity.verify_key()
        for name, run, dealer in [
            ("eq", real.equivocation, PI(2)),
            ("ij", real.invalid_justification, PI(3)),
            ("rc", real.reshare_constant, PI(2)),
        ]
    }
    old_share = real.reshare_constant.config.old_public_share(PI(2))
    ij_run = real.invalid_justification.config.run_id()
    rc_run = real.reshare_constant.config.run_id()
    return {
        "equivocation": (eq, lambda ev: ev.verify(key["eq"])),
        "invalid justification": (ij, lambda ev: ev.verify(key["ij"], run=ij_run)),
        "reshare constant": (rc, lambda ev: ev.verify(key["rc"], old_share, run=rc_run)),
    }


TAMPERINGS: list[tuple[str, str, Callable[[Any], Message]]] = [
    (
        "equivocation",
        "first signature",
        lambda ev: dataclasses.replace(
            ev, first=dataclasses.replace(ev.first, signature=_tamper(ev.first.signature))
        ),
    ),
    (
        "equivocation",
        "second signature",
        lambda ev: dataclasses.replace(
            ev, second=dataclasses.replace(ev.second, signature=_tamper(ev.second.signature))
        ),
    ),
    (
        "invalid justification",
        "deal signature",
        lambda ev: dataclasses.replace(ev, deal=_tamper_header(ev.deal)),
    ),
    (
        "invalid justification",
        "justification signature",
        lambda ev: dataclasses.replace(ev, justification=_tamper_header(ev.justification)),
    ),
    (
        "reshare constant",
        "deal signature",
        lambda ev: dataclasses.replace(ev, deal=_tamper_header(ev.deal)),
    ),
]


@pytest.mark.parametrize("kind", ["equivocation", "invalid justification", "reshare constant"])
def test_evidence_from_a_byzantine_run_round_trips_and_verifies(real: Real, kind: str) -> None:
    ev, verify = _evidence_cases(real)[kind]
    assert isinstance(
        ev, EquivocationEvidence | InvalidJustificationEvidence | ReshareConstantEvidence
    )
    verify(ev)
    decoded = decode(ev.encode())
    assert decoded == ev
    assert type(ev).decode(ev.encode()) == ev
    verify(decoded)
    assert decoded.culprit == ev.culprit


@pytest.mark.parametrize(
    ("kind", "tamper"),
    [
        pytest.param(k, t, id=f"{k} evidence with one byte of its {w} flipped")
        for k, w, t in TAMPERINGS
    ],
)
def test_decoded_then_tampered_evidence_fails_verify(
    real: Real, kind: str, tamper: Callable[[Any], Message]
) -> None:
    ev, verify = _evidence_cases(real)[kind]
    tampered = tamper(decode(ev.encode()))
    # Still well-formed: the codec checks shape, signatures are the verifier's job.
    assert decode(tampered.encode()) == tampered
    with pytest.raises(InvalidSignature):
        verify(decode(tampered.encode()))


def test_tampering_the_encoded_bytes_of_a_signature_fails_verify(real: Real) -> None:
    ev, verify = _evidence_cases(real)["equivocation"]
    data = bytearray(ev.encode())
    at = bytes(data).index(ev.first.signature)
    data[at + 10] ^= 0x80
    with pytest.raises(InvalidSignature):
        verify(decode(bytes(data)))


def test_real_participants_and_certificates_check_out_after_decoding(real: Real) -> None:
    for name in ("participant", "cert/epoch-certificate", "reshare/ack", "member/ballot"):
        m = real.instances[name]
        assert decode(m.encode()) == m
    participant: Participant = decode(real.instances["participant"].encode())
    participant.check()
    cert: EpochCertificate = decode(real.instances["cert/epoch-certificate"].encode())
    cert.verify(G2.from_bytes(cert.transcript.mpk))
    ack: Acknowledgement = decode(real.instances["reshare/ack"].encode())
    ack.verify(real.genesis.nodes[PI(ack.index)].identity.verify_key())
    ballot: Ballot = decode(real.instances["member/ballot"].encode())
    assert all(isinstance(p, Proposal) for p in ballot.proposals)


# --- evidence must be bound to its run ----------------------------------------------


@dataclass
class TwoRuns:
    """Two DKG runs of one committee; in the second, member 1 falsely accuses dealer 3."""

    key: VerifyKey
    deal_a: BroadcastPayload
    deal_b: BroadcastPayload
    justification_b: BroadcastPayload
    public_share_a: G2
    reshare_deal: BroadcastPayload
    run_a: bytes
    run_b: bytes
    run_r: bytes


def _signed_by(seen: list[Message], sender: int, cls: type[Message]) -> BroadcastPayload:
    return next(
        m
        for m in seen
        if isinstance(m, BroadcastPayload)
        and m.header.sender == sender
        and isinstance(decode(m.payload), cls)
    )


@pytest.fixture(scope="module")
def two_runs() -> TwoRuns:
    nodes = make_nodes(range(1, 6), seed=9)
    with recording() as seen_a:
        a = run_sharing(5, 3, Adversary(), seed=10, nodes=nodes)
    res_a = check_agreement(a)
    liar = Adversary({1: Misbehaviour(false_complaints=frozenset({3}))})
    with recording() as seen_b:
        b = run_sharing(5, 3, liar, seed=11, nodes=nodes, epoch=7)  # another run: another epoch
    assert PI(3) in check_agreement(b).qual  # dealer 3 is honest: it justified correctly
    with recording() as seen_r:
        r = run_sharing(
            5,
            3,
            Adversary(),
            seed=12,
            kind="reshare",
            old={i: a.sessions[i].result.share for i in a.honest},
            old_public_polynomial=res_a.public_polynomial,
            old_threshold=3,
            epoch=1,
            nodes=nodes,
            start=100.0,
        )
    check_agreement(r, expect_mpk=res_a.mpk)
    return TwoRuns(
        nodes[PI(3)].identity.verify_key(),
        _signed_by(seen_a, 3, DealBundle),
        _signed_by(seen_b, 3, DealBundle),
        _signed_by(seen_b, 3, JustificationBundle),
        res_a.public_shares[PI(3)],
        _signed_by(seen_r, 3, DealBundle),
        a.config.run_id(),
        b.config.run_id(),
        r.config.run_id(),
    )


def test_an_honest_dealers_own_run_is_no_evidence_against_it(two_runs: TwoRuns) -> None:
    run_b = two_runs.deal_b.header.session  # stands in for a run id: any 32 bytes
    ij = decode(
        InvalidJustificationEvidence(run_b, two_runs.deal_b, two_runs.justification_b, 1).encode()
    )
    with pytest.raises(InvalidSignature):
        ij.verify(two_runs.key, run=run_b)
    rc = decode(ReshareConstantEvidence(run_b, two_runs.reshare_deal).encode())
    with pytest.raises(InvalidSignature):
        rc.verify(two_runs.key, two_runs.public_share_a, run=run_b)


def test_a_deal_and_a_justification_from_two_runs_are_no_evidence(two_runs: TwoRuns) -> None:
    """Signed messages of two different runs cannot be stitched into evidence."""
    for run in (two_runs.run_a, two_runs.run_b):
        ev = decode(
            InvalidJustificationEvidence(run, two_runs.deal_a, two_runs.justification_b, 1).encode()
        )
        with pytest.raises(InvalidSignature):
            ev.verify(two_runs.key, run=run)


def test_a_genesis_deal_is_no_evidence_of_a_wrong_reshare_constant(two_runs: TwoRuns) -> None:
    """A genesis deal is signed in the DKG's deal phase, not the reshare's."""
    ev = decode(ReshareConstantEvidence(two_runs.run_r, two_runs.deal_a).encode())
    with pytest.raises(InvalidSignature):
        ev.verify(two_runs.key, two_runs.public_share_a, run=two_runs.run_r)
    other = decode(ReshareConstantEvidence(two_runs.run_a, two_runs.deal_a).encode())
    with pytest.raises(InvalidSignature):  # the verifier names the reshare it knows
        other.verify(two_runs.key, two_runs.public_share_a, run=two_runs.run_r)


# --- the JSON form ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_message_round_trips_through_its_json_form(name: str) -> None:
    import json

    from mpc.codec import decode_json

    msg = GOLDEN[name]
    text = json.dumps(msg.to_json())
    back = decode_json(text)
    assert back == msg and back.encode() == msg.encode()
    assert type(msg).decode_json(text.encode()) == msg


def _json_variants() -> list[tuple[str, str]]:
    import json

    req = next(m for m in GOLDEN.values() if m.TYPE == "bcast/digest").to_json()
    bytes_field = next(k for k, v in req.items() if isinstance(v, str) and k != "@type")
    out = []
    for label, mutate in [
        ("unknown field", lambda d: d.update(extra=1)),
        ("missing field", lambda d: d.pop(bytes_field)),
        ("uppercase hex", lambda d: d.update({bytes_field: d[bytes_field].upper()})),
        ("0x prefix", lambda d: d.update({bytes_field: "0x" + d[bytes_field]})),
        ("odd hex", lambda d: d.update({bytes_field: d[bytes_field][:-1]})),
        ("bytes as a number", lambda d: d.update({bytes_field: 7})),
        ("wrong version", lambda d: d.update({"@version": 2})),
        ("bool version", lambda d: d.update({"@version": True})),
        ("no version", lambda d: d.pop("@version")),
        ("unknown type", lambda d: d.update({"@type": "no/such"})),
    ]:
        d = dict(req)
        mutate(d)
        out.append((label, json.dumps(d)))
    return [
        *out,
        ("not an object", "[1, 2]"),
        ("not JSON", "{"),
        ("deep nesting", "[" * 200_000),
        ("not UTF-8", "\udcff"),
    ]


@pytest.mark.parametrize(("label", "text"), _json_variants())
def test_bad_json_forms_are_refused_with_a_reason(label: str, text: str) -> None:
    from mpc.codec import decode_json

    data = text.encode("utf-8", "surrogateescape")
    with pytest.raises(MessageDecodeError):
        decode_json(data)


def test_a_field_named_version_does_not_clash_with_the_message_version() -> None:
    from kms.protocol import PurposeVersion
    from mpc.codec import decode_json

    pv = PurposeVersion("app", 7)
    assert pv.to_json() == {"@type": "kms/purpose", "@version": 1, "purpose": "app", "version": 7}
    assert decode_json(__import__("json").dumps(pv.to_json())) == pv


# --- fields added in a later version (Since) ---------------------------------------------------

from dataclasses import dataclass as _dataclass  # noqa: E402
from typing import Annotated as _Annotated  # noqa: E402

from mpc.codec import Message as _Message  # noqa: E402
from mpc.codec import MessageDecodeError as _DecodeError  # noqa: E402
from mpc.codec import Since as _Since  # noqa: E402


@_dataclass(frozen=True, slots=True)
class _Grown(_Message):
    TYPE = "test/grown"
    VERSION = 2
    a: int
    b: _Annotated[bytes | None, _Since(2)] = None


def test_a_value_without_its_new_fields_encodes_as_the_old_version() -> None:
    import msgpack

    old = _Grown(1)
    assert msgpack.unpackb(old.encode()) == ["test/grown", 1, 1]
    assert _Grown.decode(old.encode()) == old
    new = _Grown(1, b"x")
    assert msgpack.unpackb(new.encode()) == ["test/grown", 2, 1, b"x"]
    assert _Grown.decode(new.encode()) == new
    assert _Grown.decode_json(json.dumps(old.to_json())) == old
    assert _Grown.decode_json(json.dumps(new.to_json())) == new
    for bad in (["test/grown", 2, 1, None], ["test/grown", 1, 1, b"x"], ["test/grown", 3, 1]):
        with pytest.raises(_DecodeError):
            _Grown.decode(msgpack.packb(bad, use_bin_type=True))


def _kms_json_instances() -> list[Message]:
    """Instances of the messages a node takes in their JSON form over HTTP."""
    from kms.policy import (
        AppPolicy,
        GpuPin,
        Measurement,
        MinKeyVersion,
        OwnerKey,
        Pins,
        PlatformPin,
        PolicyBundle,
        SystemEventPin,
    )
    from kms.protocol import (
        EphemeralKey,
        KeyRequest,
        KeyRequestBody,
        KeyShareResponse,
        PurposeVersion,
        WrongPartialEvidence,
    )

    pv = PurposeVersion("app", 1)
    body = KeyRequestBody(
        b"\x01" * 20, (pv,), (EphemeralKey(1, b"\x09" * 32),), 1_800_000_000, b"\x00" * 16, 0, 0
    )
    req = KeyRequest(body, b"\x00" * 64, b"")
    share = KeyShareResponse(b"\x02" * 32, pv, 1, 1, b"\x03" * 32, b"\x04" * 48, b"\x05" * 64)
    owner = OwnerKey.from_seed(bytes(32))
    pins = Pins.build(
        mr_config_id=b"\x07" * 48,
        gpu=GpuPin(cc_mode="on", devtools=False, min_devices=2),
        platforms=[PlatformPin(b"\x08" * 6, b"\x09" * 16)],
        system_events=[SystemEventPin("key-provider", b"kms")],
        min_key_versions=[MinKeyVersion("app", 2)],
    )
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=3,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**{k: b"\x01" * 48 for k in MEASURED})],
        kms_mpk=bytes(96),
        not_before=1_800_000_000,
        purposes=("app",),
        pins=pins,
    )
    bundle = PolicyBundle(policy.sign(owner), ())
    return [req, WrongPartialEvidence(req, share, b"\x06" * 32), bundle]


MEASURED = ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
_JSON_INSTANCES = [*GOLDEN.values(), *_kms_json_instances()]
_ODD_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=8),  # surrogates included
    st.sampled_from(["\ud800", "\udfff", "a\udc80b", "", "\x00", "ab" * 40]),
    st.sampled_from(["\ud800", "\udfff", "a\udc80b"]),
)
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | _ODD_TEXT,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["@type", "@version", "x"]) | _ODD_TEXT, inner, max_size=3
        )
    ),
    max_leaves=6,
)


def _json_paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _json_paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _json_paths(v, (*path, i))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_json_refuses_any_bad_json_with_a_decode_error(data: st.DataObject) -> None:
    """Any JSON text, well-formed or not, either decodes to a message whose JSON form it
    is, or is refused with ``MessageDecodeError``: never another exception (a lone
    surrogate in a string field, a huge integer, a wrong type anywhere)."""
    from mpc.codec import decode_json

    msg = data.draw(st.sampled_from(_JSON_INSTANCES) | st.sampled_from(_kms_json_instances()))
    doc: Any = msg.to_json()
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _json_paths(doc)
        strings = [p for p in paths if p and isinstance(_at(doc, p), str)]
        if strings and data.draw(st.integers(0, 3)):  # a string for a string: reaches the decoder
            path, value = data.draw(st.sampled_from(strings)), data.draw(_ODD_TEXT)
        else:
            path, value = data.draw(st.sampled_from(paths)), data.draw(_JSON_VALUES)
        if not path:
            doc = value
            break
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    text = json.dumps(doc)
    try:
        back = decode_json(text)
    except MessageDecodeError:
        event("refused")
        return
    event("decoded")
    assert decode(back.encode()) == back


@pytest.mark.parametrize("instance", _kms_json_instances()[:2], ids=lambda m: m.TYPE)
def test_a_lone_surrogate_in_a_string_field_is_a_decode_error(instance: Message) -> None:
    text = json.dumps(instance.to_json()).replace('"purpose": "app"', '"purpose": "\\ud800"')
    assert "\\ud800" in text
    with pytest.raises(MessageDecodeError, match="surrogate"):
        type(instance).decode_json(text)
