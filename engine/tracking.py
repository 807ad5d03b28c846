"""Signed tokens for tracked links (``/c/{token}``) and unsubscribe links (``/u/{token}``).

A click token carries the message id and the URL the template passed to ``link()``; an
unsubscribe token the customer, the channel and the message. Both are signed with
itsdangerous (HMAC-SHA256 over a URL-safe payload) under the link secret, so the redirect can
only ever go to a URL the engine itself put into a message: no open redirect. Tokens do not
expire: an email is read, and an unsubscribe link must work, long after it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

__all__ = ["Click", "LinkSigner", "Unsubscribe"]


@dataclass(frozen=True, kw_only=True)
class Click:
    message_id: str
    url: str


@dataclass(frozen=True, kw_only=True)
class Unsubscribe:
    customer_id: int
    channel: str
    message_id: str | None


class LinkSigner:
    """Makes and checks the tokens; ``base_url`` is where customers reach the engine."""

    def __init__(self, secret: str, base_url: str) -> None:
        if len(secret) < 16:
            raise ValueError("the link secret must be at least 16 characters")
        self._clicks = URLSafeSerializer(secret, salt="nudge.click")
        self._unsubscribes = URLSafeSerializer(secret, salt="nudge.unsubscribe")
        self.base_url = base_url.rstrip("/")

    def click_url(self, message_id: str, url: str) -> str:
        return f"{self.base_url}/c/{self._clicks.dumps([message_id, url])}"

    def unsubscribe_url(self, customer_id: int, channel: str, message_id: str | None) -> str:
        token = self._unsubscribes.dumps([customer_id, channel, message_id])
        return f"{self.base_url}/u/{token}"

    def click(self, token: str) -> Click | None:
        """The click a token stands for, or ``None`` if it was not signed by us."""
        try:
            message_id, url = self._clicks.loads(token)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(message_id, str) or not isinstance(url, str):
            return None
        return Click(message_id=message_id, url=url)

    def unsubscribe(self, token: str) -> Unsubscribe | None:
        try:
            customer_id, channel, message_id = self._unsubscribes.loads(token)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(customer_id, int) or not isinstance(channel, str):
            return None
        return Unsubscribe(
            customer_id=customer_id,
            channel=channel,
            message_id=message_id if isinstance(message_id, str) else None,
        )
