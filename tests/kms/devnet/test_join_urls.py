"""A node that joins serves keys, and CVMs find it from the verified chain alone.

In one process (``service_devnet.ServiceDevnet``: real ``NodeService``s from their
``node.toml``, ``net.memory``, trio's ``MockClock``), as an attacker or a CVM sees it:

* a node joins with no app policy of its own and serves the committee's app keys;
  a CVM that was given the URLs of two genesis members only (``t = 3``) gets its key,
  so it reached the new member at the URL certified in its ``AddMember``;
* an ``AddMember`` URL altered after certification does not verify, and no URL of it
  is learned;
* a removed member (still running, still holding its old share) is never asked for a
  key, though the caller still lists its URL;
* a member whose certified URL points at another member's HTTP port gets no partial
  accepted for its index: the other member answers for its own index, which the
  client refuses.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from service_devnet import ServiceDevnet

from kms.app import devnet
from kms.app.setup import write_config
from kms.client.core import KeyReleaseError
from kms.client.http import KeyClient, _links, chain_from_bytes, fetch_keys
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.membership import AddMember, ChainError, MembershipCertificate, certified_urls
from mpc.membership.messages import ChainUpdate


class Recording(httpx.BaseTransport):
    """The devnet's in-process HTTP, remembering every request (method, URL)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, str(request.url)))
        return self.inner.handle_request(request)

    def posts_to(self, base: str) -> list[str]:
        return [u for m, u in self.seen if m == "POST" and u.startswith(base.rstrip("/"))]


def url_of(net: ServiceDevnet, index: int) -> str:
    return str(net.entry(index)["http_url"])


async def cvm_fetch(
    net: ServiceDevnet, mpk: str, app: str, urls: dict[int, str], transport: httpx.BaseTransport
) -> Any:
    """``fetch_keys`` in a worker thread with the nodes' clock standing still."""
    tee = devnet.simulated_tee(net.directory)
    now = int(net.now())
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    clock.autojump_threshold = math.inf
    try:
        return await net.in_thread(
            lambda: fetch_keys(
                {PI(i): u for i, u in urls.items()},
                G2.from_bytes(bytes.fromhex(mpk)),
                bytes.fromhex(app),
                [("app", 1)],
                lambda rd: tee.quote(rd, **devnet.DEMO_MEASUREMENT),
                now=now,
                transport=transport,
            )
        )
    finally:
        clock.autojump_threshold = 0


async def join(
    net: ServiceDevnet, index: int, *, public_url: str | None = None, policies: bool = True
) -> int:
    """``kms node init`` + ``join-request`` + proposal and approvals; the new epoch."""
    devnet.write_state(net.directory, net.state)
    entry = devnet.init_joining_node(net.directory, index)
    cfg = Path(entry["config"])
    if not policies:
        shutil.rmtree(cfg.parent / "policies")
        (cfg.parent / "policies").mkdir()
    if public_url is not None:
        import tomllib

        doc = tomllib.loads(cfg.read_text())
        doc["node"]["public_url"] = public_url
        write_config(cfg, doc)
    net.add_entry(entry)
    devnet.write_state(net.directory, net.state)
    await net.start(index)
    jr = net.join_request(index, member=1, quote=devnet.quote_source(cfg))
    assert jr["url"] == (public_url or entry["http_url"])
    ref = await net.status(1)
    assert ref is not None
    voters = [int(m["index"]) for m in ref["committee"] if int(m["index"]) in net.running]
    reply = net.admin(voters[0], {"op": "propose", "change": "add", "join_request": jr})
    assert reply["ok"], reply
    for i in voters[1:]:
        net.admin(i, {"op": "approve", "proposal_id": reply["proposal_id"]})
    members = sorted([*(int(m["index"]) for m in ref["committee"]), index])
    epoch = int(ref["epoch"]) + 1
    live = [i for i in members if i in net.running]
    await net.wait_for(
        f"epoch {epoch} with {members}",
        lambda: net.converged(live, epoch=epoch, committee=members),
        90,
    )
    return epoch


