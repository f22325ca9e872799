"""The agent's TEE sources: one simulated CVM seen through each gives one view, and
every way the facts can disagree is a TeeError."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from faketee import (
    FakeDstackAgent,
    FakeTsm,
    SimCVM,
    dstack_event_log,
    encode_ccel,
    make_cvm,
    write_runtime_log,
)

from kms.agent.ccel import MAX_CCEL_SIZE, SHA384_ALGORITHM, CcelError, parse_ccel
from kms.agent.tee import (
    DstackSidecarSource,
    SimulatedSource,
    TdxSource,
    TeeError,
    TeeView,
    devnet_app_compose,
    devnet_measurement,
    devnet_source,
    read_view,
)
from kms.app import simtee
from kms.attest import parse_tdx_quote
from kms.policy import Measurement
from kms.policy.eventlog import runtime_event_digest


def simulated(cvm: SimCVM) -> SimulatedSource:
    return SimulatedSource(
        cvm.tee_dir,
        cvm.measurement,
        cvm.app_id,
        cvm.app_compose,
        instance_id=cvm.instance_id,
        boot_events=cvm.boot_json,
    )


def tdx_tree(
    base: Path, cvm: SimCVM, *, form: str = "legacy", ccel: bytes | None = None
) -> tuple[Path, Path, Path]:
    ccel_path = base / "CCEL"
    ccel_path.write_bytes(encode_ccel(cvm.boot_events) if ccel is None else ccel)
    log = write_runtime_log(base / "run" / "events.log", cvm.runtime, form=form)
    compose = base / "app-compose.json"
    compose.write_text(cvm.app_compose)
    return ccel_path, log, compose


def tdx_view(base: Path, cvm: SimCVM, **kw: Any) -> TeeView:
    ccel, log, compose = tdx_tree(base, cvm, **kw)
    with FakeTsm(base, cvm.quote) as tsm:
        return read_view(TdxSource(tsm.dir, ccel, log, compose))


def sdk_replay_rtmrs(event_log: list[dict[str, Any]]) -> list[str]:
    """dstack-sdk 0.5.4's ``GetQuoteResponse.replay_rtmrs`` rule, written out."""
    out = []
    for idx in range(4):
        history = [e["digest"] for e in event_log if e.get("imr") == idx]
        if not history:
            out.append("0" * 96)
            continue
        mr = bytes(48)
        for digest in history:
            content = bytes.fromhex(digest)
            if len(content) < 48:
                content = content.ljust(48, b"\0")
            mr = hashlib.sha384(mr + content).digest()
        out.append(mr.hex())
    return out


