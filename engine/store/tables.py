"""The Core tables behind the SQLModel classes, for the store's SQL (one place)."""

from __future__ import annotations

from engine.models import (
    Checkout,
    Customer,
    DecisionRow,
    DeliveryAttemptRow,
    Event,
    Identity,
    JourneyRow,
    JourneyTransitionRow,
    MessageRow,
    Order,
    OutboxRow,
    StateEntry,
    SuppressionRow,
    table,
)

__all__ = [
    "ATTEMPTS",
    "CHECKOUTS",
    "CUSTOMERS",
    "DECISIONS",
    "EVENTS",
    "IDENTITIES",
    "JOURNEYS",
    "MESSAGES",
    "ORDERS",
    "OUTBOX",
    "STATE",
    "SUPPRESSIONS",
    "TRANSITIONS",
]

EVENTS = table(Event)
CUSTOMERS = table(Customer)
IDENTITIES = table(Identity)
ORDERS = table(Order)
CHECKOUTS = table(Checkout)
JOURNEYS = table(JourneyRow)
TRANSITIONS = table(JourneyTransitionRow)
DECISIONS = table(DecisionRow)
STATE = table(StateEntry)
MESSAGES = table(MessageRow)
OUTBOX = table(OutboxRow)
ATTEMPTS = table(DeliveryAttemptRow)
SUPPRESSIONS = table(SuppressionRow)