async def scenario(net: ServiceDevnet) -> None:
    await net.start()
    sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), 40)
    mpk = sts[1]["master_public_key"]
    app = devnet.register_demo_app(net.directory, mpk, admin=net.admin_by_config)
    transport = Recording(net.transport())

    # Node 5 joins without any app policy in its policies directory.
    await join(net, 5, policies=False)
    st1 = await net.status(1)
    assert st1 is not None
    assert {m["index"]: m["url"] for m in st1["committee"]}[5] == url_of(net, 5)
    assert (await net.status(5) or {})["committee"][4]["url"] == url_of(net, 5)

    # Node 5 holds the app within a few seconds of its first epoch, well inside one
    # policy sync interval (10 s): it asks for the committee's apps when it switches.
    await trio.sleep(3.0)
    assert ((await net.status(5)) or {})["apps"]["admitted"] == 1
    # A CVM given the URLs of genesis members 3 and 4 only (t = 3): the third partial
    # can come only from node 5, reached at its certified URL, and node 5 serves the app
    # it learned from the committee.
    res = await cvm_fetch(net, mpk, app, {3: url_of(net, 3), 4: url_of(net, 4)}, transport)
    assert PI(5) in res.asked and not res.rejected, res
    assert res.urls[PI(5)] == url_of(net, 5)
    assert transport.posts_to(url_of(net, 5)), transport.seen

    # An AddMember URL altered after certification: the link no longer verifies.
    raw = (await net.get(1, "/v1/chain?from=0")).content
    update = ChainUpdate.decode(raw)
    links = _links(raw)
    pos = next(
        i
        for i, x in enumerate(links)
        if isinstance(x, MembershipCertificate) and isinstance(x.outcome.proposal.change, AddMember)
    )
    cert = links[pos]
    assert isinstance(cert, MembershipCertificate)
    add = cert.outcome.proposal.change
    assert isinstance(add, AddMember) and add.url == url_of(net, 5)
    evil = "http://203.0.113.7:8080"
    forged_add = dataclasses.replace(add, url=evil)
    forged = dataclasses.replace(
        cert,
        outcome=dataclasses.replace(
            cert.outcome, proposal=dataclasses.replace(cert.outcome.proposal, add=forged_add)
        ),
    )
    tampered = ChainUpdate(
        update.kinds, tuple(forged.encode() if i == pos else b for i, b in enumerate(update.links))
    ).encode()
    pinned = G2.from_bytes(bytes.fromhex(mpk))
    with pytest.raises(ChainError, match="signature"):
        chain_from_bytes(tampered, pinned)
    state = chain_from_bytes(raw, pinned)
    assert certified_urls([forged], state) == {}
    assert certified_urls([cert], state) == {PI(5): url_of(net, 5)}

    # Node 3 is removed; it keeps running (and holds its share of the epoch before).
    ref = await net.status(1)
    assert ref is not None
    reply = net.admin(1, {"op": "propose", "change": "remove", "index": 3})
    assert reply["ok"], reply
    for i in (2, 4, 5):
        net.admin(i, {"op": "approve", "proposal_id": reply["proposal_id"]})
    after = int(ref["epoch"]) + 1
    await net.wait_for(
        "node 3 removed",
        lambda: net.converged([1, 2, 4, 5], epoch=after, committee=[1, 2, 4, 5]),
        90,
    )
    # The caller still lists node 3 (and node 2): node 3 is asked for no key.
    transport.seen.clear()
    res = await cvm_fetch(
        net, mpk, app, {2: url_of(net, 2), 3: url_of(net, 3), 4: url_of(net, 4)}, transport
    )
    assert PI(3) not in res.asked and PI(3) not in res.urls, res
    assert transport.posts_to(url_of(net, 3)) == []
    assert transport.posts_to(url_of(net, 5)), transport.seen

    # Node 6 joins with a certified URL that is node 4's HTTP port. A CVM that knows
    # node 4 only reaches 5 and "6" (node 4 again): node 4 answers for index 4, which
    # the client refuses for index 6, so it gets no key from two honest nodes.
    await join(net, 6, public_url=url_of(net, 4))
    tee = devnet.simulated_tee(net.directory)
    now = int(net.now())

    def attempt() -> tuple[KeyClient, KeyReleaseError | None]:
        client = KeyClient({PI(4): url_of(net, 4)}, pinned, transport=transport)
        try:
            client.fetch(
                bytes.fromhex(app),
                [("app", 1)],
                lambda rd: tee.quote(rd, **devnet.DEMO_MEASUREMENT),
                now=now,
            )
        except KeyReleaseError as exc:
            return client, exc
        finally:
            client.close()
        return client, None

    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    clock.autojump_threshold = math.inf
    try:
        client, error = await net.in_thread(attempt)
    finally:
        clock.autojump_threshold = 0
    assert client.urls[PI(6)] == url_of(net, 4)
    assert error is not None, "a key from two honest nodes and a misdirected one"
    assert "bad partials from [6]" in str(error) or "6: " in str(error), error


@pytest.mark.slow
@pytest.mark.parallel
def test_joined_node_serves_keys_at_its_certified_url(tmp_path: Path) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 3, delta=0.2, start_in=5.0, window_period=4.0
        ) as net:
            await scenario(net)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
