"""The database is the truth: SQLAlchemy tables and the queries that move tasks through core/."""

from fogwheel.store.sql import Principal, Store

__all__ = ["Principal", "Store"]
