"""An empty ``KeyResponse`` (``shares=()``) from one corrupt node gives no good partial: the
client records it as a rejected answer, asks a further member, and ``with_claimants``
tries the next claimant of that index.

Promises kept (docs/threat-model.md):
- "Nor can it hide the honest node of that index: the client keeps every URL that claims
  an index and, when the first claimant gives no good partial (a refusal, a rejected
  answer, no answer), asks again with the next claimant" ("The owner's and the CVM's
  command line").
- "Refusals are unsigned, so a node can refuse falsely; the client then asks another
  member." / "the client asks further members" ("A lying node"): one corrupt member
  (< t) answering an empty response makes the key release fail although t honest
  members are up.

Before the fix ``KeyRequestSession.receive`` recorded nothing for an answer without
shares, so ``KeyClient._ask`` asked no further member and the node was not named in the
``KeyReleaseError``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from devnet_helpers import ClaimingNode, in_process_devnet
from test_owner_committee import owner_with_app

from kms.app import owner
from kms.protocol import KeyResponse

EMPTY = KeyResponse(shares=()).encode()


@pytest.mark.slow
@pytest.mark.parallel
def test_an_empty_key_response_neither_blocks_release_nor_hides_a_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 3, 2, delta=0.3, start_in=5.0, window_period=5.0
        ) as net:
            await net.start()
            sts = await net.wait_for(
                "epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=60
            )
            o, app_id = await owner_with_app(
                net, tmp_path, monkeypatch, sts[1]["master_public_key"]
            )
            honest_transport = net.transport()

            # All honest: the key is released.
            r = await o.key_get(app_id, "cvm", "--json")
            assert r.exit_code == 0, r.output

            corrupt = str(net.state["nodes"][0]["http_url"]).rstrip("/")
            # (a) Node 1 corrupt at its own index, answering empty: nodes 2 and 3 are
            # honest and up (t = 2), so the key is released.
            monkeypatch.setattr(
                owner, "HTTP_TRANSPORT", ClaimingNode(honest_transport, corrupt, keys=EMPTY)
            )
            r = await o.key_get(app_id, "cvm", "--json")
            print("own index:", r.output)
            assert r.exit_code == 0, r.output

            # (b) Node 1 claims index 2 (listed first) and answers empty: the client
            # tries node 2's own URL next, and the key is released.
            monkeypatch.setattr(
                owner,
                "HTTP_TRANSPORT",
                ClaimingNode(honest_transport, corrupt, claim=2, keys=EMPTY),
            )
            r = await o.key_get(app_id, "cvm", "--json")
            print("claims 2:", r.output)
            assert r.exit_code == 0, r.output

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_key_get_leaves_out_urls_no_request_can_be_built_for() -> None:
    """``kms key get`` reads each given URL's index from its status: a URL httpx cannot
    build a request for is left out (and named), never an exception out of it."""
    from kms.app import cvm

    bad = ["https://xn--", "http://[::1", "http://:abc"]
    with pytest.raises(cvm.CVMError) as err:
        cvm.nodes_by_index([*bad, "http://?"])
    for url in bad:
        assert f"{url}: not a usable URL" in str(err.value), str(err.value)
    assert "http://?: unreachable" in str(err.value), str(err.value)
