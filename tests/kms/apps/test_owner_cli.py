"""An app owner's commands without a committee: ``kms tee init``, ``kms app create``,
``kms app policy sign``, the policy TOML's strictness, and the one-line errors of the
commands that talk to nodes when they cannot."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.app import owner, simtee
from kms.cli import app
from kms.policy import Measurement, OwnerChain, PolicyBundle
from mpc.math import G2

runner = CliRunner()
MPK = (7 * G2.generator()).to_bytes().hex()


def invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result: Any, code: int = 2) -> str:
    """The command exited ``code`` with one ``error: …`` line and no traceback."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "Error:" not in result.output
    return str(lines[0])


# --- kms tee init ----------------------------------------------------------------------------


def test_tee_init_writes_a_secret_seed_and_measurement_files(tmp_path: Path) -> None:
    tee = tmp_path / "tee"
    r = invoke("tee", "init", "--dir", tee)
    assert r.exit_code == 0, r.output
    assert "simulated TEE" in r.output
    assert stat.S_IMODE((tee / "seed").stat().st_mode) == 0o600
    for name in ("root.der", "collateral.json", "node.measurement.toml", "app.measurement.toml"):
        assert (tee / name).is_file()
    node_m = simtee.load_measurement(tee / "node.measurement.toml")
    app_m = simtee.load_measurement(tee / "app.measurement.toml")
    assert node_m != app_m and node_m.rtmr3 is not None and len(node_m.mr_td) == 48
    # The same seed gives the same root: quotes made later verify under root.der.
    assert simtee.load(tee).root_ca_der == (tee / "root.der").read_bytes()
    error = one_line_error(invoke("tee", "init", "--dir", tee))
    assert "TEE directory already" in error


