"""Persistent state: SQLAlchemy tables, repositories, Alembic migrations."""
