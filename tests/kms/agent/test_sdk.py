"""The unmodified dstack SDK (``dstack-sdk==0.5.4``, in its own venv) against ``kms agent run``
on a devnet of real node processes.

One devnet (4 nodes, t = 2) serves the module. The SDK runs as a subprocess with
``DSTACK_SIMULATOR_ENDPOINT`` set to the agent's socket (``sdk_probe.py``); what it returns
is checked here with the project's own verifiers: the chain of every key under the master
public key, the quote against the simulated root, the TLS chain against the app CA. The
keys stay the same when the agent restarts, with a node stopped, and after a node joins and
another leaves; a CVM outside the policy gets no key and no socket.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kms.app import devnet
from kms.app.agentproc import AgentProcess, run_sdk, sdk_python
from kms.attest import parse_tdx_quote, verify_quote
from kms.dstack import chain as dchain
from kms.dstack import keys as dkeys
from kms.dstack import tls as dtls

pytestmark = [pytest.mark.slow, pytest.mark.sdk]

EMIT_EVENT_ERROR = (
    "EmitEvent was removed in dstack 0.6.0; runtime RTMR3 events are system-owned and "
    "cannot be extended by apps"
)
PROBE = Path(__file__).with_name("sdk_probe.py")


def probe(endpoint: Path | str, what: str = "all") -> dict[str, Any]:
    """Every SDK call (``all``) or the keys only (``keys``), as the SDK returned them."""
    return dict(json.loads(run_sdk(PROBE, endpoint, what)))


class Net:
    def __init__(self, directory: Path, sock: Path) -> None:
        self.directory = directory
        self.sock = sock
        self.proc: Any = None
        self.agent: AgentProcess | None = None

    @property
    def state(self) -> dict[str, Any]:
        return devnet.read_state(self.directory)

    @property
    def mpk(self) -> bytes:
        return bytes.fromhex(self.state["master_public_key"])

    @property
    def app_id(self) -> bytes:
        return bytes.fromhex(self.state["apps"][devnet.DSTACK_APP])

    def start_agent(self, *extra: str) -> str:
        self.stop_agent()
        self.agent = AgentProcess.devnet(self.directory, self.sock, *extra)
        line = self.agent.wait_serving()
        assert not self.agent.early_socket, "the socket existed before the agent answered"
        return line

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    sdk_python()  # fail at once, clearly, without the SDK's venv
    base = tmp_path_factory.mktemp("agent")
    n = Net(base / "devnet", base / "dstack.sock")
    n.proc = devnet.launch(n.directory, nodes=4, threshold=2, start_in=5, window_period=4.0)
    try:
        state = devnet.wait_for_apps(n.directory, n.proc, 150)
        assert state is not None, "the devnet did not come up"
        line = n.start_agent()
        assert line == f"serving on {n.sock}"
        yield n
    finally:
        n.stop_agent()
        n.proc.terminate()
        try:
            n.proc.wait(30)
        except Exception:
            n.proc.kill()


@pytest.fixture(scope="module")
def first(net: Net) -> dict[str, Any]:
    """Every SDK call once, against the first agent."""
    return probe(net.sock)


def _chain_root(net: Net, purpose: str, alg: str, entry: dict[str, Any]) -> bytes:
    key = bytes.fromhex(entry["key"])
    chain = [bytes.fromhex(c) for c in entry["chain"]]
    assert [len(c) for c in chain] == [65, 48]
    base = "ed25519" if alg == "ed25519" else "secp256k1"
    claim = dkeys.v0_claim(purpose, dkeys.public_key(base, key))
    return dchain.verify_chain(net.mpk, net.app_id, claim=claim, chain=chain)


def test_get_key_every_algorithm_chains_to_the_master_key(net: Net, first: dict[str, Any]) -> None:
    roots = set()
    by_path: dict[str, set[str]] = {}
    for name, entry in first["keys"].items():
        path, purpose, alg = name.split("|")
        assert len(entry["key"]) == 64 and entry["key"] == entry["key"].lower()
        roots.add(_chain_root(net, purpose, alg, entry))
        by_path.setdefault(path, set()).add(entry["key"])
    # One app root behind every key; the algorithm does not enter the v0 derivation.
    assert len(roots) == 1
    assert all(len(keys) == 1 for keys in by_path.values())
    assert len({next(iter(k)) for k in by_path.values()}) == len(by_path)
    info = json.loads(first["info"]["key_provider_info"])
    cert = info["app_key_cert"]
    dchain.verify_app_key_cert(
        net.mpk,
        net.app_id,
        roots.pop(),
        bytes.fromhex(first["keys"]["wallet/main|ethereum|secp256k1"]["chain"][1]),
        version=cert["version"],
        epoch=cert["epoch"],
        qkms_signature=bytes.fromhex(cert["signature"]),
    )
    assert cert["version"] == 1 and info["mpk"] == net.mpk.hex()


def _simulated_root(net: Net) -> tuple[bytes, str]:
    tee = net.directory / "simulated-tee"
    return (tee / "root.der").read_bytes(), (tee / "collateral.json").read_text()


def _verify(net: Net, quote: bytes) -> Any:
    root, collateral = _simulated_root(net)
    return verify_quote(
        quote,
        collateral,
        now=int(time.time()),
        root_ca=root,
        allowed_statuses=("UpToDate", "SWHardeningNeeded"),
    )


def test_info_and_quote_replay_to_the_quoted_registers(net: Net, first: dict[str, Any]) -> None:
    info, quote = first["info"], first["quote"]
    assert bytes.fromhex(info["app_id"]) == net.app_id
    app_compose = devnet.dstack_app_compose_path(net.directory).read_text()
    assert info["app_compose"] == app_compose
    assert info["compose_hash"] == hashlib.sha256(app_compose.encode()).hexdigest()
    verified = _verify(net, bytes.fromhex(quote["quote"]))
    rtmrs = [r.hex() for r in verified.rtmrs]
    assert [quote["replayed"][str(i)] for i in range(4)] == rtmrs
    assert info["rtmrs"] == rtmrs and info["mrtd"] == verified.mr_td.hex()
    assert verified.report_data == b"quorum-kms sdk probe".ljust(64, b"\0")
    assert quote["report_data"] == verified.report_data.hex()
    assert parse_tdx_quote(bytes.fromhex(quote["quote"])).fields.rtmr3.hex() == rtmrs[3]


def _attested_quote(attestation: bytes) -> bytes:
    """The quote of a VersionedAttestation (its report data is checked by the caller)."""
    return bytes(dtls.parse_versioned_attestation(attestation)["quote"])


def test_attest_carries_a_quote_that_verifies(net: Net, first: dict[str, Any]) -> None:
    verified = _verify(net, _attested_quote(bytes.fromhex(first["attestation"])))
    assert verified.report_data == b"quorum-kms attest".ljust(64, b"\0")


def test_sign_and_verify(net: Net, first: dict[str, Any]) -> None:
    link1 = first["keys"]["wallet/main|ethereum|secp256k1"]["chain"][1]
    for alg, s in first["sign"].items():
        assert s["valid"] is True and s["valid_for_other_data"] is False, alg
        assert len(s["chain"]) == 3 and s["chain"][0] == s["signature"] and s["chain"][2] == link1
        claim = dkeys.v0_claim("signing", bytes.fromhex(s["public_key"]))
        chain = [bytes.fromhex(s["chain"][1]), bytes.fromhex(s["chain"][2])]
        dchain.verify_chain(net.mpk, net.app_id, claim=claim, chain=chain)


def _certs(pems: list[str]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in pems]


def test_tls_keys_chain_to_the_app_ca_and_bind_the_quote(net: Net, first: dict[str, Any]) -> None:
    for kind in ("default", "ra"):
        tls = first["tls"][kind]
        assert tls["key"].startswith("-----BEGIN PRIVATE KEY-----")
        certs = _certs(tls["chain"])
        ca_public = certs[1].public_key()
        dtls.verify_tls_chain(tls["chain"], ca_public)
        # The app CA is the certified app root's: its link verifies under that root.
        info = json.loads(first["info"]["key_provider_info"])
        root = _chain_root(
            net, "ethereum", "secp256k1", first["keys"]["wallet/main|ethereum|secp256k1"]
        )
        assert dtls.verify_app_ca_link(ca_public, bytes.fromhex(info["app_ca"]["link"]), root)
    leaf = _certs(first["tls"]["ra"]["chain"])[0]
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "app.example"
    assert int(leaf.not_valid_before_utc.timestamp()) == first["tls"]["ra"]["not_before"]
    assert int(leaf.not_valid_after_utc.timestamp()) == first["tls"]["ra"]["not_before"] + 86460
    assert dtls.extension_content(leaf, dtls.OID_APP_INFO)  # with_app_info
    attestation = dtls.extension_content(leaf, dtls.OID_ATTESTATION)
    assert attestation is not None
    verified = _verify(net, _attested_quote(attestation))
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert verified.report_data == hashlib.sha512(b"ratls-cert:" + spki).digest()
    default_leaf = _certs(first["tls"]["default"]["chain"])[0]
    assert dtls.extension_content(default_leaf, dtls.OID_ATTESTATION) is None


def test_version_reachability_and_emit_event(first: dict[str, Any]) -> None:
    assert first["reachable"] is True
    assert isinstance(first["version"]["version"], str) and first["version"]["version"]
    assert first["emit_event"]["status"] == 400
    assert json.loads(first["emit_event"]["body"]) == {"error": EMIT_EVENT_ERROR}


def _wait_serving(net: Net, index: int, timeout: float = 30.0) -> None:
    url = next(n["http_url"] for n in net.state["nodes"] if int(n["index"]) == index)
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = devnet.status_of(url)
        if st and st.get("has_share"):
            return
        time.sleep(0.2)
    raise AssertionError(f"node {index} does not serve again")


def _keys(net: Net) -> dict[str, Any]:
    return dict(probe(net.sock, "keys")["keys"])


def test_same_keys_after_restart_with_a_node_stopped_and_after_join_and_leave(
    net: Net, first: dict[str, Any], tmp_path: Path
) -> None:
    net.stop_agent()
    assert not net.sock.exists(), "the agent left its socket behind"
    # The restart also opens an env file sealed to the app's env inbox and signed by its
    # owner key (kms env encrypt).
    secret = b"API_TOKEN=a-secret-only-the-cvm-reads\nENV_VERSION=7\n"
    (tmp_path / "app.env").write_bytes(secret)
    subprocess.run(
        [
            *(sys.executable, "-m", "kms.cli", "env", "encrypt", "--mpk", net.mpk.hex()),
            *("--app", net.app_id.hex(), str(tmp_path / "app.env"), str(tmp_path / "app.env.enc")),
            *("--owner-key", str(net.directory / "apps" / f"{devnet.DSTACK_APP}.owner")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    out = tmp_path / "decrypted.env"
    port = devnet.free_port()
    net.start_agent(
        *("--env-file", str(tmp_path / "app.env.enc"), "--env-out", str(out)),
        *("--http", f"127.0.0.1:{port}"),
    )
    assert out.read_bytes() == secret and out.stat().st_mode & 0o777 == 0o600
    assert _keys(net) == first["keys"]
    # The same API over loopback TCP (--http), the SDK given an http:// endpoint.
    assert probe(f"http://127.0.0.1:{port}", "keys")["keys"] == first["keys"]
    assert net.agent is not None
    net.agent.stop()
    # Nothing after "serving on PATH", on stdout or stderr: the env file is never logged.
    assert net.agent.output == ""
    devnet.stop_node(net.directory, 1)
    try:
        net.start_agent()
        assert _keys(net) == first["keys"]
    finally:
        devnet.start_node(net.directory, 1)
    _wait_serving(net, 1)  # the join request goes to a member that answers
    devnet.add_node(net.directory, timeout=60)
    devnet.remove_node(net.directory, 2, timeout=60)
    net.start_agent()
    assert _keys(net) == first["keys"]


def test_a_cvm_outside_the_policy_gets_no_key_and_no_socket(net: Net, tmp_path: Path) -> None:
    sock = tmp_path / "rogue.sock"
    rogue = AgentProcess.devnet(net.directory, sock, "--rogue-measurement")
    assert rogue.wait_exit(60) != 0
    err = rogue.output
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "policy" in lines[0]
    assert not sock.exists()
