"""BLS signatures over BLS12-381 (draft-irtf-cfrg-bls-signature-05): a frozen public API.

The six ciphersuites of the draft's §4.2 are module-level scheme objects:

=============  =============  ==========  ===========================================
object         keys / sigs    scheme      ciphersuite ID (= hash-to-curve DST)
=============  =============  ==========  ===========================================
MinPkBasic     G1 48 / G2 96  basic       ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_``
MinPkAug       G1 48 / G2 96  augmented   ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_AUG_``
MinPkPop       G1 48 / G2 96  PoP         ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_``
MinSigBasic    G2 96 / G1 48  basic       ``BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_``
MinSigAug      G2 96 / G1 48  augmented   ``BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_AUG_``
MinSigPop      G2 96 / G1 48  PoP         ``BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_``
=============  =============  ==========  ===========================================

``MinPk*`` is the draft's *minimal-pubkey-size* variant (§2.1; ``MinPkPop`` is
Ethereum's consensus suite), ``MinSig*`` the *minimal-signature-size* variant
(``MinSigBasic`` is drand quicknet's). The PoP schemes hash public keys for
proofs of possession with ``BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_``
(MinPk) or ``BLS_POP_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_`` (MinSig), §4.2.3.

One generic class, :class:`BlsScheme`, implements every suite; it is
parameterised by an *orientation* (which group holds public keys and which
holds signatures, and which ``hash_to_gX`` maps messages) and a *variant*
(basic §3.1, message augmentation §3.2, proof of possession §3.3).
:class:`PopScheme` adds the three PoP-only operations.

Conventions:

* Secret keys are ints in ``[1, r)``; public keys, signatures and proofs are
  ZCash-compressed point encodings (``bytes``).
* ``sign``, ``sk_to_pk``, ``pop_prove`` and ``key_gen`` raise ``ValueError`` on a
  bad secret input; ``aggregate`` raises ``ValueError`` (``InvalidEncoding`` for a
  bad signature) on an empty list or an undecodable signature.
* Every check (``verify``, ``aggregate_verify``, ``fast_aggregate_verify``,
  ``pop_verify``, ``key_validate``) returns ``False`` for malformed input (bad
  lengths or encodings, points off the curve or outside the subgroup, identity
  public keys, wrong argument types, empty lists) and never raises for it.
* Pairing equations are checked as one product with a single final
  exponentiation, pairing the signature with the *negated* generator of the key
  group: ``e(H(m), PK) · e(σ, −P) == 1`` in the draft's notation (§2.7 steps
  7–9), with the arguments of each ``e`` ordered (G1, G2) for the orientation.
* Scalar multiplication by secret keys is constant-time (blst).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeGuard, TypeVar

from mpc.errors import InvalidEncoding
from mpc.math import G1, G2, R, hash_to_g1, hash_to_g2, pairing_check

__all__ = [
    "DST_MINSIG_POP_PROOF",
    "DST_MINSIG_SIG_AUG",
    "DST_MINSIG_SIG_BASIC",
    "DST_MINSIG_SIG_POP",
    "DST_POP_PROOF",
    "DST_SIG_AUG",
    "DST_SIG_BASIC",
    "DST_SIG_POP",
    "KEYGEN_SALT",
    "BlsScheme",
    "MinPkAug",
    "MinPkBasic",
    "MinPkPop",
    "MinSigAug",
    "MinSigBasic",
    "MinSigPop",
    "PopScheme",
    "Variant",
    "key_gen",
]

# --- ciphersuite IDs (§4.2), used verbatim as hash-to-curve DSTs ----------------

DST_SIG_BASIC = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_"
"""MinPk basic (§4.2.1): public keys in G1, signatures in G2."""
DST_SIG_AUG = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_AUG_"
"""MinPk message augmentation (§4.2.2)."""
DST_SIG_POP = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
"""MinPk proof of possession (§4.2.3): Ethereum's signature suite."""
DST_POP_PROOF = b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
"""MinPk ``hash_pubkey_to_point`` DST for proofs of possession (§4.2.3)."""

