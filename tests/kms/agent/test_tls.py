"""Certificates from ``GetTlsKey`` / ``IssueCert``: the App CA, the leaf, RA-TLS, app info."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Iterator

import httpx
import msgpack
import pytest
from coincurve import PublicKey
from Crypto.Hash import keccak
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from guestapi_server import APP_ID, ROOT, ROOT_PUBLIC, FakeSource, build_app, client, serving

from kms.dstack import tls


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[httpx.Client, FakeSource]]:
    app, source = build_app()
    with serving(app) as path, client(path) as c:
        yield c, source


def issue(c: httpx.Client, target: str = "/GetTlsKey", **fields: object) -> dict[str, object]:
    r = c.post(target, json=fields)
    assert r.status_code == 200, r.text
    got = r.json()
    assert isinstance(got, dict)
    return got


def certs(got: dict[str, object]) -> tuple[x509.Certificate, x509.Certificate]:
    chain = got["certificate_chain"]
    assert isinstance(chain, list) and len(chain) == 2
    return (
        x509.load_pem_x509_certificate(chain[0].encode()),
        x509.load_pem_x509_certificate(chain[1].encode()),
    )


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def raw_extension(cert: x509.Certificate, dotted: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(dotted))
    except x509.ExtensionNotFound:
        return None
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert not ext.critical
    value = ext.value.value
    assert value[0] == 0x04  # a DER OCTET STRING wraps every custom extension's content
    return value


def test_the_app_ca_key_is_derived_from_the_app_root() -> None:
    # The derivation, written out independently: HKDF-SHA256 with the app-ca salt.
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"quorum-kms/v1/dstack/app-ca",
        info=APP_ID + (0).to_bytes(4, "big"),
    ).derive(ROOT)
    expected = ec.derive_private_key(int.from_bytes(okm, "big"), ec.SECP256R1()).public_key()
    ca = tls.AppCA(ROOT, APP_ID)
    assert spki(ca.public_key) == spki(expected)
    # Every instance of the app derives the same CA; another app or root does not.
    assert spki(tls.AppCA(ROOT, APP_ID).public_key) == spki(ca.public_key)
    assert spki(tls.AppCA(ROOT, b"\x01" * 20).public_key) != spki(ca.public_key)
    assert spki(tls.AppCA(bytes(31) + b"\x01", APP_ID).public_key) != spki(ca.public_key)


def test_the_app_ca_certificate(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    _, ca = certs(issue(c, subject="a"))
    assert ca.subject == ca.issuer
    assert f"quorum-kms app {APP_ID.hex()}" in ca.subject.rfc4514_string()
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    assert raw_extension(ca, "1.3.6.1.4.1.62397.1.3") == b"\x04\x14" + APP_ID
    assert raw_extension(ca, "1.3.6.1.4.1.62397.1.4") == b"\x04\x06app:ca"
    ca.verify_directly_issued_by(ca)
    assert spki(ca.public_key()) == spki(tls.AppCA(ROOT, APP_ID).public_key)  # type: ignore[arg-type]


def test_the_app_root_vouches_for_the_app_ca() -> None:
    ca = tls.AppCA(ROOT, APP_ID)
    claim = tls.app_ca_claim(ca.public_key)
    digest = keccak.new(digest_bits=256, data=claim).digest()
    recovered = PublicKey.from_signature_and_message(ca.link, digest, hasher=None)
    assert recovered.format() == ROOT_PUBLIC
    assert tls.verify_app_ca_link(ca.public_key, ca.link, ROOT_PUBLIC)
    other = tls.AppCA(ROOT, b"\x02" * 20)
    assert not tls.verify_app_ca_link(other.public_key, ca.link, ROOT_PUBLIC)
    assert not tls.verify_app_ca_link(ca.public_key, ca.link[:-1] + b"\x07", ROOT_PUBLIC)


def test_the_leaf_certificate(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    got = issue(
        c,
        subject="svc.example",
        alt_names=["svc.example", "10.0.0.7", "::1"],
        usage_server_auth=True,
        usage_client_auth=True,
        usage_ra_tls=False,
    )
    leaf, ca = certs(got)
    assert tls.verify_tls_chain(got["certificate_chain"], ca.public_key()) == leaf  # type: ignore[arg-type]
    key = serialization.load_pem_private_key(str(got["key"]).encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert spki(key.public_key()) == spki(leaf.public_key())  # type: ignore[arg-type]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "svc.example"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert raw_extension(leaf, "1.3.6.1.4.1.62397.1.4") == b"\x04\x0aapp:custom"
    assert raw_extension(leaf, "1.3.6.1.4.1.62397.1.3") == b"\x04\x14" + APP_ID
    assert raw_extension(leaf, "1.3.6.1.4.1.62397.1.8") is None
    assert raw_extension(leaf, "1.3.6.1.4.1.62397.1.9") is None
    now = dt.datetime.now(dt.UTC)
    assert abs(leaf.not_valid_after_utc - (now + dt.timedelta(days=3650))) < dt.timedelta(hours=1)


def test_each_call_gets_a_fresh_key(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    a, b = issue(c, subject="x"), issue(c, subject="x")
    assert a["key"] != b["key"]
    assert certs(a)[0] != certs(b)[0]
    assert certs(a)[1] == certs(b)[1]  # one App CA certificate, made at start


def test_eku_follows_the_flags(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    leaf, _ = certs(issue(c, "/v1/IssueCert", subject="x", usage_client_auth=True))
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    leaf, _ = certs(issue(c, "/v1/IssueCert", subject="x"))
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_validity_window(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    leaf, _ = certs(issue(c, subject="x", not_before=1_800_000_000, not_after=1_900_000_000))
    assert leaf.not_valid_before_utc.timestamp() == 1_800_000_000
    assert leaf.not_valid_after_utc.timestamp() == 1_900_000_000
    for target in ("/GetTlsKey", "/v1/IssueCert"):
        for nb, na in ((5, 5), (6, 5)):
            r = c.post(target, json={"subject": "x", "not_before": nb, "not_after": na})
            assert r.status_code == 400
            assert r.json() == {"error": "not_before must be earlier than not_after"}
    r = c.post("/GetTlsKey", json={"subject": "x", "not_after": 2**63})
    assert r.status_code == 400
    assert "not_after" in r.json()["error"]


def test_ra_tls_binds_the_leaf_key(served: tuple[httpx.Client, FakeSource]) -> None:
    c, source = served
    leaf, _ = certs(issue(c, subject="x", usage_ra_tls=True))
    raw = raw_extension(leaf, "1.3.6.1.4.1.62397.1.8")
    assert raw is not None
    attestation = tls.parse_versioned_attestation(tls.extension_content(leaf, tls.OID_ATTESTATION))  # type: ignore[arg-type]
    expected = hashlib.sha512(b"ratls-cert:" + spki(leaf.public_key())).digest()  # type: ignore[arg-type]
    assert attestation["report_data"] == expected
    assert attestation["quote"][568:632] == expected
    assert source.quotes[-1] == expected


def test_app_info_extension(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    leaf, _ = certs(issue(c, "/v1/IssueCert", subject="x", with_app_info=True))
    content = tls.extension_content(leaf, tls.OID_APP_INFO)
    assert content is not None
    info = msgpack.unpackb(content)
    assert info["app_id"] == APP_ID
    assert info["app_name"] == "demo-app"
    assert json.loads(info["key_provider_info"])["name"] == "quorum-kms"


def test_verify_tls_chain_rejects_foreign_and_tampered_chains(
    served: tuple[httpx.Client, FakeSource],
) -> None:
    c, _ = served
    got = issue(c, subject="x")
    chain = got["certificate_chain"]
    assert isinstance(chain, list)
    ca = tls.AppCA(ROOT, APP_ID)
    tls.verify_tls_chain(chain, ca.public_key)
    other = tls.AppCA(ROOT, b"\x03" * 20)
    with pytest.raises(ValueError, match="expected key"):
        tls.verify_tls_chain(chain, other.public_key)
    with pytest.raises(ValueError):  # a leaf from this app under another app's CA
        tls.verify_tls_chain([chain[0], other.pem], other.public_key)
    with pytest.raises(ValueError):
        tls.verify_tls_chain([chain[1], chain[1]], ca.public_key)  # the CA is not a leaf
    with pytest.raises(ValueError):
        tls.verify_tls_chain(chain[:1], ca.public_key)


def test_issue_cert_refuses_malformed_names() -> None:
    ca = tls.AppCA(ROOT, APP_ID)
    key = ec.generate_private_key(ec.SECP256R1())
    for request, text in [
        (tls.CertRequest(subject="x" * 65), "subject"),
        (tls.CertRequest(alt_names=("",)), "alt name"),
        (tls.CertRequest(alt_names=("bad name\n",)), "alt name"),
        (tls.CertRequest(alt_names=("ü.example",)), "alt name"),
        (tls.CertRequest(alt_names=("a",) * 65), "alt names"),
        (tls.CertRequest(usage_ra_tls=True), "attestation"),
    ]:
        with pytest.raises(tls.TlsError, match=text):
            tls.issue_cert(ca, request, key, now=1_800_000_000)


def test_the_app_ca_link_is_no_link_0() -> None:
    """The CA link must not verify as the v0 chain of purpose ``app-ca`` whose ed25519
    "public key" is the SHA-256 of the CA's SPKI (it did with an ``app-ca:`` text claim)."""
    from kms.dstack import keys
    from kms.dstack.chain import ChainError, verify_chain
    from mpc import appcert
    from mpc.math import G2

    s = 7  # a toy master secret: link 1 is s·H_APPCERT(link message)
    root_pub = keys.root_public(ROOT)
    link1 = (s * appcert.appcert_base(appcert.link_message(APP_ID, root_pub))).to_bytes()
    mpk = s * G2.generator()
    ca = tls.AppCA(ROOT, APP_ID)
    x = hashlib.sha256(spki(ca.public_key)).digest()
    # The chain is well formed: the root's own link 0 with the same link 1 verifies.
    claim0 = keys.v0_claim("app-ca", keys.public_key("ed25519", bytes(32)))
    assert verify_chain(mpk, APP_ID, claim=claim0, chain=[keys.sign_link(ROOT, claim0), link1])
    with pytest.raises(ChainError):
        verify_chain(mpk, APP_ID, claim=keys.v0_claim("app-ca", x), chain=[ca.link, link1])
    # The CA claim itself is no v0 or v1 claim of any key: it ends in raw bytes.
    assert not ca.claim.rstrip(b"0123456789abcdef").endswith(b":")
