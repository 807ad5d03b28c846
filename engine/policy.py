"""Policy: may this message go to this customer now? A pure function from values to an outcome.

The caller has already evaluated the rule's ``if``. :func:`decide` then checks, in the order of
ARCHITECTURE.md §4, and the first check that objects decides:

1. **Consent and suppression.** A channel in ``Audience.suppressed`` (hard bounce, complaint,
   unsubscribe) is skipped; so is a channel whose ``consent[channel]`` is ``False``. ``None``
   (or a missing key) means the customer made no explicit choice:

   - *email*: allowed unless ``accepts_marketing is False`` or ``consent["email"] is False``
     (opt-out: an address given to a shop is marketing-eligible until withdrawn);
   - *push*: allowed unless ``consent["push"] is False`` (the device token is the opt-in);
   - *sms*: requires ``consent["sms"] is True`` and ``accepts_marketing`` not ``False``
     (opt-in, as carriers and most jurisdictions require).

2. **Address present.** Email needs a non-blank ``email``, push at least one token, sms a
   ``phone``.
3. **Rule caps**, counting only that rule's sends, then 4. **global caps**: a channel cap counts
   the sends on its channel, an ``any`` cap counts every send. Windows roll: a send counts while
   ``at > now - per``, so a send exactly ``per`` ago no longer does. When a cap is full,
   ``on_limit="skip"`` skips; ``"defer"`` defers until enough of the counted sends have left the
   window to free one slot. If several caps of one stage are full, a skipping cap wins over a
   deferring one; several deferring caps defer to the latest of their moments.
5. **Quiet hours** in the customer's own zone (an unknown zone is read as UTC). The window is
   ``start <= local time < end`` and may cross midnight (21:00-08:00); ``start == end`` is an
   empty window. ``on_quiet="defer"`` defers to the next local occurrence of ``end``, converted
   to UTC through the zone's rules (so a DST change in between is honoured).
6. **Holdout / variant** by :func:`assign`, a SHA-256 of ``rule_id:customer_id``: the same
   customer gets the same arm in every process and on every run.

A deferred message is decided again from the start when it comes due, so caps are re-checked.
:func:`decide_many` lets several requests of one tick compete for capped slots: higher
``priority`` first, ties by ``(rule_id, step)``; each send is added to a local copy of the
history before the next decision, so a tick can never exceed a cap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "HOLDOUT",
    "Audience",
    "Cap",
    "Defer",
    "Holdout",
    "Outcome",
    "Policy",
    "QuietHours",
    "Request",
    "Send",
    "SentMessage",
    "Skip",
    "assign",
    "decide",
    "decide_many",
]

HOLDOUT = "holdout"
_CAP_CHANNELS = frozenset({"email", "push", "sms", "any"})
_MARKETING_CHANNELS = frozenset({"email", "sms"})


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Cap:
    """At most ``max`` sends on ``channel`` (``any``: on all channels) per rolling ``per``."""

    channel: Literal["email", "push", "sms", "any"]
    max: int
    per: timedelta
    on_limit: Literal["skip", "defer"] = "skip"

    def __post_init__(self) -> None:
        if self.channel not in _CAP_CHANNELS:
            raise ValueError(f"cap channel must be one of {sorted(_CAP_CHANNELS)}")
        if self.max < 1:
            raise ValueError("cap max must be at least 1")
        if self.per <= timedelta(0):
            raise ValueError("cap per must be a positive duration")

    @property
    def label(self) -> str:
        """``email 1/16h``: the channel and the limit."""
        return f"{self.channel} {self.max}/{_format_per(self.per)}"

    def covers(self, channel: str) -> bool:
        return self.channel in ("any", channel)


@dataclass(frozen=True, kw_only=True)
class QuietHours:
    """No messages on ``channels`` (empty: all) from ``start`` to ``end`` in the customer's zone."""

    start: time
    end: time
    channels: frozenset[str] = frozenset()
    on_quiet: Literal["defer", "skip"] = "defer"

    def covers(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def contains(self, local: time) -> bool:
        """Whether the local wall time ``local`` falls inside the window."""
        if self.start < self.end:
            return self.start <= local < self.end
        if self.start > self.end:  # crosses midnight
            return local >= self.start or local < self.end
        return False

    @property
    def label(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, kw_only=True)
class Policy:
    """The global part of the policy (``config.yaml``): caps, ANDed, and quiet hours."""

    caps: tuple[Cap, ...] = ()
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True, kw_only=True)
class SentMessage:
    """One message already sent to the customer (the history caps count)."""

    rule_id: str
    channel: str
    at: datetime