DST_MINSIG_SIG_BASIC = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_"
"""MinSig basic (§4.2.1): public keys in G2, signatures in G1 (drand quicknet)."""
DST_MINSIG_SIG_AUG = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_AUG_"
"""MinSig message augmentation (§4.2.2)."""
DST_MINSIG_SIG_POP = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_"
"""MinSig proof of possession (§4.2.3)."""
DST_MINSIG_POP_PROOF = b"BLS_POP_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_"
"""MinSig ``hash_pubkey_to_point`` DST for proofs of possession (§4.2.3)."""

# --- KeyGen (§2.3) ------------------------------------------------------------

KEYGEN_SALT = hashlib.sha256(b"BLS-SIG-KEYGEN-SALT-").digest()
"""Default KeyGen salt ``H("BLS-SIG-KEYGEN-SALT-")``: compatible with draft-04,
EIP-2333 and py_ecc (§2.3, last paragraph)."""

_SIG_PREFIX = b"BLS_SIG_"
_POP_PREFIX = b"BLS_POP_"

_KEYGEN_L = 48  # ceil((3 * ceil(log2(r))) / 16) for the 255-bit r
_MIN_IKM_LEN = 32


def _is_octets(x: object) -> TypeGuard[bytes | bytearray | memoryview]:
    return isinstance(x, bytes | bytearray | memoryview)


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2) with SHA-256."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3) with SHA-256."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def key_gen(ikm: bytes, key_info: bytes = b"", *, salt: bytes = KEYGEN_SALT) -> int:
    """KeyGen (§2.3): derive a secret key ``1 <= SK < r`` from secret keying material.

    ``PRK = HKDF-Extract(salt, IKM || I2OSP(0, 1))``,
    ``OKM = HKDF-Expand(PRK, key_info || I2OSP(L, 2), L)`` with ``L = 48``,
    ``SK = OS2IP(OKM) mod r``; while ``SK == 0``, ``salt = SHA-256(salt)`` and
    repeat. The default salt ``SHA-256("BLS-SIG-KEYGEN-SALT-")`` makes this the
    draft-04 / EIP-2333 / py_ecc algorithm (start from ``"BLS-SIG-KEYGEN-SALT-"``
    and re-hash it before every attempt). ``salt`` is the application-chosen
    parameter the draft recommends exposing.

    Raises ``ValueError`` if ``ikm`` is shorter than 32 bytes (the draft's MUST)
    or if an argument is not an octet string.
    """
    if not _is_octets(ikm) or not _is_octets(key_info) or not _is_octets(salt):
        raise ValueError("key_gen takes octet strings (bytes)")
    ikm, key_info, salt = bytes(ikm), bytes(key_info), bytes(salt)
    if len(ikm) < _MIN_IKM_LEN:
        raise ValueError(f"IKM must be at least {_MIN_IKM_LEN} bytes")
    info = key_info + _KEYGEN_L.to_bytes(2, "big")
    while True:
        prk = _hkdf_extract(salt, ikm + b"\x00")
        okm = _hkdf_expand(prk, info, _KEYGEN_L)
        sk = int.from_bytes(okm, "big") % R
        if sk != 0:
            return sk
        salt = hashlib.sha256(salt).digest()


def _check_sk(sk: object) -> int:
    """Validate a secret key: an int (not a bool) with ``1 <= sk < r`` (§2.4, §2.6)."""
    if isinstance(sk, bool) or not isinstance(sk, int):
        raise ValueError("secret key must be an int")
    if not 0 < sk < R:
        raise ValueError("secret key must satisfy 1 <= SK < r")
    return sk


# --- orientation and variant -------------------------------------------------

_K = TypeVar("_K", G1, G2)
"""The group holding public keys."""
_S = TypeVar("_S", G1, G2)
"""The group holding signatures (and messages hashed to points)."""


@dataclass(frozen=True, slots=True)
class _Orientation(Generic[_K, _S]):
    """Which group holds keys and which holds signatures (§2.1, §2.2).

    ``pair(k, s)`` orders a (key-group, signature-group) pair of points as the
    (G1, G2) argument pair of the pairing, i.e. the draft's ``pairing(s, k)``.
    """

    name: str
    key_group: type[_K]
    sig_group: type[_S]
    hash_to_point: Callable[[bytes, bytes], _S]
    pair: Callable[[_K, _S], tuple[G1, G2]]


