"""The storage port and its SQL implementation.

Everything that talks to the database lives below this package; SQLite and PostgreSQL
differences are decided here and nowhere else.
"""

from __future__ import annotations

from engine.store.base import CustomerView, Store, Unit
from engine.store.sql import SqlStore, create_store

__all__ = ["CustomerView", "SqlStore", "Store", "Unit", "create_store"]
