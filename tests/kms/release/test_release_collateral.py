"""Key requests over HTTP against collateral fetching: what an anonymous client can make a
node fetch from its PCCS, how collateral is kept from going backwards, and the node's
floor on TCB statuses."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from served_node import NOW, CountingPCCS, ServedNode, policy, run, tee

from kms.api.shed import ShedLimits
from kms.attest import Collateral, CollateralFloor
from kms.protocol import KeyRefusal, KeyRequest, KeyResponse

DAY = 86_400


def refused(answer: object, reason: str, detail: str = "") -> bool:
    return (
        isinstance(answer, KeyRefusal)
        and answer.reason == reason
        and answer.detail.startswith(detail)
    )


def test_requests_failing_a_cheap_check_make_no_pccs_fetch(tmp_path: Path) -> None:
    genuine = tee(1)
    pccs = CountingPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)})
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der])

    async def main() -> None:
        attempts: list[tuple[bytes, str, str]] = []
        # Junk bodies and junk quotes.
        attempts.append((os.urandom(300), "malformed-request", ""))
        good = KeyRequest.decode(node.request(genuine, seed=1))
        for junk in (b"", os.urandom(2000), bytes(1000)):
            attempts.append((replace(good, quote=junk).encode(), "quote-rejected", ""))
        # Quotes from platforms under roots the node does not pin, each with a fresh
        # FMSPC, bound to their request: only the PCK chain check tells them apart.
        for k in range(8):
            rogue = tee(100 + k, fmspc=random.Random(k).randbytes(6))
            attempts.append((node.request(rogue, seed=10 + k), "quote-rejected", "UNTRUSTED_ROOT"))
        # A genuine quote, but a stale timestamp, or bound to another request.
        attempts.append((node.request(genuine, seed=30, timestamp=NOW - 3600), "stale-request", ""))
        other = KeyRequest.decode(node.request(genuine, seed=31))
        attempts.append((replace(good, quote=other.quote).encode(), "report-data-mismatch", ""))
        # The TEE type flipped to SGX: not a TDX quote (its body no longer parses).
        sgx = bytearray(good.quote)
        sgx[4:8] = bytes(4)
        attempts.append((replace(good, quote=bytes(sgx)).encode(), "quote-rejected", ""))
        for raw, reason, detail in attempts:
            answer = await node.post(raw)
            assert refused(answer, reason, detail), (reason, detail, answer)
        assert pccs.fetches == 0 and sum(pccs.requests.values()) == 0
        metrics = await node.metrics()
        assert 'reason="key request: quote-rejected: UNTRUSTED_ROOT"} 8' in metrics
        assert 'reason="key request: stale-request"} 1' in metrics
        assert 'reason="key request: report-data-mismatch"} 1' in metrics
        assert "qkms_pccs_fetches_total 0" in metrics
        # The genuine request is served, with one fetch; the same request again is answered
        # again, and a replay (another request with its nonce) is refused: neither fetches.
        raw = good.encode()
        assert isinstance(await node.post(raw), KeyResponse)
        assert pccs.fetches == 1
        assert isinstance(await node.post(raw), KeyResponse)
        replay = KeyRequest.decode(node.request(genuine, seed=1, timestamp=node.clock.t + 1))
        assert replay.body.nonce == good.body.nonce and replay.encode() != raw
        assert refused(await node.post(replay.encode()), "replayed-nonce")
        assert pccs.fetches == 1
        assert 'reason="key request: replayed-nonce"} 1' in await node.metrics()

    run(main)


def test_concurrent_fetches_are_capped_and_one_per_platform(tmp_path: Path) -> None:
    platforms = [tee(200 + k, fmspc=bytes([0xA0, k, 0, 0, 0, 0])) for k in range(6)]
    pccs = CountingPCCS({p.fmspc.hex().upper(): p.collateral(NOW) for p in platforms})
    # All 18 requests must wait on the fetches, not on the release limiter (a request waiting
    # for its collateral holds a release place: with the default 8 places, the rest would be
    # shed `overloaded` after the queue's 0.5 s).
    node = ServedNode(
        tmp_path,
        pccs,
        [p.root_ca_der for p in platforms],
        max_concurrent_fetches=2,
        shed=ShedLimits(concurrency=18),
    )
    pccs.gate = trio.Event()
    answers: list[tuple[int, object]] = []

    async def ask(k: int, raw: bytes) -> None:
        answers.append((k, await node.post(raw)))

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for k, p in enumerate(platforms):
                    for j in range(3):  # three CVMs of each platform at once
                        nursery.start_soon(ask, k, node.request(p, seed=1000 + 10 * k + j))
                for _ in range(50):
                    await trio.sleep(0.01)
                assert pccs.running == 2
                metrics = await node.metrics()
                assert 'qkms_collateral_platforms{state="fetching"} 6' in metrics
                pccs.gate.set()
        assert len(answers) == 18
        # The stub PCCS serves one root CA CRL and QE Identity (the first platform's) to
        # all: each simulated platform has its own root, where Intel's all share one. So
        # only the first platform's CVMs get keys; the others' collateral does not verify.
        for k, answer in answers:
            if k == 0:
                assert isinstance(answer, KeyResponse), answer
            else:
                assert refused(answer, "quote-rejected", "UNTRUSTED_ROOT"), answer
        assert pccs.most_running <= 2
        assert pccs.fetches == 6  # one per platform: the others waited for it
        metrics = await node.metrics()
        assert 'qkms_collateral_platforms{state="fetching"} 0' in metrics
        assert 'qkms_collateral_platforms{state="held"} 6' in metrics

    run(main)


def test_failed_fetches_are_remembered_and_bounded(tmp_path: Path) -> None:
    platforms = [tee(300 + k, fmspc=bytes([0xB0, k, 0, 0, 0, 0])) for k in range(5)]
    pccs = CountingPCCS({p.fmspc.hex().upper(): p.collateral(NOW) for p in platforms})
    pccs.down = True
    node = ServedNode(
        tmp_path,
        pccs,
        [p.root_ca_der for p in platforms],
        failure_ttl=60,
        max_platforms=3,
    )

    async def main() -> None:
        first = platforms[0]
        answer = await node.post(node.request(first, seed=1))
        assert refused(answer, "quote-rejected", "COLLATERAL_UNAVAILABLE")
        assert pccs.fetches == 1
        for k in range(2, 12):  # retried within the failure TTL: no fetch
            answer = await node.post(node.request(first, seed=k))
            assert refused(answer, "quote-rejected", "COLLATERAL_UNAVAILABLE")
        assert pccs.fetches == 1
        assert "qkms_pccs_failures_cached_total 10" in await node.metrics()
        # Failures of other platforms: remembered, at most max_platforms of them.
        for k, p in enumerate(platforms[1:]):
            await node.post(node.request(p, seed=100 + k))
        assert pccs.fetches == 5
        metrics = await node.metrics()
        assert 'qkms_collateral_platforms{state="failed"} 3' in metrics
        # After the TTL, with the PCCS back, the platform is fetched and served.
        pccs.down = False
        node.clock.t += 61
        assert isinstance(await node.post(node.request(first, seed=50)), KeyResponse)
        assert pccs.fetches == 6

    run(main)


def _evaluation_number(c: dict[str, str]) -> int:
    return Collateral.from_dict(c).tcb_evaluation_data_number


def test_collateral_below_the_node_floor_is_refused_when_fetched(tmp_path: Path) -> None:
    genuine = tee(2)
    fmspc = genuine.fmspc.hex().upper()
    pccs = CountingPCCS({fmspc: genuine.collateral(NOW, evaluation_data_number=17)})
    node = ServedNode(
        tmp_path,
        pccs,
        [genuine.root_ca_der],
        floor=CollateralFloor(min_tcb_evaluation_data_number=18),
    )

    async def main() -> None:
        answer = await node.post(node.request(genuine, seed=1))
        assert refused(answer, "quote-rejected", "COLLATERAL_STALE"), answer
        assert node.cache is not None and node.cache.entries() == []
        assert "qkms_collateral_stale_refused_total 1" in await node.metrics()
        # The PCCS catches up: served.
        pccs.serving[fmspc] = genuine.collateral(NOW, evaluation_data_number=18)
        node.clock.t += 61
        assert isinstance(await node.post(node.request(genuine, seed=2)), KeyResponse)

    run(main)


def test_a_pccs_rolling_collateral_back_is_refused_and_the_cache_kept(tmp_path: Path) -> None:
    genuine = tee(3)
    fmspc = genuine.fmspc.hex().upper()
    current = genuine.collateral(NOW, evaluation_data_number=18)
    pccs = CountingPCCS({fmspc: current})
    # No number floor: only the collateral already held stands against the rollback.
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der], floor=CollateralFloor(max_age=3 * DAY))

    async def main() -> None:
        assert isinstance(await node.post(node.request(genuine, seed=1)), KeyResponse)
        assert node.cache is not None
        cached = node.cache.load(fmspc)
        assert cached is not None and cached.tcb_evaluation_data_number == 18
        # The PCCS (or whoever answers for it) now serves validly signed, recently issued
        # collateral of an earlier TCB evaluation (Intel's service still signs those);
        # the node asks again as its collateral nears its maximum age.
        node.clock.t = NOW + 2 * DAY - 60
        pccs.serving[fmspc] = genuine.collateral(node.clock.t, evaluation_data_number=17)
        answer = await node.post(node.request(genuine, seed=2))
        assert isinstance(answer, KeyResponse)  # still served with the newer collateral
        assert pccs.fetches == 2
        assert node.cache.load(fmspc) == cached
        assert "qkms_collateral_rollbacks_refused_total 1" in await node.metrics()
        # A node restarted on the same cache is not rolled back either.
        again = ServedNode(
            tmp_path / "restart", pccs, [genuine.root_ca_der], floor=CollateralFloor()
        )
        assert again.cache is not None
        again.cache.store(fmspc, "platform", cached)
        again.clock.t = NOW + 30 * DAY - 600  # near expiry: the node asks the PCCS
        await again.post(again.request(genuine, seed=3))
        assert again.cache.load(fmspc) == cached

    run(main)


def test_collateral_older_than_the_maximum_age_is_refused_when_verifying(
    tmp_path: Path,
) -> None:
    genuine = tee(4)
    old = Collateral.from_dict(genuine.collateral(NOW - 10 * DAY, lifetime=60 * DAY))
    pccs = CountingPCCS({})
    # A collateral file (no PCCS): its age is judged when the quote is verified.
    strict = ServedNode(
        tmp_path / "strict",
        pccs,
        [genuine.root_ca_der],
        fixed=old,
        use_pccs=False,
        floor=CollateralFloor(max_age=7 * DAY),
    )
    lax = ServedNode(
        tmp_path / "lax",
        pccs,
        [genuine.root_ca_der],
        fixed=old,
        use_pccs=False,
        floor=CollateralFloor(max_age=30 * DAY),
    )

    async def main() -> None:
        answer = await strict.post(strict.request(genuine, seed=1))
        assert refused(answer, "quote-rejected", "COLLATERAL_STALE"), answer
        assert 'reason="key request: quote-rejected: COLLATERAL_STALE"} 1' in (
            await strict.metrics()
        )
        assert isinstance(await lax.post(lax.request(genuine, seed=1)), KeyResponse)

    run(main)


def test_a_policy_cannot_widen_the_node_floor_on_tcb_statuses(tmp_path: Path) -> None:
    outdated = tee(5, tcb_status="OutOfDate")
    pccs = CountingPCCS({outdated.fmspc.hex().upper(): outdated.collateral(NOW)})
    lenient = policy(statuses=("UpToDate", "OutOfDate"))
    default = ServedNode(tmp_path / "default", pccs, [outdated.root_ca_der], app_policy=lenient)
    widened = ServedNode(
        tmp_path / "widened",
        pccs,
        [outdated.root_ca_der],
        app_policy=lenient,
        statuses=("UpToDate", "SWHardeningNeeded", "OutOfDate"),
    )
    strict = ServedNode(
        tmp_path / "strict",
        pccs,
        [outdated.root_ca_der],
        app_policy=policy(statuses=("UpToDate",)),
        statuses=("UpToDate", "SWHardeningNeeded", "OutOfDate"),
    )

    async def main() -> None:
        answer = await default.post(default.request(outdated, seed=1))
        assert refused(answer, "quote-rejected", "TCB_STATUS_NOT_ALLOWED"), answer
        assert isinstance(await widened.post(widened.request(outdated, seed=2)), KeyResponse)
        answer = await strict.post(strict.request(outdated, seed=3))
        assert refused(answer, "policy-refused"), answer

    run(main)


def test_collateral_near_its_end_is_not_refetched_on_every_request(tmp_path: Path) -> None:
    genuine = tee(6)
    # The PCCS keeps serving collateral that expires in 30 minutes: never fresh for an
    # hour, so every request would otherwise ask for it again.
    pccs = CountingPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW, lifetime=1800)})
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der], failure_ttl=60)

    async def main() -> None:
        for k in range(6):
            assert isinstance(await node.post(node.request(genuine, seed=k)), KeyResponse)
        assert pccs.fetches == 1
        node.clock.t += 61
        assert isinstance(await node.post(node.request(genuine, seed=10)), KeyResponse)
        assert pccs.fetches == 2

    run(main)


class _DeepJsonPCCS(CountingPCCS):
    """Answers ``path`` with a signed-document body whose member nests ``depth`` deep."""

    def __init__(self, serving: dict[str, dict[str, str]], path: str, body: bytes) -> None:
        super().__init__(serving)
        self.path, self.body = path, body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != self.path:
            await super().__call__(scope, receive, send)
            return
        self.requests[scope["path"]] += 1
        headers = [
            (b"tcb-info-issuer-chain", b"x"),
            (b"sgx-enclave-identity-issuer-chain", b"x"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tdx/certification/v4/tcb", b'{"tcbInfo": ' + b"[" * 100_000 + b', "signature": "00"}'),
        (
            "/tdx/certification/v4/tcb",
            b'{"tcbInfo": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b'}, "signature": "00"}',
        ),
        (
            "/tdx/certification/v4/qe/identity",
            b'{"enclaveIdentity": {}, "signature": ' + b"[" * 99_999 + b"]" * 99_999 + b"}",
        ),
    ],
    ids=["unclosed", "nested-member", "deep-signature"],
)
def test_deeply_nested_json_from_the_pccs_is_a_remembered_failed_fetch(
    tmp_path: Path, path: str, body: bytes
) -> None:
    """JSON nested past the parser's recursion limit: a typed refusal on every request,
    one fetch within the failure TTL, never an HTTP 500."""
    genuine = tee(1)
    pccs = _DeepJsonPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)}, path, body)
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der], failure_ttl=60)

    async def main() -> None:
        for k in range(6):
            answer = await node.post(node.request(genuine, seed=k))
            assert refused(answer, "quote-rejected", "COLLATERAL_UNAVAILABLE"), answer
        assert pccs.fetches == 1
        metrics = await node.metrics()
        assert "qkms_pccs_failures_cached_total 5" in metrics
        assert 'qkms_collateral_platforms{state="failed"} 1' in metrics

    run(main)


class _BrokenPCCS(CountingPCCS):
    """Makes the node's HTTP client raise something that is not an HTTP error."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.requests[scope["path"]] += 1
        raise RuntimeError("the PCCS transport broke in an unforeseen way")


