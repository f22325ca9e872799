"""The fault lab's node program: test-only configs are refused by production commands, and
each byzantine behaviour and broken build has an observable effect on a real node."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from typer.testing import CliRunner

from kms.api.http import make_app
from kms.app import devnet
from kms.app.config import ConfigError
from kms.app.setup import run_node
from kms.app.testing import app_bundle, local_committee
from kms.chaos import byzantine, nodeproc
from kms.cli import app as cli_app
from kms.client.http import chain_epochs_from_bytes
from kms.node.core import NodeCore
from kms.node.governance import NOTICED_PER_MEMBER
from kms.node.model import NodeConfig, Restored
from kms.node.service import NodeService
from kms.policy import OwnerKey
from kms.protocol import KeyResponse
from kms.store import NodeStore, TEESealer
from mpc import hpke
from mpc.broadcast import BroadcastPayload
from mpc.codec import decode
from mpc.dkg.messages import DealBundle
from mpc.ids import ParticipantIndex as PI
from mpc.membership.testing import forged_chain, member_seeds, participants
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from sim.run import simulate
from sim.scenario import Scenario

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def lab_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A devnet node's node.toml (simulated quotes accepted), without ``[testing]``."""
    base = tmp_path_factory.mktemp("devnet")
    state = devnet.create(
        base, 2, 2, delta=1.0, start_in=60.0, window_period=60.0, refresh_interval=0.0
    )
    return Path(state["nodes"][0]["config"])


def with_section(config: Path, tmp: Path, text: str) -> Path:
    out = config.parent / f"{tmp.name}-node.toml"
    out.write_text(config.read_text() + "\n" + text + "\n")
    return out


# --- the [testing] section is test-only ------------------------------------------------------


