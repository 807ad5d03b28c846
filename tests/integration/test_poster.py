"""The HTTP poster against real endpoints: uvicorn on a free loopback port for HTTP answers,
bare TCP servers for the faults (cut-off responses, garbage), a port nobody listens on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from nudge_testing import free_port
from webhook_receiver import ScriptedReceiver, raw_server, serve, wait_until

from engine import __version__
from engine.dispatch import AttemptResult, Poster, new_message_id, sign_headers

T = TypeVar("T")
LIMIT = 20.0  # seconds any one test may take
BODY = b'{"type":"message.send","id":"msg_x","channel":"email"}'
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop, bounded in time."""

    async def bounded() -> T:
        async with asyncio.timeout(LIMIT):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[ScriptedReceiver, str]]:
    scripted = ScriptedReceiver()
    with serve(scripted.app()) as base_url:
        yield scripted, base_url


async def post_once(url: str, *, timeout: float = 5.0, body: bytes = BODY) -> AttemptResult:
    poster = Poster(concurrency=4)
    try:
        return await poster.post(url, body, {"content-type": "application/json"}, timeout=timeout)
    finally:
        await poster.aclose()


def test_2xx_is_reported_with_its_status_and_the_request_arrives_intact(
    receiver: tuple[ScriptedReceiver, str],
) -> None:
    scripted, base = receiver
    msg_id = new_message_id()
    headers = sign_headers(SECRET, msg_id, datetime.now(UTC), BODY)

    async def go() -> AttemptResult:
        poster = Poster()
        try:
            return await poster.post(f"{base}/status/200", BODY, headers, timeout=5)
        finally:
            await poster.aclose()

    result = run(go())
    assert result.status == 200
    assert result.error is None and result.retry_after is None
    assert result.body == b"answered 200"
    assert 0 < result.duration_ms < LIMIT * 1000
    seen = next(s for s in scripted.seen if s.headers.get("webhook-id") == msg_id)
    assert seen.body == BODY
    for name, value in headers.items():
        assert seen.headers[name] == value
    assert seen.headers["user-agent"] == f"nudge/{__version__}"
    assert seen.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("code", [500, 503, 400, 404, 410])
def test_error_statuses_are_results_not_exceptions(
    receiver: tuple[ScriptedReceiver, str], code: int
) -> None:
    _, base = receiver
    result = run(post_once(f"{base}/status/{code}"))
    assert result == AttemptResult(
        status=code, duration_ms=result.duration_ms, body=f"answered {code}".encode()
    )


def test_429_carries_the_raw_retry_after(receiver: tuple[ScriptedReceiver, str]) -> None:
    _, base = receiver
    seconds = run(post_once(f"{base}/status/429?retry_after=120"))
    assert (seconds.status, seconds.retry_after) == (429, "120")
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    dated = run(post_once(f"{base}/status/503?retry_after={date.replace(' ', '%20')}"))
    assert (dated.status, dated.retry_after) == (503, date)


def test_redirects_are_not_followed(receiver: tuple[ScriptedReceiver, str]) -> None:
    scripted, base = receiver
    before = len(scripted.seen)
    result = run(post_once(f"{base}/redirect"))
    assert result.status == 302 and result.error is None
    assert [s.path for s in scripted.seen[before:]] == ["/redirect"]


def test_a_large_response_body_is_read_and_only_its_start_kept(
    receiver: tuple[ScriptedReceiver, str],
) -> None:
    _, base = receiver
    result = run(post_once(f"{base}/status/500?size={300 * 1024}"))
    assert result.status == 500
    assert result.body == b"e" * (64 * 1024)


def test_a_stalled_endpoint_times_out_and_the_pool_stays_usable(
    receiver: tuple[ScriptedReceiver, str],
) -> None:
    scripted, base = receiver
    ended = scripted.stalls_ended

    async def go() -> tuple[AttemptResult, AttemptResult]:
        poster = Poster(concurrency=1)
        try:
            stalled = await poster.post(f"{base}/stall", BODY, {}, timeout=0.3)
            after = await poster.post(f"{base}/status/200", BODY, {}, timeout=5)
            return stalled, after
        finally:
            await poster.aclose()

    stalled, after = run(go())
    assert stalled.status is None
    assert stalled.error == "timeout after 0.3s"
    assert 250 <= stalled.duration_ms < 3000
    assert after.status == 200
    # the poster hung up on the stalled request rather than leaving it open
    run(wait_until(lambda: scripted.stalls_ended > ended, "the receiver to see the hang-up"))


