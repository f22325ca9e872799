"""Regenerate the e1d36d0 fixtures from a checkout of that commit.

Run it with the *old* code's interpreter (a checkout of ``e1d36d0`` set up with
``make setup``); it only needs that checkout::

    git worktree add --detach /tmp/old e1d36d0 && make -C /tmp/old setup
    /tmp/old/.venv/bin/python tests/kms/store/data/e1d36d0/generate.py /tmp/run

It runs ``kms devnet up --nodes 3 --threshold 2`` of the old code (every node
process wrapped so that each frame it sends is also appended to a log), and
then, against the running devnet:

1. waits for epoch 0 and the ``demo`` app that ``devnet up`` registers (policy
   version 1, first owner);
2. rotates the app's owner (``OwnerKey.rotate``) and pushes policy version 2,
   signed by the new owner and carrying the rotation record, to every node
   (``POST /v1/policies``, as ``kms app policy push`` does);
3. fetches the ``app`` and ``disk`` keys as the devnet's simulated CVM
   (``kms key get``), which writes audit records at every node;
4. stops node 3 and has node 1 propose a refresh that node 2 approves; once
   epoch 1 is certified, nodes 1 and 2 keep their epoch-0 shares as retained
   (node 3's acknowledgement never comes, and ``min(n, 2t-1) = 3`` are needed);
5. fetches the same keys again in epoch 1 (more audit records) and checks that
   they did not change;
6. stops the devnet and writes ``OUT/fixture``: ``node-1`` and ``node-2``
   (``node.db``, ``passphrase``, ``node.toml``, ``policies/``), ``devnet.json``,
   ``simulated-tee/`` (seed, root certificate, collateral), ``keys.json`` (the
   keys fetched, the owner rotation, the nodes' status after the refresh) and ``frames.json`` (a few frames the nodes
   sent, one per kind, with the sender's index and a label).

Copy ``OUT/fixture/*`` over this directory and ``frames.json`` to
``tests/net/data/e1d36d0-frames.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FRAMES_ENV = "QKMS_FIXTURE_FRAME_LOG"
NODES, THRESHOLD = 3, 2


def node_run(config: str) -> None:
    """A ``kms node run`` whose every outgoing frame is also appended to a log."""
    import kms.node.service as service

    log_path = os.environ[FRAMES_ENV]
    real = service.encode_envelope

    def recording(env: Any) -> bytes:
        frame: bytes = real(env)
        with open(log_path, "a") as f:
            f.write(json.dumps({"sender": env.sender, "kind": env.kind, "frame": frame.hex()}))
            f.write("\n")
        return frame

    service.encode_envelope = recording  # type: ignore[assignment]
    from kms.cli import app

    app(["node", "run", "--config", config])


def devnet_up(args: list[str]) -> None:
    """``kms devnet up`` whose node processes are :func:`node_run`."""
    import kms.devnet as devnet

    def spawn(config: str, log_path: Path) -> int:
        log = open(log_path, "ab")
        frames = str(Path(config).parent / "frames.jsonl")
        try:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--node-run", config],
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, FRAMES_ENV: frames},
            )
        finally:
            log.close()
        devnet._CHILDREN[proc.pid] = proc
        return proc.pid

    devnet.spawn = spawn
    from kms.cli import app

    app(["devnet", "up", *args])


def kms(*args: str) -> str:
    # cwd: never a checkout of other code, which ``-m`` would import instead.
    return subprocess.run(
        [sys.executable, "-m", "kms.cli", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout


def wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def statuses(state: dict[str, Any]) -> dict[int, dict[str, Any]]:
    from kms import devnet

    out = {}
    for n in state["nodes"]:
        st = devnet.status_of(n["http_url"])
        if st is not None:
            out[int(n["index"])] = st
    return out


def rotate_owner(directory: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Hand the demo app to a new owner key and push version 2 signed by it."""
    from kms import devnet
    from kms.policy import AppPolicy, Measurement, OwnerChain, OwnerKey, PolicyBundle

    first = devnet.owner_of(directory, "demo")
    second = OwnerKey.from_seed(os.urandom(32))
    record = first.rotate(OwnerChain.genesis(first.public_bytes()), second.public_bytes())
    now = int(time.time())
    policy = AppPolicy.build(
        app_id=first.app_id(),
        version=2,
        owner_key=second.public_bytes(),
        measurements=[Measurement.explicit(**devnet.DEMO_MEASUREMENT)],
        kms_mpk=bytes.fromhex(state["master_public_key"]),
        not_before=now - 60,
        expires=now + 7 * 86400,
        allowed_tcb_statuses=("UpToDate", "SWHardeningNeeded"),
        purposes=("app", "disk", "signing"),
    )
    report = devnet.push_policy(state, PolicyBundle(policy.sign(second), (record,)))
    if not report["effective_everywhere"]:
        raise SystemExit(f"rotation not accepted everywhere: {report}")
    return {
        "first_owner": first.public_bytes().hex(),
        "second_owner": second.public_bytes().hex(),
        "rotation_record": record.encode().hex(),
    }