def test_a_measurement_file_names_its_unknown_key(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text(simtee.measurement_toml(simtee.random_measurement()) + 'rtmr4 = "00"\n')
    with pytest.raises(simtee.TEEError, match="unknown key 'rtmr4'"):
        simtee.load_measurement(f)
    regs = simtee.random_measurement()
    regs["compose_hash"] = bytes(32)
    f.write_text(simtee.measurement_toml(regs))
    with pytest.raises(simtee.TEEError, match="exactly one of rtmr3 and compose_hash"):
        simtee.load_measurement(f)


# --- kms app create ------------------------------------------------------------------------------


def test_owner_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    r = invoke("app", "create", "--owner-key", key)
    assert r.exit_code == 0, r.output
    made = owner.load_owner(key)
    assert f"app id {made.app_id.hex()}" in r.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    error = one_line_error(invoke("app", "create", "--owner-key", key, "--json"))
    assert "never overwritten" in error
    assert key.read_bytes() == before
    # A planted link is not written through either.
    victim = tmp_path / "victim"
    victim.write_text("x")
    link = tmp_path / "link.key"
    link.symlink_to(victim)
    one_line_error(invoke("app", "create", "--owner-key", link))
    assert victim.read_text() == "x"


def test_app_create_json_prints_the_app_id(tmp_path: Path) -> None:
    r = invoke("app", "create", "--owner-key", tmp_path / "k", "--json")
    assert r.exit_code == 0, r.output
    assert f'"app_id":"{owner.load_owner(tmp_path / "k").app_id.hex()}"' in r.output


# --- the policy TOML and signing ---------------------------------------------------------------


def policy_file(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "policy.toml"
    f.write_text(body)
    return f


def sign(tmp_path: Path, key: Path, policy: Path, *extra: str) -> Any:
    return invoke(
        "app",
        "policy",
        "sign",
        "--owner-key",
        key,
        "--policy",
        policy,
        "--mpk",
        MPK,
        "--out",
        tmp_path / "app.policy",
        *extra,
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('version = 1\npurpose = ["app"]\n', "'purpose'"),
        ("version = 1\n[[measurements]]\nmr_td = '00'\nrtmr5 = '00'\n", "'rtmr5'"),
        ("version = 1\n[pins]\nmr_ownr = '00'\n", "'mr_ownr'"),
        ("version = 1\n[pins.gpu]\ncc_mod = 'on'\n", "'cc_mod'"),
        ('purposes = ["app"]\n', "version is missing"),
        ('version = 1\ntcb_statuses = ["Revoked"]\n', "Revoked"),
        ("version = 1\nlifetime = 9999999\n", "at most 2592000"),
        ("version = 1\nlifetime = 60\nexpires = 5\n", "lifetime or expires"),
    ],
)
def test_policy_toml_is_strict_and_names_the_key(tmp_path: Path, body: str, named: str) -> None:
    key = tmp_path / "owner.key"
    owner.create_owner(key)
    error = one_line_error(sign(tmp_path, key, policy_file(tmp_path, body)))
    assert named in error
    assert not (tmp_path / "app.policy").exists()


def test_signed_bundle_verifies_and_carries_what_the_owner_stated(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    made = owner.create_owner(key)
    simtee.init(tmp_path / "tee")
    inline = simtee.random_measurement()
    compose = {**simtee.random_measurement(), "compose_hash": bytes(range(32))}
    del compose["rtmr3"]
    body = f"""
version = 3
purposes = ["disk", "app", "ibe.app"]
tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
not_before = "2030-01-01T00:00:00Z"
expires = "2030-01-15T00:00:00Z"

[[measurements]]
file = "tee/app.measurement.toml"

[[measurements]]
{simtee.measurement_toml(inline).split(chr(10), 1)[1]}
[[measurements]]
{simtee.measurement_toml(compose).split(chr(10), 1)[1]}
[pins]
min_tcb_evaluation_data_number = 17
min_key_versions = {{ disk = 2 }}
[[pins.platforms]]
fmspc = "00906ed50000"
"""
    r = sign(tmp_path, key, policy_file(tmp_path, body))
    assert r.exit_code == 0, r.output
    assert "version 3" in r.output
    bundle = PolicyBundle.decode((tmp_path / "app.policy").read_bytes())
    bundle.signed.verify_signature()
    p = bundle.signed.policy
    assert p.app_id == made.app_id and p.owner_key == made.key.public_bytes()
    assert OwnerChain.genesis(p.owner_key).app_id == p.app_id
    assert p.version == 3
    assert p.kms_mpk.hex() == MPK
    assert p.purposes == ("app", "disk", "ibe.app")
    assert p.allowed_tcb_statuses == ("SWHardeningNeeded", "UpToDate")
    assert (p.not_before, p.expires) == (1893456000, 1893456000 + 14 * 86400)
    assert set(p.measurements) == {
        simtee.load_measurement(tmp_path / "tee" / "app.measurement.toml"),
        Measurement.explicit(**inline),
        Measurement.compose(**compose),
    }
    assert p.pins is not None
    assert p.pins.min_tcb_evaluation_data_number == 17
    assert p.pins.min_key_version("disk") == 2
    assert [pin.fmspc.hex() for pin in p.pins.platforms] == ["00906ed50000"]
    # The file is what `kms member admit-app` and `kms app policy push` read back.
    assert owner.read_bundle(tmp_path / "app.policy") == bundle


def test_a_tampered_bundle_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    owner.create_owner(key)
    assert sign(tmp_path, key, policy_file(tmp_path, "version = 1\n")).exit_code == 0
    raw = bytearray((tmp_path / "app.policy").read_bytes())
    raw[-1] ^= 1  # the signature's last byte
    (tmp_path / "bad.policy").write_bytes(bytes(raw))
    error = one_line_error(
        invoke(
            "app",
            "policy",
            "push",
            "--urls",
            "http://127.0.0.1:9",
            "--bundle",
            tmp_path / "bad.policy",
        )
    )
    assert "not a valid policy bundle" in error


# --- commands that talk to nodes: errors are one line ----------------------------------------


def test_node_commands_fail_in_one_line_without_a_devnet(tmp_path: Path) -> None:
    app_id = "ab" * 20
    missing = tmp_path / "nowhere"
    one_line_error(invoke("app", "policy", "show", "--devnet", missing, "--app", "demo"))
    one_line_error(invoke("key", "get", "--devnet", missing, "--app", "demo"))
    one_line_error(invoke("app", "policy", "show", "--app", app_id))  # no --urls
    one_line_error(invoke("key", "get", "--app", app_id, "--urls", "http://127.0.0.1:9"))
    error = one_line_error(
        invoke("key", "get", "--app", app_id, "--urls", "http://127.0.0.1:9", "--mpk", MPK)
    )
    assert "no node answered" in error
    error = one_line_error(
        invoke("key", "get", "--app", "demo", "--urls", "http://127.0.0.1:9", "--mpk", MPK)
    )
    assert "not an app id" in error
    error = one_line_error(invoke("app", "policy", "push", "--bundle", tmp_path / "no.policy"))
    assert "--urls" in error


def test_policy_show_against_an_unreachable_node_says_so(tmp_path: Path) -> None:
    r = invoke("app", "policy", "show", "--urls", "http://127.0.0.1:9", "--app", "ab" * 20)
    assert r.exit_code == 0, r.output
    assert "versions held (none)" in r.output
    assert "http://127.0.0.1:9: unreachable" in r.output


# --- kms member admit-app ------------------------------------------------------------------


def test_admit_app_places_the_bundle_or_says_what_is_missing(tmp_path: Path) -> None:
    import tomllib

    import tomli_w

    from kms.app import devnet

    state = devnet.create(
        tmp_path / "net", 2, 2, delta=1.0, start_in=60.0, window_period=60.0, refresh_interval=0
    )
    config = Path(state["nodes"][0]["config"])
    key = tmp_path / "owner.key"
    made = owner.create_owner(key)
    assert sign(tmp_path, key, policy_file(tmp_path, "version = 2\n")).exit_code == 0
    bundle = tmp_path / "app.policy"

    # The node is not running: the bundle is placed (read at start), the reload cannot be asked.
    r = invoke("member", "admit-app", "--config", config, bundle)
    assert r.exit_code == 2, r.output
    placed = config.parent / "policies" / f"{made.app_id.hex()}-v2.policy"
    assert placed.read_bytes() == bundle.read_bytes()
    assert f"app {made.app_id.hex()} version 2 placed in {placed}" in r.output
    assert "error: cannot connect to the admin socket" in r.output
    assert "is the node running?" in r.output

    # A bundle that does not verify is not placed.
    raw = bytearray(bundle.read_bytes())
    raw[-1] ^= 1
    (tmp_path / "bad.policy").write_bytes(bytes(raw))
    error = one_line_error(
        invoke("member", "admit-app", "--config", config, tmp_path / "bad.policy")
    )
    assert "not a valid policy bundle" in error

    # Without [node] policies_dir, its default (`policies`, next to node.toml) is used.
    doc = tomllib.loads(config.read_text())
    del doc["node"]["policies_dir"]
    config.write_text(tomli_w.dumps(doc))
    placed.unlink()
    r = invoke("member", "admit-app", "--config", config, bundle)
    assert r.exit_code == 2 and placed.read_bytes() == bundle.read_bytes(), r.output


def test_key_get_writes_each_wrong_partials_evidence_to_the_evidence_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committee part is a stand-in: one node's partial was wrong (its evidence as the
    client returns it); the command names the node and writes the evidence file."""
    from types import SimpleNamespace

    from kms.app import cvm
    from kms.client import http as client_http
    from kms.client.core import Rejected
    from mpc.ids import ParticipantIndex

    monkeypatch.setattr(
        cvm,
        "nodes_by_index",
        lambda urls, timeout=5.0: cvm.Nodes({ParticipantIndex(1): urls[0]}, []),
    )
    evidence = SimpleNamespace(encode=lambda: b"evidence-bytes")
    result = client_http.AppKeyResult(
        {"app_id": "ab" * 20, "fingerprint": "00" * 32},
        {},
        (Rejected(ParticipantIndex(3), "partial does not decrypt", evidence),),  # type: ignore[arg-type]
    )
    monkeypatch.setattr(client_http, "get_app_key", lambda *a, **k: result)
    simtee.init(tmp_path / "tee")
    r = invoke(
        "key", "get", "--urls", "http://node-1", "--mpk", MPK, "--app", "ab" * 20,
        "--simulated-tee", tmp_path / "tee", "--measurement", tmp_path / "tee" / "app.measurement.toml",
        "--evidence-dir", tmp_path / "ev",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "node 3 sent a bad partial: partial does not decrypt" in r.output
    assert (tmp_path / "ev" / "wrong-partial-node3-0.msgpack").read_bytes() == b"evidence-bytes"


def test_a_node_on_a_tee_directory_is_quoted_as_its_node_measurement(tmp_path: Path) -> None:
    """``[node] simulated_tee = TEE`` (``kms node init --simulated-tee``): the join request's
    quote is the simulated TEE's, of ``TEE/node.measurement.toml``."""
    from kms.app import devnet
    from kms.attest.verify import parse_tdx_quote

    simtee.init(tmp_path / "tee")
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nsimulated_tee = "{tmp_path / "tee"}"\n')
    quote = devnet.quote_source(config)(b"\x01" * 64)
    fields = parse_tdx_quote(quote).fields
    image = simtee.load_measurement(tmp_path / "tee" / "node.measurement.toml")
    assert (fields.mr_td, fields.rtmr3) == (image.mr_td, image.rtmr3)
    assert fields.report_data == b"\x01" * 64