def test_check_config_refuses_a_testing_section(lab_config: Path, tmp_path: Path) -> None:
    cfg = with_section(lab_config, tmp_path, "[testing]\nlab = true")
    result = CliRunner().invoke(cli_app, ["node", "check-config", "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "[testing] is a test-only section" in result.stderr
    ok = CliRunner().invoke(cli_app, ["node", "check-config", "--config", str(lab_config)])
    assert ok.exit_code == 0, ok.output


def test_node_run_refuses_a_testing_section(lab_config: Path, tmp_path: Path) -> None:
    cfg = with_section(lab_config, tmp_path, '[testing]\nlab = true\nbroken = "window-tally"')
    with pytest.raises(ConfigError, match=r"\[testing\] is a test-only section"):
        trio.run(run_node, cfg)


def test_the_node_program_refuses_a_config_without_lab(
    lab_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nodeproc.main(["--config", str(lab_config)]) == 2
    assert "lab = true" in capsys.readouterr().err
    off = with_section(lab_config, tmp_path, "[testing]\nlab = false")
    assert nodeproc.main(["--config", str(off)]) == 2
    prod = lab_config.read_text().replace(
        "accept_simulated_quotes = true", "accept_simulated_quotes = false"
    )
    assert prod != lab_config.read_text()
    no_sim = lab_config.parent / f"{tmp_path.name}-nosim.toml"
    no_sim.write_text(prod + "\n[testing]\nlab = true\n")
    # (refused by the config's own checks or by the lab check: never run)
    assert nodeproc.main(["--config", str(no_sim)]) == 2
    bad = with_section(lab_config, tmp_path, "[testing]\nlab = true")
    assert nodeproc.main(["--config", str(bad), "--adversary", '[{"behaviour": "nope"}]']) == 2
    assert "unknown behaviour" in capsys.readouterr().err
    specs, broken = nodeproc.lab_settings(
        bad, '[{"behaviour": "spam-refresh", "params": {"every": 2}}]', "window-tally"
    )
    assert specs == [("spam-refresh", {"every": 2})] and broken == "window-tally"


# --- behaviours on the in-process committee ---------------------------------------------------


def test_wrong_partials_are_rejected_by_the_client_and_t_honest_still_serve(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(random.Random(5).randbytes(32))

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            bundle = app_bundle(owner, c.mpk).encode()
            app_id = owner.app_id()
            # Honest first: node 3's partial is good.
            good, _ = await c.fetch_keys(app_id, bundle=bundle, nodes=[3, 1])
            assert good.done and good.bad_nodes() == []
            byz = byzantine.apply_adversary(
                c.services[3], [("wrong-partials", {})], rebuild_core=False
            )
            assert byz.behaviours[0].name == "wrong-partials"
            s, answers = await c.fetch_keys(app_id, bundle=bundle, nodes=[3, 1, 2])
            assert isinstance(answers[3], KeyResponse)  # served, signed and encrypted as usual
            assert s.done
            assert s.bad_nodes() == [PI(3)]

    trio.run(main)


def test_skip_policy_check_releases_to_a_measurement_outside_the_policy(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(random.Random(6).randbytes(32))
    rogue = {k: bytes([0xEE]) * 48 for k in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app_id = owner.app_id()
            bundle = app_bundle(owner, c.mpk).encode()
            ok, _ = await c.fetch_keys(app_id, bundle=bundle)  # admits the app
            assert ok.done
            refused, answers = await c.fetch_keys(app_id, measurement=rogue, retry=False)
            assert not refused.done
            assert not any(isinstance(a, KeyResponse) for a in answers.values())
            with byzantine.skip_policy_check():
                leaked, answers = await c.fetch_keys(app_id, measurement=rogue, retry=False)
            assert all(isinstance(a, KeyResponse) for a in answers.values()), answers
            assert leaked.done

    trio.run(main)


def test_spam_refresh_proposals_are_capped_at_honest_members(tmp_path: Path) -> None:
    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            byz = byzantine.apply_adversary(
                c.services[3], [("spam-refresh", {"every": 0.0})], rebuild_core=False
            )
            spam = byz.behaviours[0]
            assert isinstance(spam, byzantine.SpamRefresh)
            for _ in range(3 * NOTICED_PER_MEMBER):
                c.clock.t += 0.01
                c.services[3].driver.advance_time(c.clock.now())
                c.services[3]._step()
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            assert spam.proposed >= 3 * NOTICED_PER_MEMBER
            for i in (1, 2):
                noticed = c.services[i].core.governance.noticed.get(3, {})
                assert 0 < len(noticed) <= NOTICED_PER_MEMBER, len(noticed)

    trio.run(main)


def test_withhold_partials_holds_then_releases_to_chosen_members(tmp_path: Path) -> None:
    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            byz = byzantine.apply_adversary(
                c.services[3],
                [
                    (
                        "withhold-partials",
                        {"messages": ["chain-updates"], "release_after": 1.0, "to": [1]},
                    )
                ],
                rebuild_core=False,
            )
            w = byz.behaviours[0]
            assert isinstance(w, byzantine.WithholdPartials)
            from mpc.membership.messages import ChainRequest

            sent_before = byz.sent
            for peer in (1, 2):  # both ask node 3 for its chain, as a catching-up node does
                frame, _ = c.services[peer].driver.envelope(ChainRequest(0))
                pid = c.services[peer].transport.local_peer
                c.services[3].handle_frame(pid, frame)
            assert w.withheld >= 2 and len(w.held) >= 2
            c.clock.t += 2.0
            c.services[3].driver.advance_time(c.clock.now())
            assert w.released >= 1 and byz.sent > sent_before
            assert not w.held  # the one to node 2 is dropped: only node 1 gets it

    trio.run(main)


def test_stale_chain_serves_an_older_head(tmp_path: Path) -> None:
    chain = forged_chain(4, n=4, t=3)
    id_seed, dkg_seed = member_seeds(4)[1]
    store = NodeStore(tmp_path / "node.db", TEESealer(lambda: b"k" * 32))
    store.save_identity(id_seed, dkg_seed)
    ident = SigningKey.from_seed(id_seed)
    config = NodeConfig(PI(1), chain.committee, 3, genesis_start=1e6, delta=0.5, window_period=1e9)
    dkg, _ = hpke.derive_key_pair(dkg_seed)
    core = NodeCore(
        config,
        ident,
        dkg,
        rng=random.Random(1).randbytes,
        restored=Restored(chain=tuple(chain.links), share=chain.share(1)),
    )
    pid = peer_id_from_ed25519(ident.verify_key().to_bytes())
    svc = NodeService(config, store, MemoryTransport(MemoryNetwork(), pid), {}, core=core)

    async def head() -> int:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=make_app(svc)), base_url="http://n"
        )
        async with client:
            raw = (await client.get("/v1/chain")).content
        return chain_epochs_from_bytes(raw, chain.mpk)[-1].epoch

    assert trio.run(head) == 4
    byzantine.apply_adversary(svc, [("stale-chain", {"behind": 2})], rebuild_core=False)
    assert trio.run(head) == 2  # a verifiable but stale chain
    store.close()


# --- equivocate-deal and window-tally ----------------------------------------------------------


def _genesis_service(tmp: Path, index: int) -> NodeService:
    """Member ``index`` of a 4-member committee before its genesis DKG, on its own store."""
    id_seed, dkg_seed = member_seeds(4)[index]
    tmp.mkdir(exist_ok=True)
    store = NodeStore(tmp / f"genesis-{index}.db", TEESealer(lambda: b"k" * 32))
    store.save_identity(id_seed, dkg_seed)
    config = NodeConfig(PI(index), participants(4), 3, genesis_start=100.0, delta=0.5)
    pid = peer_id_from_ed25519(SigningKey.from_seed(id_seed).verify_key().to_bytes())
    return NodeService(config, store, MemoryTransport(MemoryNetwork(), pid), {})


def _deals_of(dealer: int, tmp: Path, adversary: list[tuple[str, dict[str, Any]]]) -> set[bytes]:
    """The distinct signed deals ``dealer`` sends in a genesis DKG of four real node services
    (frames carried between their drivers on a virtual clock), bent by ``adversary``."""
    services = {i: _genesis_service(tmp, i) for i in range(1, 5)}
    if adversary:
        byzantine.apply_adversary(services[dealer], adversary)
    deals: set[bytes] = set()
    now = 100.0
    try:
        while now < 104.0 and not deals:
            now += 0.02
            for i, svc in services.items():
                svc.driver.advance_time(now)
                for m in svc.driver.step().messages:
                    msg = m.message
                    if isinstance(msg, BroadcastPayload) and i == dealer:
                        if isinstance(decode(msg.payload), DealBundle):
                            deals.add(msg.encode())
                    peer = svc.transport.local_peer
                    services[int(m.to)].driver.receive_frame(peer, m.frame, now)
    finally:
        for svc in services.values():
            svc.store.close()
    return deals


def test_equivocate_deal_sends_two_signed_deals(tmp_path: Path) -> None:
    assert len(_deals_of(2, tmp_path / "honest", [])) == 1  # one deal, to every member
    liar = _deals_of(2, tmp_path / "liar", [("equivocate-deal", {})])
    assert len(liar) == 2  # two different signed deals, one to each half


def fork_scenario() -> Scenario:
    """n = 4, t = 2, a scheduled refresh due in every window; nodes 3 and 4 are down through
    window 1, and nodes 1 and 2 are cut from each other after window 1's ballots are
    delivered, so window 1 decides its refresh at nodes 1 and 2 but certifies nothing. In
    window 2 nodes 3 and 4 are back, without window 1's tally."""
    start = 21.0  # window 1: genesis_start + 1 · window_period
    return Scenario.from_dict(
        {
            "name": "window-tally-fork",
            "n": 4,
            "threshold": 2,
            "delta": 0.5,
            "duration": 60.0,
            "window_period": 20.0,
            "window_length": 2.0,
            "refresh_interval": 1.0,
            "network": {"latency": {"kind": "uniform", "low": 0.01, "high": 0.1}},
            "crashes": [
                {"node": 3, "at": start - 6, "recover": start + 14},
                {"node": 4, "at": start - 6, "recover": start + 14},
            ],
            "partitions": [{"at": start + 1.0, "heal": start + 9.0, "groups": [[1], [2], [3, 4]]}],
            "expect": {},
        }
    )


FORK_SEED = 4
"""A seed whose window-1 refresh proposal ranks before window 2's (proposal ids are hashes of
the chain head: about one seed in two)."""


def test_window_tally_certifies_two_outcomes_for_one_epoch() -> None:
    fixed = simulate(fork_scenario(), FORK_SEED)
    assert fixed["membership_certificates"]["0"] == 1
    with byzantine.window_tally():
        broken = simulate(fork_scenario(), FORK_SEED)
    # Nodes 1 and 2 decide window 1's refresh from their carried tally, nodes 3 and 4
    # window 2's: with no lock, both get t = 2 partials.
    assert broken["membership_certificates"]["0"] == 2
    again = simulate(fork_scenario(), FORK_SEED)  # the patch is undone on exit
    assert again["membership_certificates"]["0"] == 1
    with byzantine.window_tally(keep_lock=True):
        carried = simulate(fork_scenario(), FORK_SEED)
    # Carrying the tally alone does not fork: nodes 1 and 2 locked window 1's outcome and
    # report it, and nodes 3 and 4 re-certify it.
    assert carried["membership_certificates"]["0"] == 1


@pytest.mark.slow
def test_the_node_program_runs_a_byzantine_lab_node_and_stops_cleanly(tmp_path: Path) -> None:
    """``python -m kms.chaos.nodeproc`` as the lab starts it: serves status, logs that it is
    byzantine, and exits 0 on SIGTERM; ``kms node run`` refuses the same file."""
    state = devnet.create(
        tmp_path, 2, 2, delta=1.0, start_in=600.0, window_period=60.0, refresh_interval=0.0
    )
    node = state["nodes"][0]
    config = Path(node["config"])
    config.write_text(config.read_text() + '\n[testing]\nlab = true\nbroken = "window-tally"\n')
    log = tmp_path / "node.log"
    adversary = json.dumps([{"behaviour": "stale-chain", "params": {"behind": 1}}])
    argv = [sys.executable, "-m", "kms.chaos.nodeproc", "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--adversary", adversary],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30.0
        status = None
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            status = devnet.status_of(node["http_url"])
        assert status is not None, log.read_text()
        text = log.read_text()
        assert "BYZANTINE LAB NODE" in text and "BROKEN LAB BUILD" in text, text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    refused = subprocess.run(
        [sys.executable, "-m", "kms.cli", "node", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "[testing] is a test-only section" in refused.stderr


def test_adversary_params_are_checked_before_the_node_starts() -> None:
    with pytest.raises(ValueError, match="unknown messages"):
        byzantine.parse_adversary(
            '[{"behaviour": "withhold-partials", "params": {"messages": ["deals"]}}]'
        )
    with pytest.raises(ValueError, match="bad params"):
        byzantine.parse_adversary('[{"behaviour": "spam-refresh", "params": {"every": "x"}}]')
    ok = byzantine.parse_adversary('[{"behaviour": "withhold-partials"}]')
    assert ok == [("withhold-partials", {})]