def fetch(directory: Path, work: Path, purpose: str, tag: str) -> dict[str, Any]:
    out = work / f"key-{purpose}-{tag}.json"
    kms(
        "key", "get", "--devnet", str(directory), "--app", "demo", "--purpose", purpose,
        "--json", "--out", str(out),
    )  # fmt: skip
    doc = json.loads(out.read_text())
    return {k: doc[k] for k in ("app_id", "purpose", "version", "epoch", "app_key", "fingerprint")}


def label(entry: dict[str, Any]) -> str:
    """The envelope kind, and for a broadcast payload the type of the message inside."""
    from mpc.codec import decode
    from net.codec import open_envelope

    _env, message = open_envelope(bytes.fromhex(entry["frame"]))
    if entry["kind"] == "bcast/payload":
        return f"bcast/payload:{decode(message.payload).TYPE}"  # type: ignore[attr-defined]
    return str(entry["kind"])


def pick_frames(directory: Path) -> list[dict[str, Any]]:
    """The first frame of each label sent by nodes 2 and 3 (what node 1 received)."""
    picked: dict[str, dict[str, Any]] = {}
    for i in (2, 3):
        for line in (directory / f"node-{i}" / "frames.jsonl").read_text().splitlines():
            entry = json.loads(line)
            name = label(entry)
            if name not in picked:
                picked[name] = {"label": name, **entry}
    return [picked[k] for k in sorted(picked)]


def main(work: Path) -> None:
    from kms import devnet

    directory = work / "devnet"
    if directory.exists():
        raise SystemExit(f"{directory} exists")
    work.mkdir(parents=True, exist_ok=True)
    up = subprocess.Popen(
        [
            sys.executable, __file__, "--devnet-up", "--nodes", str(NODES),
            "--threshold", str(THRESHOLD), "--dir", str(directory), "--delta", "0.3",
            "--start-in", "6", "--window-period", "6", "--collateral-file",
        ],
        stdout=open(work / "devnet-up.log", "wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        state = wait(
            "the demo app",
            lambda: (
                (directory / "devnet.json").exists()
                and devnet.read_state(directory).get("apps")
                and devnet.read_state(directory)
            ),
            90,
        )
        wait("policy v1 at every node", lambda: len(_held(state, 1)) == NODES, 30)
        rotation = rotate_owner(directory, state)
        keys = [fetch(directory, work, p, "epoch0") for p in ("app", "disk")]
        kms("devnet", "stop-node", "--dir", str(directory), "3")
        config = {n["index"]: n["config"] for n in state["nodes"]}
        proposal = kms("member", "propose", "--config", config[1], "refresh", "--json")
        pid = json.loads(proposal)["proposal_id"]
        kms("member", "approve", "--config", config[2], pid)
        wait(
            "epoch 1 with retained epoch-0 shares at nodes 1 and 2",
            lambda: (
                all(
                    s.get("epoch") == 1 and s.get("has_share") and s.get("retained_shares")
                    for i, s in statuses(state).items()
                    if i in (1, 2)
                )
                and {1, 2} <= set(statuses(state))
            ),
            120,
        )
        later = [fetch(directory, work, p, "epoch1") for p in ("app", "disk")]
        for a, b in zip(keys, later, strict=True):
            if a["app_key"] != b["app_key"] or b["epoch"] != 1:
                raise SystemExit(f"key changed across the refresh: {a} {b}")
        final = statuses(state)
    finally:
        up.terminate()
        up.wait(60)
    out = work / "fixture"
    out.mkdir()
    for i in (1, 2):
        nd = out / f"node-{i}"
        nd.mkdir()
        src = directory / f"node-{i}"
        for name in ("node.db", "passphrase", "node.toml"):
            shutil.copy2(src / name, nd / name)
        shutil.copytree(src / "policies", nd / "policies")
    shutil.copy2(directory / "devnet.json", out / "devnet.json")
    # The devnet's simulated TDX platform: its seed (to quote as the demo CVM again),
    # root certificate and collateral (named in every node.toml).
    shutil.copytree(directory / "simulated-tee", out / "simulated-tee")
    (out / "keys.json").write_text(
        json.dumps(
            {
                "time": int(time.time()),
                "master_public_key": state["master_public_key"],
                "app_id": keys[0]["app_id"],
                "owner_rotation": rotation,
                "keys": keys + later,
                "status_after_refresh": {str(i): final[i] for i in sorted(final)},
            },
            indent=2,
        )
        + "\n"
    )
    (out / "frames.json").write_text(json.dumps(pick_frames(directory), indent=2) + "\n")
    print(f"fixture written to {out}")


def _held(state: dict[str, Any], version: int) -> list[int]:
    import httpx

    out = []
    app_id = state["apps"]["demo"]
    for n in state["nodes"]:
        try:
            r = httpx.get(f"{n['http_url']}/v1/policies/{app_id}", timeout=2)
        except httpx.HTTPError:
            continue
        if r.status_code == 200 and r.json().get("version") == version:
            out.append(int(n["index"]))
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--node-run":
        node_run(sys.argv[2])
    elif sys.argv[1] == "--devnet-up":
        devnet_up(sys.argv[2:])
    else:
        main(Path(sys.argv[1]).resolve())