def test_the_timeout_bounds_the_whole_exchange_not_each_read() -> None:
    # A body trickling one byte every 50 ms never trips a per-read timeout; the poster's
    # deadline must still end it.
    async def trickle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.05)
        return False

    async def go() -> AttemptResult:
        async with raw_server(trickle) as server:
            return await post_once(server.url, timeout=0.4)

    result = run(go())
    assert result.status is None
    assert result.error == "timeout after 0.4s"
    assert result.duration_ms < 3000


def test_a_response_cut_off_mid_body_is_an_error() -> None:
    async def cut(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await w.drain()
        return False  # close

    async def go() -> AttemptResult:
        async with raw_server(cut) as server:
            return await post_once(server.url)

    result = run(go())
    assert result.status is None
    assert result.error == "connection closed mid-response"


def test_a_response_cut_off_mid_headers_is_an_error() -> None:
    async def cut(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await w.drain()
        return False

    async def hang_up(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> bool:
        return False

    async def go() -> tuple[AttemptResult, AttemptResult]:
        async with raw_server(cut) as one, raw_server(hang_up) as two:
            return await post_once(one.url), await post_once(two.url)

    mid_headers, nothing = run(go())
    assert mid_headers.status is None and nothing.status is None
    assert mid_headers.error == "connection closed before a complete response"
    assert nothing.error == "connection closed before a complete response"


def test_a_response_that_is_not_http_is_an_error() -> None:
    async def garbage(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"SMTP READY\r\n\r\n")
        await w.drain()
        return False

    async def go() -> AttemptResult:
        async with raw_server(garbage) as server:
            return await post_once(server.url)

    result = run(go())
    assert result.status is None
    assert result.error is not None and result.error.startswith("invalid HTTP response")


def test_a_refused_connection_is_an_error() -> None:
    result = run(post_once(f"http://127.0.0.1:{free_port()}/"))
    assert result.status is None
    assert result.error == "connection refused"


def test_connections_are_kept_alive_between_posts() -> None:
    async def ok(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return True  # keep the connection

    async def go() -> tuple[list[AttemptResult], int, int]:
        async with raw_server(ok) as server:
            poster = Poster(concurrency=1)
            try:
                results = [await poster.post(server.url, BODY, {}, timeout=5) for _ in range(10)]
            finally:
                await poster.aclose()
            return results, server.requests, server.connections

    results, requests, connections = run(go())
    assert [r.status for r in results] == [200] * 10
    assert (requests, connections) == (10, 1)


def test_at_most_concurrency_requests_are_in_flight(
    receiver: tuple[ScriptedReceiver, str],
) -> None:
    scripted, base = receiver
    assert scripted.arrived == 0 and scripted.in_flight == 0
    total, limit = 20, 5

    async def go() -> list[AttemptResult]:
        poster = Poster(concurrency=limit)
        try:
            tasks = [
                asyncio.create_task(poster.post(f"{base}/gate", BODY, {}, timeout=LIMIT))
                for _ in range(total)
            ]
            # Release one held request at a time, each time once every request the poster may
            # have out has arrived: with a bound of 5 the receiver can never see a sixth.
            for released in range(total):
                expected = released + min(limit, total - released)
                await wait_until(
                    lambda expected=expected: scripted.arrived >= expected,  # type: ignore[misc]
                    f"{expected} requests to arrive",
                )
                scripted.release()
            return await asyncio.gather(*tasks)
        finally:
            await poster.aclose()

    results = run(go())
    assert [r.status for r in results] == [200] * total
    assert scripted.arrived == total
    assert scripted.peak == limit


def test_the_client_is_created_lazily_and_can_be_reopened(
    receiver: tuple[ScriptedReceiver, str],
) -> None:
    _, base = receiver
    poster = Poster()  # outside any event loop: nothing is created yet

    async def go() -> int | None:
        result = await poster.post(f"{base}/status/204", BODY, {}, timeout=5)
        await poster.aclose()
        return result.status

    assert run(go()) == 204
    assert run(go()) == 204  # a new loop, a new client


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Poster(concurrency=0)