def _pair_min_pk(k: G1, s: G2) -> tuple[G1, G2]:
    return (k, s)


def _pair_min_sig(k: G2, s: G1) -> tuple[G1, G2]:
    return (s, k)


_MIN_PK: _Orientation[G1, G2] = _Orientation("MinPk", G1, G2, hash_to_g2, _pair_min_pk)
"""Minimal-pubkey-size (§2.1): keys in G1, signatures in G2, P = P1."""
_MIN_SIG: _Orientation[G2, G1] = _Orientation("MinSig", G2, G1, hash_to_g1, _pair_min_sig)
"""Minimal-signature-size (§2.1): keys in G2, signatures in G1, P = P2."""


class Variant(Enum):
    """The scheme of §3: how rogue-key attacks are prevented."""

    BASIC = "NUL"
    """§3.1: aggregate verification requires distinct messages."""
    AUG = "AUG"
    """§3.2: every message is prefixed with the signer's public key."""
    POP = "POP"
    """§3.3: public keys come with proofs of possession."""


def _octets_list(items: object) -> list[bytes] | None:
    """``items`` as a list of ``bytes``, or ``None`` if it is not a sequence of octet strings."""
    if not isinstance(items, Sequence) or isinstance(items, str | bytes | bytearray):
        return None
    out: list[bytes] = []
    for item in items:
        if not _is_octets(item):
            return None
        out.append(bytes(item))
    return out