def test_any_failure_of_a_fetch_is_remembered_and_refused_not_a_500(tmp_path: Path) -> None:
    genuine = tee(1)
    pccs = _BrokenPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)})
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der], failure_ttl=60)

    async def main() -> None:
        for k in range(4):
            answer = await node.post(node.request(genuine, seed=k))
            assert refused(answer, "quote-rejected", "COLLATERAL_UNAVAILABLE"), answer
        assert pccs.fetches == 1
        assert "qkms_pccs_failures_cached_total 3" in await node.metrics()

    run(main)


@pytest.mark.parametrize(
    ("wait", "expires", "reason"),
    [
        (200, None, "stale-request"),  # the request is older than the skew once the fetch ends
        (100, NOW + 50, "policy-refused"),  # the policy expires during the fetch
    ],
    ids=["request-stale", "policy-expired"],
)
def test_a_request_is_judged_at_the_time_its_collateral_fetch_ended(
    tmp_path: Path, wait: int, expires: int | None, reason: str
) -> None:
    """A fetch that waits (PCCS timeouts, the fetch limiter) does not let a request be
    judged at the time it arrived."""
    genuine = tee(1)
    pccs = CountingPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)})
    app_policy = policy()
    if expires is not None:
        app_policy = replace(app_policy, expires=expires)
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der], app_policy=app_policy)
    pccs.gate = trio.Event()
    answers: list[object] = []

    async def ask(raw: bytes) -> None:
        answers.append(await node.post(raw))

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, node.request(genuine, seed=1))
                while pccs.running == 0:
                    await trio.sleep(0.01)
                node.clock.t += wait  # the PCCS answers late
                assert pccs.gate is not None
                pccs.gate.set()
        (answer,) = answers
        assert refused(answer, reason), answer
        if reason == "policy-refused":
            assert isinstance(answer, KeyRefusal) and "expired" in answer.detail
        else:  # a request made now, with the collateral now held, gets its keys
            assert isinstance(await node.post(node.request(genuine, seed=2)), KeyResponse)

    run(main)


class _HugePCCS(CountingPCCS):
    """Answers the PCK CRL with 8 MiB, sent in 64 KiB chunks, with no length declared."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/sgx/certification/v4/pckcrl":
            await super().__call__(scope, receive, send)
            return
        self.requests[scope["path"]] += 1
        headers = [(b"sgx-pck-crl-issuer-chain", b"x")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = b"0" * 65536
        for _ in range(128):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


# Stopping mid-answer leaves httpx's nested stream generators to the garbage collector
# (the response itself is closed); trio warns about them.
@pytest.mark.filterwarnings("ignore:Async generator 'httpx:ResourceWarning")
def test_an_oversized_pccs_answer_is_a_counted_failed_fetch(tmp_path: Path) -> None:
    genuine = tee(1)
    pccs = _HugePCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)})
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der], failure_ttl=60)

    async def main() -> None:
        for k in range(3):
            answer = await node.post(node.request(genuine, seed=k))
            assert refused(answer, "quote-rejected", "COLLATERAL_UNAVAILABLE"), answer
        assert pccs.fetches == 1
        metrics = await node.metrics()
        assert "qkms_pccs_oversized_refused_total 1" in metrics
        assert "qkms_pccs_fetch_failures_total 1" in metrics

    run(main)