def test_every_source_gives_the_same_view(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    views = {"simulated": read_view(simulated(cvm))}
    for form in ("legacy", "new"):
        base = tmp_path / form
        base.mkdir()
        views[f"tdx-{form}"] = tdx_view(base, cvm, form=form)
    with FakeDstackAgent(cvm) as agent:
        views["dstack"] = read_view(DstackSidecarSource(agent.socket_path))
        assert agent.calls == ["GetQuote", "Info"]
    reference = views["simulated"]
    for name, view in views.items():
        assert view == reference, name
    assert reference.app_id == cvm.app_id
    assert reference.instance_id == cvm.instance_id
    assert reference.compose_hash == hashlib.sha256(cvm.app_compose.encode()).digest()
    assert reference.app_compose == cvm.app_compose
    assert reference.mrtd == cvm.measurement.mr_td
    assert reference.rtmr[:3] == (
        cvm.measurement.rtmr0,
        cvm.measurement.rtmr1,
        cvm.measurement.rtmr2,
    )
    assert reference.device_id == hashlib.sha256(b"").digest()
    assert len(reference.mr_aggregated) == 32


def test_the_views_event_log_replays_to_the_quotes_rtmrs_by_the_sdk_rule(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    with FakeDstackAgent(cvm) as agent:
        # dstack's own log has stripped runtime digests: replayed as is, RTMR3 is wrong.
        stripped_log = json.loads(json.dumps(agent.event_log))
        view = read_view(DstackSidecarSource(agent.socket_path))
    fields = parse_tdx_quote(cvm.quote(bytes(64))).fields
    quoted = [r.hex() for r in (fields.rtmr0, fields.rtmr1, fields.rtmr2, fields.rtmr3)]
    assert sdk_replay_rtmrs(stripped_log)[3] != quoted[3]
    assert sdk_replay_rtmrs(view.event_log) == quoted
    assert [r.hex() for r in view.rtmr] == quoted
    assert all(len(e["digest"]) == 96 for e in view.event_log)
    assert {e["imr"] for e in view.event_log} == {0, 1, 2, 3}


def test_system_events_are_read_from_the_measured_log(tmp_path: Path) -> None:
    provider = b'{"name":"kms","id":"ab"}'
    cvm = make_cvm(
        tmp_path,
        extra_runtime=[
            ("key-provider", provider),
            ("os-image-hash", b"\x11" * 32),
            ("system-ready", b""),
            ("app-event", b"anything"),
        ],
    )
    view = tdx_view(tmp_path, cvm)
    assert view.key_provider_info == provider.decode()
    assert view.os_image_hash == b"\x11" * 32


# --- logs that do not replay ------------------------------------------------------------------


def test_a_runtime_log_missing_an_event_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path, extra_runtime=[("system-ready", b"")])
    ccel, log, compose = tdx_tree(tmp_path, cvm)
    write_runtime_log(log, cvm.runtime[:-1], form="legacy")
    with FakeTsm(tmp_path, cvm.quote) as tsm, pytest.raises(TeeError, match="RTMR3"):
        read_view(TdxSource(tsm.dir, ccel, log, compose))


def test_a_runtime_log_with_another_app_id_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    forged = [("app-id", b"\xee" * 20) if n == "app-id" else (n, p) for n, p in cvm.runtime]
    ccel, log, compose = tdx_tree(tmp_path, cvm, form="new")
    write_runtime_log(log, forged, form="new")
    with FakeTsm(tmp_path, cvm.quote) as tsm, pytest.raises(TeeError, match="RTMR3"):
        read_view(TdxSource(tsm.dir, ccel, log, compose))


def test_a_recorded_runtime_digest_that_is_not_the_events_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    log = dstack_event_log(cvm)
    for e in log:
        if e["event"] == "compose-hash":
            e["digest"] = runtime_event_digest("compose-hash", b"\0" * 32).hex()
    with (
        FakeDstackAgent(cvm, event_log=log) as agent,
        pytest.raises(TeeError, match="recorded digest"),
    ):
        read_view(DstackSidecarSource(agent.socket_path))


def test_a_boot_event_that_does_not_replay_to_its_rtmr_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    log = dstack_event_log(cvm)
    log[2]["digest"] = hashlib.sha384(b"another kernel").hexdigest()  # an imr 1 event
    with (
        FakeDstackAgent(cvm, event_log=log) as agent,
        pytest.raises(TeeError, match="RTMR1"),
    ):
        read_view(DstackSidecarSource(agent.socket_path))


def test_a_log_missing_some_boot_events_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    log = [e for e in dstack_event_log(cvm) if e["imr"] != 2]
    with (
        FakeDstackAgent(cvm, event_log=log) as agent,
        pytest.raises(TeeError, match="RTMR2"),
    ):
        read_view(DstackSidecarSource(agent.socket_path))


def test_a_log_with_no_boot_events_explains_rtmr3_only(tmp_path: Path) -> None:
    """The devnet's simulated CVM: RTMR0–2 come from a measurement file, no log explains them."""
    cvm = make_cvm(tmp_path)
    view = read_view(
        SimulatedSource(
            cvm.tee_dir,
            cvm.measurement,
            cvm.app_id,
            cvm.app_compose,
            instance_id=cvm.instance_id,
        )
    )
    assert {e["imr"] for e in view.event_log} == {3}
    assert sdk_replay_rtmrs(view.event_log)[3] == view.rtmr[3].hex()


def test_a_stale_quote_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    source = simulated(cvm)
    old = source.quote(bytes(64))

    class Replaying(SimulatedSource):
        def quote(self, report_data: bytes) -> bytes:
            return old

    source.__class__ = Replaying
    with pytest.raises(TeeError, match="report data"):
        read_view(source)


def test_another_configfs_writer_is_detected(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    ccel, log, compose = tdx_tree(tmp_path, cvm)
    with (
        FakeTsm(tmp_path, cvm.quote, extra_bumps=1) as tsm,
        pytest.raises(TeeError, match="another writer"),
    ):
        read_view(TdxSource(tsm.dir, ccel, log, compose))


def test_no_configfs_tsm_is_a_tee_error(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    ccel, log, compose = tdx_tree(tmp_path, cvm)
    with pytest.raises(TeeError, match="not a TDX guest"):
        read_view(TdxSource(tmp_path / "nothing", ccel, log, compose))


# --- compose files that do not hash to the event ----------------------------------------------


def test_a_compose_file_that_does_not_hash_to_the_event_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    ccel, log, compose = tdx_tree(tmp_path, cvm)
    compose.write_text(cvm.app_compose.replace("example/app:1", "example/app:2"))
    with FakeTsm(tmp_path, cvm.quote) as tsm, pytest.raises(TeeError, match="compose-hash"):
        read_view(TdxSource(tsm.dir, ccel, log, compose))


def test_dstacks_compose_must_hash_to_the_event_too(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    with (
        FakeDstackAgent(cvm, app_compose=cvm.app_compose + " ") as agent,
        pytest.raises(TeeError, match="compose-hash"),
    ):
        read_view(DstackSidecarSource(agent.socket_path))


def test_a_simulated_measurement_must_pin_the_composes_hash(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    with pytest.raises(TeeError, match="SHA-256"):
        SimulatedSource(cvm.tee_dir, cvm.measurement, cvm.app_id, cvm.app_compose + "\n")
    pinned = Measurement.explicit(
        mr_td=cvm.measurement.mr_td,
        rtmr0=cvm.measurement.rtmr0,
        rtmr1=cvm.measurement.rtmr1,
        rtmr2=cvm.measurement.rtmr2,
        rtmr3=bytes(48),
    )
    with pytest.raises(TeeError, match="compose hash"):
        SimulatedSource(cvm.tee_dir, pinned, cvm.app_id, cvm.app_compose)


# --- CCEL --------------------------------------------------------------------------------------


def test_ccel_round_trip_skips_mrtd_and_no_action_records(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    for kw in ({}, {"end_marker": True}, {"padding": 0}, {"no_action": False}):
        assert parse_ccel(encode_ccel(cvm.boot_events, **kw)) == cvm.boot_events, kw
    zero_padded = encode_ccel(cvm.boot_events, padding=0) + bytes(300)
    assert parse_ccel(zero_padded) == cvm.boot_events
    two_algorithms = encode_ccel(cvm.boot_events, algorithms=((0x000B, 32), (SHA384_ALGORITHM, 48)))
    assert parse_ccel(two_algorithms) == cvm.boot_events


def test_a_truncated_ccel_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    full = encode_ccel(cvm.boot_events, padding=0)
    for cut in (10, 40, len(full) - 1, len(full) - 30):
        with pytest.raises(CcelError, match="truncated"):
            parse_ccel(full[:cut])
    base = tmp_path / "t"
    base.mkdir()
    with pytest.raises(TeeError, match="truncated"):
        tdx_view(base, cvm, ccel=full[:-5])


def test_an_oversized_ccel_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    big = encode_ccel(cvm.boot_events, padding=MAX_CCEL_SIZE)
    with pytest.raises(CcelError, match="more than"):
        parse_ccel(big)
    with pytest.raises(TeeError, match="larger than"):
        tdx_view(tmp_path, cvm, ccel=big)


def test_a_ccel_without_sha384_or_with_a_bad_record_is_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    with pytest.raises(CcelError, match="SHA-384"):
        parse_ccel(encode_ccel([], algorithms=((0x000B, 32),)))
    good = encode_ccel(cvm.boot_events, padding=0, mrtd_event=False, no_action=False)
    header = 32 + struct.unpack_from("<I", good, 28)[0]
    bad_imr = good[:header] + struct.pack("<I", 9) + good[header + 4 :]
    with pytest.raises(CcelError, match="not an RTMR"):
        parse_ccel(bad_imr)
    with pytest.raises(CcelError, match="Spec ID"):
        parse_ccel(good[:32] + b"X" * 16 + good[48:])
    huge_event = good[:header] + struct.pack("<III", 1, 1, 1) + struct.pack("<H", 0xC)
    huge_event += bytes(48) + struct.pack("<I", 2**31)
    with pytest.raises(CcelError, match="truncated"):
        parse_ccel(huge_event)


# --- the devnet ---------------------------------------------------------------------------------


def test_devnet_source_boots_the_devnet_app_on_the_devnet_tee(tmp_path: Path) -> None:
    app_id = bytes(range(100, 120))
    demo = {n: bytes([0xD0 + i]) * 48 for i, n in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2"))}
    simtee.init(tmp_path / "simulated-tee", app_measurement={**demo, "rtmr3": bytes([0xD4]) * 48})
    (tmp_path / "devnet.json").write_text(json.dumps({"apps": {"demo": app_id.hex()}}))
    view = read_view(devnet_source(tmp_path, "demo"))
    compose = devnet_app_compose("demo")
    assert view.app_id == app_id
    assert view.app_compose == compose
    measured = devnet_measurement(tmp_path, compose)
    assert view.compose_hash == measured.compose_hash
    assert (view.mrtd, *view.rtmr[:3]) == tuple(demo.values())
    assert read_view(devnet_source(tmp_path, app_id.hex())).app_id == app_id
    with pytest.raises(TeeError, match="unknown devnet app"):
        devnet_source(tmp_path, "other")


def test_a_ccel_with_too_many_records_is_refused() -> None:
    from kms.agent.ccel import MAX_CCEL_EVENTS, CcelEvent

    events = [CcelEvent(0, 1, bytes(48), b"")] * (MAX_CCEL_EVENTS + 1)
    with pytest.raises(CcelError, match=f"more than {MAX_CCEL_EVENTS} events"):
        parse_ccel(encode_ccel(events, mrtd_event=False, no_action=False))


def test_dstacks_errors_and_a_missing_runtime_log_are_tee_errors(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    with FakeDstackAgent(cvm) as agent:
        source = DstackSidecarSource(agent.socket_path)
        with pytest.raises(TeeError, match="HTTP 404"):
            source._call("Attest", {})
    with pytest.raises(TeeError, match="no dstack agent socket"):
        DstackSidecarSource(tmp_path / "no.sock").quote(bytes(64))
    ccel, log, compose = tdx_tree(tmp_path, cvm)
    log.unlink()
    with FakeTsm(tmp_path, cvm.quote) as tsm, pytest.raises(TeeError, match="runtime event log"):
        read_view(TdxSource(tsm.dir, ccel, log, compose))


def test_version_2_runtime_lines_are_refused(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    ccel, log, compose = tdx_tree(tmp_path, cvm, form="new")
    log.write_text(log.read_text() + '{"event": "x", "payload": "", "version": 2}\n')
    with FakeTsm(tmp_path, cvm.quote) as tsm, pytest.raises(TeeError, match="version-2"):
        read_view(TdxSource(tsm.dir, ccel, log, compose))


def test_a_malformed_dstack_event_is_a_tee_error(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    good = dstack_event_log(cvm)
    for mutate in (
        lambda e: e.update(event="\ud800"),
        lambda e: e.update(event_payload="zz"),
        lambda e: e.update(imr=True),
        lambda e: e.update(extra=1),
        lambda e: e.pop("event_type"),
        lambda e: e.update(imr=4),
    ):
        log = json.loads(json.dumps(good))
        mutate(log[-1])
        with FakeDstackAgent(cvm, event_log=log) as agent, pytest.raises(TeeError):
            read_view(DstackSidecarSource(agent.socket_path))


def test_a_compose_with_a_lone_surrogate_from_dstacks_info_is_a_tee_error(tmp_path: Path) -> None:
    """dstack's Info JSON can carry ``\\ud800`` in app_compose: a TeeError, not a crash."""
    cvm = make_cvm(tmp_path)
    with (
        FakeDstackAgent(cvm, app_compose=cvm.app_compose + "\ud800") as agent,
        pytest.raises(TeeError),
    ):
        read_view(DstackSidecarSource(agent.socket_path))