class BlsScheme(Generic[_K, _S]):
    """One BLS ciphersuite of §4.2: an orientation (§2.1) and a variant (§3).

    Use the module-level instances (``MinPkBasic`` … ``MinSigPop``) rather than
    constructing new ones.
    """

    __slots__ = ("_ciphersuite", "_name", "_neg_gen", "_o", "_variant")

    def __init__(
        self, name: str, orientation: _Orientation[_K, _S], variant: Variant, ciphersuite: bytes
    ) -> None:
        self._name = name
        self._o: _Orientation[_K, _S] = orientation
        self._variant = variant
        self._ciphersuite = ciphersuite
        self._neg_gen: _K = -orientation.key_group.generator()

    def __repr__(self) -> str:
        return f"<{self._name} {self._ciphersuite.decode()}>"

    @property
    def name(self) -> str:
        """The draft-style name, e.g. ``"MinPkPop"``."""
        return self._name

    @property
    def variant(self) -> Variant:
        """The scheme of §3 (basic, message augmentation or proof of possession)."""
        return self._variant

    @property
    def ciphersuite(self) -> bytes:
        """The ciphersuite ID (§4.1, §4.2), also the ``hash_to_point`` DST."""
        return self._ciphersuite

    @property
    def public_key_size(self) -> int:
        """Length of an encoded public key (48 for MinPk, 96 for MinSig)."""
        return self._o.key_group.SIZE

    @property
    def signature_size(self) -> int:
        """Length of an encoded signature (96 for MinPk, 48 for MinSig)."""
        return self._o.sig_group.SIZE

    # --- decoding helpers --------------------------------------------------

    def _pk_point(self, pk: object) -> _K | None:
        """KeyValidate (§2.5) returning the point: decoded, in the subgroup, not the identity."""
        if not _is_octets(pk):
            return None
        try:
            point = self._o.key_group.from_bytes(bytes(pk))
        except InvalidEncoding:
            return None
        if point.is_identity():
            return None
        return point

    def _sig_point(self, sig: object) -> _S | None:
        """``signature_to_point`` plus ``signature_subgroup_check`` (§2.7 steps 1–3)."""
        if not _is_octets(sig):
            return None
        try:
            return self._o.sig_group.from_bytes(bytes(sig))
        except InvalidEncoding:
            return None

    # --- core operations (§2) ----------------------------------------------

    def _core_sign(self, sk: int, msg: bytes, dst: bytes) -> bytes:
        """CoreSign (§2.6): ``SK * hash_to_point(message)``."""
        return (self._o.hash_to_point(msg, dst) * sk).to_bytes()

    def _core_verify(self, pk: _K, msg: bytes, sig: _S, dst: bytes) -> bool:
        """CoreVerify (§2.7) steps 6–9 on decoded, validated points."""
        pair = self._o.pair
        return pairing_check([pair(pk, self._o.hash_to_point(msg, dst)), pair(self._neg_gen, sig)])

    def _core_aggregate_verify(self, pks: list[_K], msgs: list[bytes], sig: _S) -> bool:
        """CoreAggregateVerify (§2.9) steps 4–11 on decoded, validated points."""
        pair = self._o.pair
        h = self._o.hash_to_point
        pairs = [pair(pk, h(m, self.ciphersuite)) for pk, m in zip(pks, msgs, strict=True)]
        pairs.append(pair(self._neg_gen, sig))
        return pairing_check(pairs)

    def _augment(self, pk: bytes, msg: bytes) -> bytes:
        """The message actually signed: ``PK || message`` for AUG (§3.2), else ``message``."""
        return pk + msg if self.variant is Variant.AUG else msg

    # --- public API ---------------------------------------------------------

    def key_gen(self, ikm: bytes, key_info: bytes = b"", *, salt: bytes = KEYGEN_SALT) -> int:
        """KeyGen (§2.3); identical for every ciphersuite, see :func:`key_gen`."""
        return key_gen(ikm, key_info, salt=salt)

    def sk_to_pk(self, sk: int) -> bytes:
        """SkToPk (§2.4): ``point_to_pubkey(SK * P)``; ``ValueError`` unless ``1 <= sk < r``."""
        return (self._o.key_group.generator() * _check_sk(sk)).to_bytes()

    def key_validate(self, pk: bytes) -> bool:
        """KeyValidate (§2.5): a canonical encoding of a non-identity point of the subgroup."""
        return self._pk_point(pk) is not None

    def sign(self, sk: int, msg: bytes) -> bytes:
        """Sign: CoreSign (§2.6); for AUG ``CoreSign(SK, PK || message)`` (§3.2.1).

        Raises ``ValueError`` unless ``sk`` is an int with ``1 <= sk < r`` or if
        ``msg`` is not an octet string.
        """
        sk = _check_sk(sk)
        if not _is_octets(msg):
            raise ValueError("message must be an octet string (bytes)")
        msg = bytes(msg)
        if self.variant is Variant.AUG:
            msg = self._augment(self.sk_to_pk(sk), msg)
        return self._core_sign(sk, msg, self.ciphersuite)

    def verify(self, pk: bytes, msg: bytes, sig: bytes) -> bool:
        """Verify: CoreVerify (§2.7, with KeyValidate), on ``PK || message`` for AUG (§3.2.2).

        Returns ``False`` on any malformed input.
        """
        if not _is_octets(msg):
            return False
        sig_point = self._sig_point(sig)
        if sig_point is None:
            return False
        pk_point = self._pk_point(pk)
        if pk_point is None:
            return False
        message = self._augment(pk_point.to_bytes(), bytes(msg))
        return self._core_verify(pk_point, message, sig_point, self.ciphersuite)

    def aggregate(self, sigs: list[bytes]) -> bytes:
        """Aggregate (§2.8): the sum of the signature points.

        Each signature must decode with the full checks (including the subgroup
        check, which the draft leaves to verification). Raises ``ValueError`` for
        an empty list and ``InvalidEncoding`` (a ``ValueError``) for a bad
        signature.
        """
        items = _octets_list(sigs)
        if items is None:
            raise ValueError("aggregate takes a list of signatures (bytes)")
        if not items:
            raise ValueError("aggregate needs at least one signature")
        total = self._o.sig_group.from_bytes(items[0])
        for sig in items[1:]:
            total = total + self._o.sig_group.from_bytes(sig)
        return total.to_bytes()

    def aggregate_verify(self, pks: list[bytes], msgs: list[bytes], sig: bytes) -> bool:
        """AggregateVerify: §3.1.1 (basic: messages must be distinct), §3.2.3 (AUG:
        ``PK_i || message_i``), §3.3 (PoP: CoreAggregateVerify, §2.9).

        Returns ``False`` for empty or mismatched lists and any malformed input.
        """
        keys = _octets_list(pks)
        messages = _octets_list(msgs)
        if keys is None or messages is None or not keys or len(keys) != len(messages):
            return False
        if self.variant is Variant.BASIC and len(set(messages)) != len(messages):
            return False
        sig_point = self._sig_point(sig)
        if sig_point is None:
            return False
        points: list[_K] = []
        for pk in keys:
            point = self._pk_point(pk)
            if point is None:
                return False
            points.append(point)
        messages = [self._augment(pk, m) for pk, m in zip(keys, messages, strict=True)]
        return self._core_aggregate_verify(points, messages, sig_point)


