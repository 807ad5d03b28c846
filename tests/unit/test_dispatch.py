"""Delivery decisions as pure values: Standard Webhooks signing, retry/give-up/disable, the
Retry-After header, and the circuit breaker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.dispatch import (
    RETRY_SCHEDULE,
    AttemptResult,
    Breaker,
    Delivered,
    Disable,
    GiveUp,
    Retry,
    new_message_id,
    next_action,
    parse_retry_after,
    sign_headers,
)

NOW = datetime(2026, 5, 5, 12, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"nudge-test-key-0123456789abcdef!").decode()
BODY = b'{"type":"message.send","id":"msg_1","content":{"subject":"H\xc3\xa9j"}}'


def reference_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature, written from the spec (not with the library)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def result(status: int | None, **kw: object) -> AttemptResult:
    return AttemptResult(status=status, **kw)  # type: ignore[arg-type]


def no_jitter() -> float:
    return 0.5  # 2*0.5-1 == 0: the scheduled delay exactly


# --- signing ---------------------------------------------------------------------------------


def test_signature_matches_an_independent_implementation_of_the_spec() -> None:
    headers = sign_headers(SECRET, "msg_abc", NOW, BODY)
    ts = int(NOW.timestamp())
    assert headers == {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(ts),
        "webhook-signature": reference_signature(SECRET, "msg_abc", ts, BODY),
        "content-type": "application/json",
    }


def test_signature_matches_the_standard_webhooks_published_test_vector() -> None:
    headers = sign_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        datetime.fromtimestamp(1614265330, UTC),
        b'{"test": 2432232314}',
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_non_utc_timestamp_is_signed_as_the_same_instant() -> None:
    stockholm = NOW.astimezone(timezone(timedelta(hours=2)))
    headers = sign_headers(SECRET, "msg_abc", stockholm, BODY)
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert headers == sign_headers(SECRET, "msg_abc", NOW, BODY)


def test_fractional_seconds_are_truncated_in_header_and_signature_alike() -> None:
    headers = sign_headers(SECRET, "msg_abc", NOW + timedelta(milliseconds=999), BODY)
    ts = int(NOW.timestamp())
    assert headers["webhook-timestamp"] == str(ts)
    assert headers["webhook-signature"] == reference_signature(SECRET, "msg_abc", ts, BODY)


def test_an_unpadded_secret_is_accepted() -> None:
    unpadded = SECRET.rstrip("=")
    assert unpadded != SECRET
    assert sign_headers(unpadded, "msg_a", NOW, BODY) == sign_headers(SECRET, "msg_a", NOW, BODY)


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_a", "sk_abc"],
)
def test_a_secret_that_is_not_whsec_base64_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        sign_headers(secret, "msg_a", NOW, BODY)


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        sign_headers(SECRET, "msg_a", datetime(2026, 5, 5, 12, 0), BODY)


def test_message_ids_are_msg_and_32_hex_and_unique() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", i) for i in ids)


# --- Retry-After -----------------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert parse_retry_after("120", NOW) == timedelta(seconds=120)
    assert parse_retry_after(" 0 ", NOW) == timedelta(0)


def test_retry_after_http_date() -> None:
    later = NOW + timedelta(minutes=7)
    assert parse_retry_after(format_datetime(later, usegmt=True), NOW) == timedelta(minutes=7)
    assert parse_retry_after("Tue, 05 May 2026 12:07:00 -0000", NOW) == timedelta(minutes=7)


def test_retry_after_in_the_past_is_no_wait() -> None:
    earlier = NOW - timedelta(hours=1)
    assert parse_retry_after(format_datetime(earlier, usegmt=True), NOW) == timedelta(0)


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Tue, 99 Foo 2026", "٣"])
def test_retry_after_absent_or_invalid_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_a_huge_retry_after_does_not_overflow() -> None:
    for digits in (14, 40, 5000):
        wait = parse_retry_after("9" * digits, NOW)
        assert wait is not None and wait > timedelta(days=10_000)


# --- next_action -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    action = next_action(1, result(status), NOW)
    assert action == Delivered()
    assert action.label == "delivered"


def test_2xx_is_delivered_even_after_the_schedule_ran_out() -> None:
    assert next_action(len(RETRY_SCHEDULE) + 1, result(200), NOW) == Delivered()


def test_410_disables_the_endpoint() -> None:
    action = next_action(3, result(410), NOW)
    assert isinstance(action, Disable)
    assert "410" in action.reason
    assert action.label == "disabled"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 301, 302, 100])
def test_other_client_errors_and_redirects_give_up_at_once(status: int) -> None:
    action = next_action(1, result(status), NOW)
    assert isinstance(action, GiveUp)
    assert action.dead is False
    assert action.reason.startswith(f"HTTP {status}")
    assert action.label == "failed"


def test_a_permanent_failure_quotes_the_start_of_the_response_body() -> None:
    body = b'{"error":  "invalid\n recipient"}' + b"x" * 1000
    action = next_action(1, result(422, body=body), NOW)
    assert isinstance(action, GiveUp)
    assert action.reason.startswith('HTTP 422 Unprocessable Entity: {"error": "invalid recipient"}')
    assert len(action.reason) < 300


@pytest.mark.parametrize(
    "failed",
    [
        result(500),
        result(502),
        result(503),
        result(599),
        result(429),
        result(408),
        result(None, error="timeout after 5s"),
        result(None, error="connection refused"),
        result(None, error="connection closed mid-response"),
    ],
)
def test_transient_failures_retry_on_the_schedule(failed: AttemptResult) -> None:
    for attempt, delay in enumerate(RETRY_SCHEDULE, start=1):
        action = next_action(attempt, failed, NOW, rand=no_jitter)
        assert action == Retry(at=NOW + delay, reason=action.reason)  # type: ignore[union-attr]
        assert action.label == "retry"
    reason = next_action(1, failed, NOW).reason  # type: ignore[union-attr]
    assert (failed.error or f"HTTP {failed.status}") in reason


def test_the_schedule_is_standard_webhooks() -> None:
    assert len(RETRY_SCHEDULE) + 1 == 8
    total = sum(RETRY_SCHEDULE, timedelta(0))
    assert timedelta(hours=27) < total < timedelta(hours=28)


def test_after_the_last_scheduled_attempt_the_message_is_dead() -> None:
    attempts = len(RETRY_SCHEDULE) + 1
    action = next_action(attempts, result(503), NOW)
    assert isinstance(action, GiveUp)
    assert action.dead is True
    assert action.label == "dead"
    assert "503" in action.reason and f"{attempts} attempts" in action.reason

    timeout = next_action(attempts, result(None, error="timeout after 5s"), NOW)
    assert isinstance(timeout, GiveUp) and timeout.dead
    assert "timeout after 5s" in timeout.reason


def test_a_custom_schedule_decides_when_to_give_up() -> None:
    schedule = [timedelta(seconds=1), timedelta(seconds=2)]
    first = next_action(1, result(500), NOW, schedule=schedule, jitter=0)
    second = next_action(2, result(500), NOW, schedule=schedule, jitter=0)
    assert isinstance(first, Retry) and first.at == NOW + timedelta(seconds=1)
    assert isinstance(second, Retry) and second.at == NOW + timedelta(seconds=2)
    assert next_action(3, result(500), NOW, schedule=schedule) == GiveUp(
        reason="gave up after 3 attempts; last: HTTP 500 Internal Server Error", dead=True
    )


@pytest.mark.parametrize(("r", "factor"), [(0.0, 0.9), (0.5, 1.0), (0.25, 0.95), (0.75, 1.05)])
def test_jitter_scales_the_delay_within_bounds(r: float, factor: float) -> None:
    action = next_action(2, result(500), NOW, rand=lambda: r)
    assert isinstance(action, Retry)
    assert action.at - NOW == pytest.approx(RETRY_SCHEDULE[1] * factor, abs=timedelta(0, 0, 1))


@given(r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True), attempt=st.integers(1, 7))
def test_jitter_stays_within_ten_percent(r: float, attempt: int) -> None:
    action = next_action(attempt, result(None, error="timeout after 5s"), NOW, rand=lambda: r)
    assert isinstance(action, Retry)
    delay = RETRY_SCHEDULE[attempt - 1]
    assert delay * 0.9 - timedelta(microseconds=1) <= action.at - NOW <= delay * 1.1


def test_429_retry_after_seconds_is_honoured_when_longer_than_the_schedule() -> None:
    action = next_action(1, result(429, retry_after="120"), NOW, rand=no_jitter)
    assert isinstance(action, Retry)
    assert action.at == NOW + timedelta(seconds=120)
    assert "429" in action.reason and "Retry-After 120s" in action.reason


def test_retry_after_shorter_than_the_schedule_does_not_hurry_the_retry() -> None:
    action = next_action(3, result(429, retry_after="1"), NOW, rand=no_jitter)
    assert isinstance(action, Retry)
    assert action.at == NOW + RETRY_SCHEDULE[2]


def test_503_retry_after_http_date_is_honoured() -> None:
    header = format_datetime(NOW + timedelta(hours=1), usegmt=True)
    action = next_action(1, result(503, retry_after=header), NOW, rand=no_jitter)
    assert isinstance(action, Retry)
    assert action.at == NOW + timedelta(hours=1)


def test_retry_after_is_capped() -> None:
    week = str(int(timedelta(days=7).total_seconds()))
    capped = next_action(1, result(429, retry_after=week), NOW, rand=no_jitter)
    assert isinstance(capped, Retry) and capped.at == NOW + timedelta(days=1)
    custom = next_action(
        1, result(429, retry_after=week), NOW, rand=no_jitter, max_retry_after=timedelta(hours=2)
    )
    assert isinstance(custom, Retry) and custom.at == NOW + timedelta(hours=2)


def test_an_invalid_retry_after_falls_back_to_the_schedule() -> None:
    action = next_action(1, result(429, retry_after="whenever"), NOW, rand=no_jitter)
    assert isinstance(action, Retry) and action.at == NOW + RETRY_SCHEDULE[0]


def test_retry_after_does_not_extend_the_schedule_once_exhausted() -> None:
    action = next_action(8, result(429, retry_after="5"), NOW)
    assert isinstance(action, GiveUp) and action.dead


def test_attempt_numbers_start_at_one_and_now_is_aware() -> None:
    with pytest.raises(ValueError, match="1-based"):
        next_action(0, result(500), NOW)
    with pytest.raises(ValueError, match="aware"):
        next_action(1, result(500), datetime(2026, 1, 1))


# --- circuit breaker -------------------------------------------------------------------------

COOLDOWN = timedelta(minutes=1)
THRESHOLD = 3


def fail(b: Breaker, now: datetime) -> Breaker:
    return b.record(False, now, threshold=THRESHOLD, cooldown=COOLDOWN)


def succeed(b: Breaker, now: datetime) -> Breaker:
    return b.record(True, now, threshold=THRESHOLD, cooldown=COOLDOWN)


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    b = Breaker()
    for _ in range(THRESHOLD - 1):
        b = fail(b, NOW)
        assert b.state == "closed" and b.allows(NOW, COOLDOWN)
    b = fail(b, NOW)
    assert b.state == "open" and b.opened_at == NOW
    assert not b.allows(NOW, COOLDOWN)
    assert not b.allows(NOW + COOLDOWN - timedelta(microseconds=1), COOLDOWN)


def test_a_success_resets_the_failure_count() -> None:
    b = fail(fail(Breaker(), NOW), NOW)
    b = succeed(b, NOW)
    assert b == Breaker()
    b = fail(fail(b, NOW), NOW)
    assert b.state == "closed"


def test_after_cooldown_exactly_one_trial_is_let_through() -> None:
    b = Breaker(state="open", failures=THRESHOLD, opened_at=NOW)
    later = NOW + COOLDOWN
    assert b.allows(later, COOLDOWN)
    b = b.trial(later)
    assert b.state == "half_open"
    assert not b.allows(later, COOLDOWN)  # the trial is out: nobody else
    assert not b.allows(later + COOLDOWN / 2, COOLDOWN)


def test_a_successful_trial_closes_the_breaker() -> None:
    b = Breaker(state="open", failures=THRESHOLD, opened_at=NOW).trial(NOW + COOLDOWN)
    b = succeed(b, NOW + COOLDOWN)
    assert b == Breaker()
    assert b.allows(NOW + COOLDOWN, COOLDOWN)


def test_a_failed_trial_opens_the_breaker_again_for_a_full_cooldown() -> None:
    trial_at = NOW + COOLDOWN
    b = Breaker(state="open", failures=THRESHOLD, opened_at=NOW).trial(trial_at)
    done = trial_at + timedelta(seconds=2)
    b = fail(b, done)
    assert b.state == "open" and b.opened_at == done
    assert not b.allows(done + COOLDOWN - timedelta(microseconds=1), COOLDOWN)
    assert b.allows(done + COOLDOWN, COOLDOWN)


def test_a_lost_trial_expires_after_a_cooldown() -> None:
    b = Breaker(state="open", failures=THRESHOLD, opened_at=NOW).trial(NOW + COOLDOWN)
    assert b.allows(NOW + 2 * COOLDOWN, COOLDOWN)


def test_late_failures_while_open_do_not_extend_the_cooldown() -> None:
    b = Breaker(state="open", failures=THRESHOLD, opened_at=NOW)
    b = fail(b, NOW + timedelta(seconds=30))
    assert b.state == "open" and b.opened_at == NOW
    assert b.allows(NOW + COOLDOWN, COOLDOWN)


def test_trial_is_a_no_op_when_closed() -> None:
    b = fail(Breaker(), NOW)
    assert b.trial(NOW) is b


# Hypothesis: a driver that follows the documented protocol (ask, take the trial, send,
# record), with time moving forward and results arriving in any order.
_steps = st.lists(
    st.tuples(
        st.sampled_from(["send", "finish_ok", "finish_fail"]),
        st.integers(min_value=0, max_value=90),  # seconds that pass first
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(steps=_steps, threshold=st.integers(1, 4))
def test_breaker_never_admits_while_open_or_two_trials_at_once(
    steps: list[tuple[str, int]], threshold: int
) -> None:
    b = Breaker()
    now = NOW
    in_flight = 0
    consecutive = 0
    for op, wait in steps:
        now += timedelta(seconds=wait)
        if op == "send":
            allowed = b.allows(now, COOLDOWN)
            if b.state == "open":
                assert b.opened_at is not None
                assert allowed == (now >= b.opened_at + COOLDOWN)
            if b.state == "half_open":
                # a second trial only once the first is overdue by a whole cooldown
                assert b.trial_at is not None
                assert allowed == (now >= b.trial_at + COOLDOWN)
            if allowed:
                b = b.trial(now)
                in_flight += 1
        elif in_flight:
            ok = op == "finish_ok"
            in_flight -= 1
            before = b.state
            b = b.record(ok, now, threshold=threshold, cooldown=COOLDOWN)
            consecutive = 0 if ok else consecutive + 1
            if ok:
                assert b.state == "closed"
            elif before == "closed":
                assert (b.state == "open") == (consecutive >= threshold)
            elif before == "half_open":
                assert b.state == "open" and b.opened_at == now
        assert b.state != "closed" or b.failures < threshold