@dataclass(frozen=True, kw_only=True)
class Audience:
    """What the policy needs to know about the customer."""

    customer_id: int
    consent: Mapping[str, bool | None]
    accepts_marketing: bool | None
    suppressed: frozenset[str]
    email: str | None
    push_tokens: tuple[str, ...]
    timezone: str
    phone: str | None = None


@dataclass(frozen=True, kw_only=True)
class Request:
    """A due step of a rule: send on ``channel``? ``variants`` are (id, weight) pairs."""

    rule_id: str
    priority: int
    channel: str
    step: int
    due_at: datetime
    rule_caps: tuple[Cap, ...] = ()
    holdout: float = 0.0
    variants: tuple[tuple[str, float], ...] = ()
    #: The arm (``"holdout"`` or a variant id) the journey was already given at an earlier
    #: step: kept, so a customer never changes arm mid-journey (e.g. after an identity merge
    #: changes the customer id the hash is taken over).
    arm: str | None = None


# -- outcomes --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Send:
    """Send the message, rendered as ``variant`` (``None``: the rule has no variants)."""

    variant: str | None = None

    @property
    def label(self) -> str:
        return "sent"


@dataclass(frozen=True, kw_only=True)
class Holdout:
    """The customer is in the rule's holdout group: recorded, not sent."""

    @property
    def label(self) -> str:
        return HOLDOUT


@dataclass(frozen=True, kw_only=True)
class Skip:
    """Not sent, and not retried; ``reason`` names the check that decided."""

    reason: str

    @property
    def label(self) -> str:
        return f"skipped:{self.reason}"


@dataclass(frozen=True, kw_only=True)
class Defer:
    """Decide again at ``until`` (aware UTC); ``reason`` names the cap or window."""

    until: datetime
    reason: str

    @property
    def label(self) -> str:
        return f"deferred:{self.until.isoformat()}"


Outcome = Send | Holdout | Skip | Defer


# -- assignment ------------------------------------------------------------------------------


def _unit(digest: bytes) -> float:
    """The first 53 bits of ``digest`` as a float in [0, 1)."""
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def assign(
    rule_id: str, customer_id: int, holdout: float, variants: Sequence[tuple[str, float]]
) -> str | None:
    """``"holdout"``, a variant id chosen by weight, or ``None`` when there are no variants.

    Deterministic across processes: bytes 0-7 of ``sha256(f"{rule_id}:{customer_id}")`` decide
    the holdout, bytes 8-15 (independent of them) the variant, so the variant split is the same
    inside and outside any holdout share. Variants with a weight of 0 or less are never chosen.
    """
    digest = hashlib.sha256(f"{rule_id}:{customer_id}".encode()).digest()
    if _unit(digest[:8]) < holdout:
        return HOLDOUT
    arms = [(vid, weight) for vid, weight in variants if weight > 0]
    total = sum(weight for _, weight in arms)
    if not arms:
        return None
    point = _unit(digest[8:16]) * total
    running = 0.0
    for vid, weight in arms:
        running += weight
        if point < running:
            return vid
    return arms[-1][0]  # float rounding at the very top of the range


# -- decisions -------------------------------------------------------------------------------


def _format_per(per: timedelta) -> str:
    seconds = int(per.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):  # "7d" reads better than "1w"
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("policy times must be timezone-aware")
    return value.astimezone(UTC)


def _consent(channel: str, audience: Audience) -> str | None:
    """Why ``channel`` may not be used for marketing to ``audience``, or ``None``."""
    if channel not in ("email", "push", "sms"):
        return f"unknown channel {channel}"
    if channel in audience.suppressed:
        return f"suppressed for {channel}"
    choice = audience.consent.get(channel)
    if choice is False:
        return f"opted out of {channel}"
    if channel in _MARKETING_CHANNELS and audience.accepts_marketing is False:
        return f"no consent for {channel}"
    if channel == "sms" and choice is not True:
        return "no consent for sms"
    return None


