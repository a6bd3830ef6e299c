"""Create the bench's PostgreSQL database when it is missing, so a fresh clone needs no
manual step (the role in DATABASE_URL needs CREATEDB, as the development role has)."""

from __future__ import annotations

from urllib.parse import urlsplit


def ensure_database(url: str) -> None:
    """CREATE DATABASE for the one `url` names, unless it exists. PostgreSQL URLs only."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return
    name = parts.path.lstrip("/")
    maintenance = parts._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if exists is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
