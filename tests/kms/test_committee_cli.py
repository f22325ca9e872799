"""``kms committee assemble|apply|digest`` and ``kms node admission-policy``.

Four operators run ``kms node init --json``; one assembles the records; each
applies the committee file to its own node: every node then holds the same
``[committee]`` (equal digests) and a ``[[peers]]`` table for each other member.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.app.config import load
from kms.cli import app
from kms.policy import NodeAdmissionPolicy, PolicyError, admits_node
from mpc.math import G2

runner = CliRunner()
N = 4
START = datetime.datetime(2096, 1, 1, tzinfo=datetime.UTC)


def kms(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: Any, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return str(lines[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("operators")
    for i in range(1, N + 1):
        result = kms(
            "node", "init", "--dir", base / f"n{i}", "--index", i,
            "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
            "--http", f"127.0.0.1:{free_port()}", "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        (base / f"r{i}.json").write_text(result.stdout)
    return base


def record_args(base: Path, indices: range | list[int] = range(1, N + 1)) -> list[Any]:
    return [a for i in indices for a in ("--record", base / f"r{i}.json")]


def assemble(base: Path, out: Path, *extra: Any) -> Any:
    return kms(
        "committee", "assemble", *record_args(base), "--threshold", 3,
        "--genesis-start", "2096-01-01T00:00:00Z", "--delta", 0.5, "--out", out, *extra,
    )  # fmt: skip


def digest_line(result: Any) -> str:
    assert result.exit_code == 0, result.output
    match = re.search(r"^committee digest: ([0-9a-f]{64})$", result.stdout, flags=re.M)
    assert match, result.stdout
    return match.group(1)


def test_four_applied_configs_agree_and_each_has_its_peers(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "committee.toml"
    assembled = digest_line(assemble(records, out))
    digests = set()
    for i in range(1, N + 1):
        config = records / f"n{i}" / "node.toml"
        applied = digest_line(kms("committee", "apply", "--config", config, "--committee", out))
        checked = digest_line(kms("node", "check-config", "--config", config))
        digests |= {applied, checked}
        cfg = load(config)
        assert sorted(p.index for p in cfg.peers) == [j for j in range(1, N + 1) if j != i]
        for p in cfg.peers:
            record = json.loads((records / f"r{p.index}.json").read_text())
            assert [p.multiaddr] == record["addresses"]
        assert cfg.protocol.threshold == 3 and cfg.protocol.delta == 0.5
        assert cfg.protocol.genesis_start == START.timestamp()
        assert [g.index for g in cfg.protocol.genesis] == list(range(1, N + 1))
    assert digests == {assembled}
    listed = kms("committee", "digest", *(records / f"n{i}" / "node.toml" for i in (1, 2, 3, 4)))
    assert listed.exit_code == 0, listed.output
    # Applying twice changes nothing.
    config = records / "n1" / "node.toml"
    before = config.read_text()
    kms("committee", "apply", "--config", config, "--committee", out)
    assert config.read_text() == before


def test_formatting_keeps_the_digest_and_a_value_changes_it(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "committee.toml"
    digest = digest_line(assemble(records, out))
    text = out.read_text()
    # Another operator's formatting: keys reordered, integers for floats, comments, spacing.
    head, _, genesis = text.partition("[[committee.genesis]]")
    body = dict(re.findall(r"^(\w+) = (.*)$", head.split("[committee]")[1], flags=re.M))
    reordered = "\n".join(
        f"{k}   =   {v.removesuffix('.0')}  # {k}" for k, v in reversed(list(body.items()))
    )
    other = tmp_path / "other.toml"
    other.write_text(f"# hand-written\n[committee]\n{reordered}\n\n[[committee.genesis]]{genesis}")
    assert other.read_text() != text
    assert digest_line(kms("committee", "digest", other)) == digest
    # One value differs: another digest, and `digest` of both files exits 1.
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace("delta = 0.5", "delta = 0.6"))
    assert digest_line(kms("committee", "digest", changed)) != digest
    both = kms("committee", "digest", out, changed)
    assert both.exit_code == 1 and "error: the committee sections differ" in both.stderr
    # So does a different genesis record set (one member left out).
    fewer = tmp_path / "fewer.toml"
    result = kms(
        "committee", "assemble", *record_args(records, [1, 2, 3]), "--threshold", 3,
        "--genesis-start", "2096-01-01T00:00:00Z", "--delta", 0.5, "--out", fewer,
    )  # fmt: skip
    assert digest_line(result) != digest


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("tampered", "DKG key not signed by its identity"),
        ("duplicate", "index 2 is in two records"),
        ("threshold", "--threshold 5: must be between 2 and the 4 records given"),
        ("start", "--genesis-start 'tomorrow'"),
        ("no-addresses", "has no addresses"),
        ("peer-id", "is not its identity's"),
        ("policy", "is not an encoded node admission policy"),
    ],
)
def test_assemble_refuses_bad_input_in_one_line(
    records: Path, tmp_path: Path, breakage: str, expected: str
) -> None:
    rec = json.loads((records / "r2.json").read_text())
    bad = tmp_path / "r2.json"
    extra: list[Any] = []
    threshold, start = "3", "+60"
    files = [records / "r1.json", bad, records / "r3.json", records / "r4.json"]
    if breakage == "tampered":
        rec["dkg_key"] = ("00" if rec["dkg_key"][:2] != "00" else "11") + rec["dkg_key"][2:]
    elif breakage == "duplicate":
        files[0] = bad
    elif breakage == "threshold":
        threshold = "5"
    elif breakage == "start":
        start = "tomorrow"
    elif breakage == "no-addresses":
        rec["addresses"] = []
    elif breakage == "peer-id":
        rec["peer_id"] = json.loads((records / "r1.json").read_text())["peer_id"]
    elif breakage == "policy":
        (tmp_path / "policy.txt").write_text("allow everything\n")
        extra = ["--admission-policy", tmp_path / "policy.txt"]
    bad.write_text(json.dumps(rec))
    out = tmp_path / "committee.toml"
    result = kms(
        "committee", "assemble", *(a for f in files for a in ("--record", f)),
        "--threshold", threshold, "--genesis-start", start, "--out", out, *extra,
    )  # fmt: skip
    assert expected in one_error_line(result)
    assert not out.exists()


def test_apply_leaves_node_toml_unchanged_on_a_bad_committee_file(
    records: Path, tmp_path: Path
) -> None:
    out = tmp_path / "committee.toml"
    digest_line(assemble(records, out))
    out.write_text(out.read_text().replace("threshold = 3", "threshold = 3\nthreshhold = 3"))
    config = records / "n2" / "node.toml"
    before = config.read_text()
    line = one_error_line(kms("committee", "apply", "--config", config, "--committee", out))
    assert f"{out}:" in line and "unknown key 'threshhold' in [committee]" in line
    assert "(did you mean 'threshold'?)" in line
    assert config.read_text() == before


@dataclass(frozen=True)
class TD:
    mr_td: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes


REGISTERS = ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


def measurement_file(path: Path, seed: int) -> dict[str, bytes]:
    values = {k: bytes([seed + n]) * 48 for n, k in enumerate(REGISTERS)}
    path.write_text("".join(f'{k} = "{v.hex()}"\n' for k, v in values.items()))
    return values


def test_admission_policy_admits_its_measurement_and_nothing_else(
    records: Path, tmp_path: Path
) -> None:
    image = measurement_file(tmp_path / "node.measurement.toml", 1)
    out = tmp_path / "node.policy"
    result = kms(
        "node", "admission-policy", "--measurement", tmp_path / "node.measurement.toml",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == out.read_bytes().hex()
    policy = NodeAdmissionPolicy.decode(out.read_bytes())
    admits_node(policy, td=TD(**image), tcb_status="UpToDate")
    for key in REGISTERS:
        other = dict(image, **{key: b"\xee" * 48})
        with pytest.raises(PolicyError):
            admits_node(policy, td=TD(**other), tcb_status="UpToDate")
    with pytest.raises(PolicyError):
        admits_node(policy, td=TD(**image), tcb_status="OutOfDate")
    # With --tcb-status, exactly the statuses given.
    result = kms(
        "node", "admission-policy", "--measurement", tmp_path / "node.measurement.toml",
        "--tcb-status", "SWHardeningNeeded", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policy = NodeAdmissionPolicy.decode(out.read_bytes())
    assert policy.allowed_tcb_statuses == ("SWHardeningNeeded",)
    # The assembled committee carries it, and check-config has nothing to warn about.
    committee = tmp_path / "committee.toml"
    digest_line(assemble(records, committee, "--admission-policy", out))
    config = records / "n3" / "node.toml"
    digest_line(kms("committee", "apply", "--config", config, "--committee", committee))
    assert load(config).protocol.admission_policy == out.read_bytes()
    checked = kms("node", "check-config", "--config", config)
    assert checked.exit_code == 0 and "warning" not in checked.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('mr_td = "00"\n', "mr_td must be 48 bytes in hex"),
        (None, "cannot read"),
        ("mr_td = [", "not TOML"),
        ("rtmr9 = 1", "unknown key 'rtmr9'"),
    ],
)
def test_admission_policy_refuses_a_bad_measurement_file(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "m.toml"
    if text is not None:
        path.write_text(text)
    line = one_error_line(
        kms("node", "admission-policy", "--measurement", path, "--out", tmp_path / "p")
    )
    assert expected in line and str(path) in line
    assert not (tmp_path / "p").exists()


def test_a_register_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    measurement_file(tmp_path / "m.toml", 1)
    text = (tmp_path / "m.toml").read_text().replace('rtmr1 = "', 'rtmr1 = "00')
    (tmp_path / "m.toml").write_text(text)
    line = one_error_line(
        kms(
            "node",
            "admission-policy",
            "--measurement",
            tmp_path / "m.toml",
            "--out",
            tmp_path / "p",
        )
    )
    assert "rtmr1 must be 48 bytes in hex" in line


def test_apply_keeps_a_local_genesis_key_pin(records: Path, tmp_path: Path) -> None:
    out = tmp_path / "committee.toml"
    digest = digest_line(assemble(records, out))
    config = records / "n4" / "node.toml"
    digest_line(kms("committee", "apply", "--config", config, "--committee", out))
    pin = G2.generator().to_bytes().hex()
    text = config.read_text()
    config.write_text(text.replace("[committee]\n", f'[committee]\ngenesis_mpk = "{pin}"\n', 1))
    assert digest_line(kms("committee", "apply", "--config", config, "--committee", out)) == digest
    assert load(config).protocol.genesis_mpk == bytes.fromhex(pin)


def test_a_committee_file_never_sets_the_genesis_pin(records: Path, tmp_path: Path) -> None:
    """The attack: the assembler (perhaps a corrupt member) adds its own key as
    ``genesis_mpk`` to the committee file. The digest leaves the pin out, so every
    operator's digest still matched, and ``apply`` replaced a local pin with the file's: a
    node that then missed genesis would adopt a genesis for that key unendorsed."""
    honest = tmp_path / "committee.toml"
    assemble(records, honest)
    evil_pin = (G2.generator() * 424242).to_bytes().hex()
    tampered = tmp_path / "tampered.toml"
    tampered.write_text(
        honest.read_text().replace("[committee]\n", f'[committee]\ngenesis_mpk = "{evil_pin}"\n', 1)
    )
    config = records / "n4" / "node.toml"
    original = config.read_text()  # the fixture is shared: put the file back after
    try:
        digest_line(kms("committee", "apply", "--config", config, "--committee", honest))
        local_pin = G2.generator().to_bytes().hex()
        unpinned = "".join(
            line
            for line in config.read_text().splitlines(keepends=True)
            if not line.startswith("genesis_mpk")
        )
        config.write_text(
            unpinned.replace("[committee]\n", f'[committee]\ngenesis_mpk = "{local_pin}"\n', 1)
        )
        before = config.read_text()
        r = kms("committee", "apply", "--config", config, "--committee", tampered)
        assert r.exit_code == 2, r.output
        assert "must not set genesis_mpk" in " ".join(r.output.split())
        assert config.read_text() == before
        # An honest file keeps the local pin.
        digest_line(kms("committee", "apply", "--config", config, "--committee", honest))
        assert load(config).protocol.genesis_mpk == bytes.fromhex(local_pin)
    finally:
        config.write_text(original)
