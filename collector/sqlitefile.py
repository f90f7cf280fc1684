"""Our SQLite files know what they are: ``application_id`` marks the kind, ``user_version`` the schema."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["check_identity"]


def check_identity(
    conn: sqlite3.Connection,
    path: Path,
    *,
    what: str,
    application_id: int,
    schema_version: int,
    error: Callable[[Path, str], Exception],
) -> bool:
    """True for a new, empty database; ``error(path, message)`` for any other file than ours.

    A database of another kind, a newer schema or a file that is not SQLite is
    refused before anything writes to it, and the message says it was left untouched.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.Error as e:
        raise error(path, f"is not a {what} ({e}); it was left untouched") from e
    fresh = app_id == 0 and version == 0 and n_objects == 0
    if not fresh and app_id != application_id:
        raise error(
            path,
            f"is an SQLite database but not a {what} (application_id={app_id:#x}); "
            "it was left untouched",
        )
    if not fresh and version != schema_version:
        raise error(
            path,
            f"{what} schema version {version} is not supported (expected {schema_version}); "
            "it was left untouched",
        )
    return fresh