def _address(channel: str, audience: Audience) -> str | None:
    if channel == "email" and not (audience.email or "").strip():
        return "no email address"
    if channel == "push" and not audience.push_tokens:
        return "no push token"
    if channel == "sms" and not (audience.phone or "").strip():
        return "no phone number"
    return None


def _caps(
    caps: Iterable[Cap], channel: str, sends: Sequence[SentMessage], now: datetime, *, rule: bool
) -> Skip | Defer | None:
    """The outcome of the first full cap (a skipping one before any deferring), or ``None``."""
    deferred: Defer | None = None
    for cap in caps:
        if not cap.covers(channel):
            continue
        since = now - cap.per
        times = sorted(at for s in sends if cap.covers(s.channel) and (at := _aware(s.at)) > since)
        if len(times) < cap.max:
            continue
        # "rule cap 1/7d" (or "rule cap email 1/7d"), "cap email 1/16h", "cap any 3/7d".
        reason = f"rule cap {cap.label.removeprefix('any ')}" if rule else f"cap {cap.label}"
        if cap.on_limit == "skip":
            return Skip(reason=reason)
        # A slot frees when all but max - 1 of the counted sends have left the window.
        until = times[len(times) - cap.max] + cap.per
        if deferred is None or until > deferred.until:
            deferred = Defer(until=until, reason=reason)
    return deferred


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _quiet(quiet: QuietHours, channel: str, timezone: str, now: datetime) -> Skip | Defer | None:
    if not quiet.covers(channel):
        return None
    zone = _zone(timezone)
    local = now.astimezone(zone)
    if not quiet.contains(local.time()):
        return None
    reason = f"quiet hours {quiet.label} {zone.key}"
    if quiet.on_quiet == "skip":
        return Skip(reason=reason)
    day = local.date() if local.time() < quiet.end else local.date() + timedelta(days=1)
    until = datetime.combine(day, quiet.end, tzinfo=zone).astimezone(UTC)
    return Defer(until=until, reason=reason)


def decide(
    request: Request,
    audience: Audience,
    history: Sequence[SentMessage],
    policy: Policy,
    now: datetime,
) -> Outcome:
    """The outcome of ``request`` for ``audience`` at ``now`` (see the module docstring)."""
    now = _aware(now)
    channel = request.channel
    refusal = _consent(channel, audience) or _address(channel, audience)
    if refusal is not None:
        return Skip(reason=refusal)
    own = [s for s in history if s.rule_id == request.rule_id]
    limited = _caps(request.rule_caps, channel, own, now, rule=True)
    limited = limited or _caps(policy.caps, channel, history, now, rule=False)
    if limited is not None:
        return limited
    if policy.quiet_hours is not None:
        quiet = _quiet(policy.quiet_hours, channel, audience.timezone, now)
        if quiet is not None:
            return quiet
    arm = request.arm
    if arm is None:
        arm = assign(request.rule_id, audience.customer_id, request.holdout, request.variants)
    if arm == HOLDOUT:
        return Holdout()
    return Send(variant=arm)


def decide_many(
    requests: Iterable[Request],
    audience: Audience,
    history: Sequence[SentMessage],
    policy: Policy,
    now: datetime,
    *,
    sent: Callable[[Request, Send], bool] | None = None,
) -> list[tuple[Request, Outcome]]:
    """Decide several requests of one customer in one tick, competing for capped slots.

    Higher ``priority`` first, ties by ``(rule_id, step)``; returned in that order. Each
    :class:`Send` counts against the caps of the requests after it — unless ``sent`` (called
    for each Send, in order) says the message did not go out after all (it failed to render),
    in which case its slot stays free for the next request.
    """
    now = _aware(now)
    taken = list(history)
    results: list[tuple[Request, Outcome]] = []
    for request in sorted(requests, key=lambda r: (-r.priority, r.rule_id, r.step)):
        outcome = decide(request, audience, taken, policy, now)
        if isinstance(outcome, Send) and (sent is None or sent(request, outcome)):
            taken.append(SentMessage(rule_id=request.rule_id, channel=request.channel, at=now))
        results.append((request, outcome))
    return results
