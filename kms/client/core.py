"""The CVM side of key release, sans-I/O.

A ``KeyRequestSession`` builds one request (a fresh ephemeral HPKE key per
committee index, all inside the quote's report-data binding), takes node
answers one at a time, decrypts each partial with the key for that node's
index, and combines partials **of one epoch** into the derived point,
checked against the master public key the CVM pinned. Committee, threshold
and public shares come only from the epoch chain verified from that pinned
key; an answer that claims another epoch, index or key is ignored and
reported. A wrong or undecryptable partial becomes ``WrongPartialEvidence``:
the node's signed answer, the request, and the private half of that one
index's ephemeral key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from kms.evidence import verify_wrong_partial
from kms.protocol import (
    EphemeralKey,
    KeyRefusal,
    KeyRequest,
    KeyRequestBody,
    KeyResponse,
    KeyShareResponse,
    PurposeVersion,
    WrongPartialEvidence,
    bundle_hash,
    release_info,
)
from mpc import hpke
from mpc.cert import check_mpk
from mpc.errors import DecryptionError, InvalidEncoding, InvalidShare, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.math import G1
from mpc.membership import ChainState
from mpc.secret import RNG
from mpc.sig import VerifyKey
from mpc.tkd import DerivedPoint, Partial, combine_and_verify


@functools.lru_cache(maxsize=1024)
def _decoded_verify_key(identity: bytes) -> VerifyKey:
    """Decoding an Ed25519 key checks its encoding and order; a CVM asks the same nodes often."""
    return VerifyKey.from_bytes(identity)


class KeyReleaseError(Exception):
    """Not enough good partials could be gathered.

    ``refusals`` names each refusing node's reason and detail (index → (reason, detail)),
    ``bad_nodes`` the nodes that sent bad partials, ``unreachable`` the nodes not heard."""

    def __init__(
        self,
        message: str,
        *,
        refusals: dict[int, tuple[str, str]] | None = None,
        bad_nodes: list[int] | None = None,
        unreachable: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.refusals = dict(refusals or {})
        self.bad_nodes = list(bad_nodes or [])
        self.unreachable = list(unreachable or [])


@dataclass(frozen=True)
class Rejected:
    """An answer the client ignored, and why."""

    index: ParticipantIndex
    reason: str
    evidence: WrongPartialEvidence | None = None


@dataclass
class _PerPurpose:
    partials: dict[int, dict[ParticipantIndex, Partial]] = field(default_factory=dict)
    """Partials by epoch, then index: only partials of one epoch are combined."""
    evidence: dict[ParticipantIndex, WrongPartialEvidence] = field(default_factory=dict)
    derived: DerivedPoint | None = None
    epoch: int | None = None
    """The epoch whose partials gave ``derived``."""


class KeyRequestSession:
    """One request for one or more purposes of one app, against one verified chain.

    ``previous`` is the verified state of the epoch before ``chain``'s (from
    the same chain, ``verify_chain_epochs``). While the committee switches
    epochs some members answer for the old one and some for the new; with
    ``previous`` the request carries keys for the members of both and
    combines whichever epoch first gives ``t`` good partials (the key is the
    same), so a CVM sees no gap.
    """

    def __init__(
        self,
        chain: ChainState,
        app_id: bytes,
        purposes: Sequence[tuple[str, int]],
        *,
        now: int,
        rng: RNG,
        min_policy_version: int = 0,
        previous: ChainState | None = None,
        bundle: bytes = b"",
        preferred: Sequence[ParticipantIndex] = (),
    ) -> None:
        check_mpk(chain.mpk)
        self.chain = chain
        self.preferred = tuple(preferred)
        """Members to ask first (the shell's view of who answers: e.g. those whose chain
        came back in time)."""
        self.bundle = bundle
        """The app's encoded policy bundle, sent with the request (its hash is in the body)."""
        self.states = {chain.epoch: chain}
        if previous is not None:
            if previous.epoch != chain.epoch - 1 or previous.mpk != chain.mpk:
                raise ValueError("previous must be the epoch before the chain's, same key")
            self.states[previous.epoch] = previous
        self.app_id = app_id
        self.purposes = tuple(PurposeVersion(p, v) for p, v in purposes)
        self._keys: dict[ParticipantIndex, hpke.PrivateKey] = {}
        eph = []
        indices = sorted({i for st in self.states.values() for i in st.committee.indices})
        for idx in indices:
            sk, pk = hpke.generate_key_pair(rng)
            self._keys[idx] = sk
            eph.append(EphemeralKey(int(idx), pk))
        self.body = KeyRequestBody(
            app_id=app_id,
            purposes=self.purposes,
            ephemeral_keys=tuple(eph),
            timestamp=now,
            nonce=rng(16),
            min_policy_version=min_policy_version,
            epoch=chain.epoch,
            policy_hash=bundle_hash(bundle) if bundle else b"",
        )
        self.body.validate()
        self.request: KeyRequest | None = None
        self._state = {p: _PerPurpose() for p in self.purposes}
        self.rejected: list[Rejected] = []
        self.refusals: dict[ParticipantIndex, KeyRefusal] = {}
        self._answered: set[ParticipantIndex] = set()
        self._request_hash = b""
        self.newer_epoch_seen = False
        """A node answered for a later epoch than the chain names: fetch the chain again."""

    @property
    def report_data(self) -> bytes:
        """What the CVM asks its TEE to put in the quote."""
        return self.body.report_data()

    def attach_quote(self, quote: bytes, event_log: bytes = b"") -> KeyRequest:
        self.request = KeyRequest(self.body, quote, event_log, self.bundle)
        self._request_hash = self.request.request_hash()
        return self.request

    # --- answers ------------------------------------------------------------------

    def receive(self, index: ParticipantIndex, answer: KeyResponse | KeyRefusal) -> None:
        """Take node ``index``'s answer (the transport told us who answered)."""
        if self.request is None:
            raise RuntimeError("attach the quote before sending the request")
        self._answered.add(index)
        if isinstance(answer, KeyRefusal):
            self.refusals[index] = answer
            return
        before = len(self.rejected)
        for share in answer.shares:
            self._take(index, share)
        if len(self.rejected) > before:
            return
        # An answer that gives no good partial for every purpose asked (no share at all,
        # or none for some purpose) is a failed answer: recorded, so the shell asks
        # another member and names this one.
        missing = [
            p
            for p, st in self._state.items()
            if not any(index in bucket for bucket in st.partials.values())
        ]
        if missing:
            self._reject(
                index,
                "no partial for " + ", ".join(f"{p.purpose} v{p.version}" for p in missing),
            )

    def _reject(
        self, index: ParticipantIndex, reason: str, evidence: WrongPartialEvidence | None = None
    ) -> None:
        self.rejected.append(Rejected(index, reason, evidence))

    def _take(self, index: ParticipantIndex, share: KeyShareResponse) -> None:
        req = self.request
        if req is None:  # pragma: no cover - guarded by receive()
            return
        state = self.states.get(share.epoch)
        if state is None:
            self.newer_epoch_seen |= share.epoch > self.chain.epoch
            # Combine partials of verified epochs only: the chain we verified names them.
            self._reject(
                index,
                f"answer for epoch {share.epoch}, the verified chain is at {self.chain.epoch}",
            )
            return
        if share.index != index or index not in state.committee.indices:
            self._reject(index, "answer for another committee index")
            return
        if share.request_hash != self._request_hash or share.purpose not in self._state:
            self._reject(index, "answer to another request or purpose")
            return
        try:
            share.verify(self._verify_key(state, index))
        except (InvalidSignature, InvalidEncoding):
            self._reject(index, "bad node signature")  # not attributable: no evidence
            return
        sk = self._keys[index]
        info = release_info(share.request_hash, share.purpose, share.epoch, share.index)
        evidence = WrongPartialEvidence(req, share, sk.private_bytes())
        try:
            raw = hpke.open(share.enc, sk, info, info, share.ciphertext)
            point = G1.from_bytes(raw)
        except (DecryptionError, InvalidEncoding):
            self._reject(index, "partial does not decrypt", evidence)
            return
        st = self._state[share.purpose]
        bucket = st.partials.setdefault(share.epoch, {})
        if index in bucket:
            return
        bucket[index] = Partial(index, point)
        st.evidence[index] = evidence
        self._combine(share.purpose, st, state)

    def _combine(self, purpose: PurposeVersion, st: _PerPurpose, state: ChainState) -> None:
        """Combine once ``t`` partials are in; only on failure check them one by one.

        The optimistic path costs one pairing check for ``t`` partials instead
        of ``t + 1``; a failed combination names the culprits (by checking each
        partial against its node's public share), which are rejected with
        their evidence, and the rest wait for more answers.
        """
        bucket = st.partials[state.epoch]
        if st.derived is not None or len(bucket) < state.threshold:
            return
        try:
            st.derived = combine_and_verify(
                list(bucket.values()),
                purpose.key_id(self.app_id),
                state.mpk,
                state.public_shares,
                state.threshold,
            )
            st.epoch = state.epoch
        except InvalidShare as exc:
            for culprit in sorted(exc.culprits):
                bucket.pop(culprit, None)
                self._reject(
                    culprit,
                    "partial does not match the node's public share",
                    st.evidence.pop(culprit, None),
                )

    def _verify_key(self, state: ChainState, index: ParticipantIndex) -> VerifyKey:
        member = next(p for p in state.committee.members if p.index == int(index))
        return _decoded_verify_key(member.identity)

    # --- results --------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(st.derived is not None for st in self._state.values())

    def derived(self) -> dict[PurposeVersion, DerivedPoint]:
        if not self.done:
            missing = [p.purpose for p, st in self._state.items() if st.derived is None]
            raise KeyReleaseError(f"not enough good partials for {missing}")
        return {p: st.derived for p, st in self._state.items() if st.derived is not None}

    def next_nodes(self, count: int) -> list[ParticipantIndex]:
        """Members of the newest epoch not asked yet, in index order (the shell asks
        ``t`` first, then more). A member the chain has removed is never asked, even
        while it may still hold a share of the previous epoch; members still on the
        previous epoch answer for it (``previous``)."""
        order = list(self.chain.committee.indices)
        # Preferred members first, each group in the order above.
        order = [i for i in order if i in self.preferred] + [
            i for i in order if i not in self.preferred
        ]
        return [i for i in order if i not in self._answered][:count]

    def missing(self) -> int:
        """Good partials still needed: for the purpose furthest from done, ``t`` less those
        of its best epoch (0 when done). An answer for the other epoch is no failure, but no
        progress for this one either: the shell asks this many more members when nothing
        is pending."""
        need = 0
        for st in self._state.values():
            if st.derived is None:
                need = max(
                    need,
                    min(
                        state.threshold - len(st.partials.get(epoch, {}))
                        for epoch, state in self.states.items()
                    ),
                )
        return need

    def epoch_used(self) -> int:
        """The epoch whose partials gave the keys (the newest one if several purposes differ)."""
        used = [st.epoch for st in self._state.values() if st.epoch is not None]
        return max(used) if used else self.chain.epoch

    def mark_asked(self, indices: Sequence[ParticipantIndex]) -> None:
        self._answered.update(indices)

    def bad_nodes(self) -> list[ParticipantIndex]:
        return sorted({r.index for r in self.rejected})


__all__ = ["KeyReleaseError", "KeyRequestSession", "Rejected", "verify_wrong_partial"]