class PopScheme(BlsScheme[_K, _S]):
    """A proof-of-possession ciphersuite (§3.3): adds PopProve, PopVerify and
    FastAggregateVerify."""

    __slots__ = ()

    @property
    def pop_ciphersuite(self) -> bytes:
        """The ``hash_pubkey_to_point`` DST: ``"BLS_POP_" || H2C_SUITE_ID || SC_TAG || "_"``
        (§3.3.1, §4.1, §4.2.3), i.e. the ciphersuite ID with ``BLS_SIG_`` → ``BLS_POP_``."""
        return _POP_PREFIX + self.ciphersuite[len(_SIG_PREFIX) :]

    def pop_prove(self, sk: int) -> bytes:
        """PopProve (§3.3.2): ``SK * hash_pubkey_to_point(SkToPk(SK))``.

        Raises ``ValueError`` unless ``sk`` is an int with ``1 <= sk < r``.
        """
        sk = _check_sk(sk)
        return self._core_sign(sk, self.sk_to_pk(sk), self.pop_ciphersuite)

    def pop_verify(self, pk: bytes, proof: bytes) -> bool:
        """PopVerify (§3.3.3); ``False`` on any malformed input."""
        proof_point = self._sig_point(proof)
        if proof_point is None:
            return False
        pk_point = self._pk_point(pk)
        if pk_point is None:
            return False
        return self._core_verify(pk_point, pk_point.to_bytes(), proof_point, self.pop_ciphersuite)

    def fast_aggregate_verify(self, pks: list[bytes], msg: bytes, sig: bytes) -> bool:
        """FastAggregateVerify (§3.3.4): CoreVerify under the sum of the public keys.

        Stricter than the draft, which leaves key validation to PopVerify: every
        key must pass KeyValidate, and (as CoreVerify requires) so must the sum.
        The caller must still have checked a proof of possession for every key.
        Returns ``False`` for an empty list and any malformed input.
        """
        keys = _octets_list(pks)
        if keys is None or not keys or not _is_octets(msg):
            return False
        sig_point = self._sig_point(sig)
        if sig_point is None:
            return False
        total: _K | None = None
        for pk in keys:
            point = self._pk_point(pk)
            if point is None:
                return False
            total = point if total is None else total + point
        if total is None or total.is_identity():
            return False
        return self._core_verify(total, bytes(msg), sig_point, self.ciphersuite)


# --- the six ciphersuites of §4.2 ---------------------------------------------

MinPkBasic: BlsScheme[G1, G2] = BlsScheme("MinPkBasic", _MIN_PK, Variant.BASIC, DST_SIG_BASIC)
MinPkAug: BlsScheme[G1, G2] = BlsScheme("MinPkAug", _MIN_PK, Variant.AUG, DST_SIG_AUG)
MinPkPop: PopScheme[G1, G2] = PopScheme("MinPkPop", _MIN_PK, Variant.POP, DST_SIG_POP)
MinSigBasic: BlsScheme[G2, G1] = BlsScheme(
    "MinSigBasic", _MIN_SIG, Variant.BASIC, DST_MINSIG_SIG_BASIC
)
MinSigAug: BlsScheme[G2, G1] = BlsScheme("MinSigAug", _MIN_SIG, Variant.AUG, DST_MINSIG_SIG_AUG)
MinSigPop: PopScheme[G2, G1] = PopScheme("MinSigPop", _MIN_SIG, Variant.POP, DST_MINSIG_SIG_POP)
