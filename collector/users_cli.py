"""``shopspc users``: local users and API tokens of the HTTP API (no default user exists).

The database is ``--db FILE``, or ``users.db`` in the gateway's ``data_dir``
when ``--config FILE`` is given. Create the first admin with
``shopspc users add NAME --role admin`` (prompts for the password twice, or
reads it from the environment variable named by ``--password-env``).
Passwords are stored as argon2id hashes, tokens as SHA-256; a token's secret
is printed once, at creation. Every error prints one line
``shopspc users <command>: what: why`` and exits 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from collector.api.auth import AuthStore

__all__ = ["users_app"]

EXIT_BAD = 2
ROLES = ("operator", "engineer", "admin")  # collector.api.auth.ROLES (imported lazily: fastapi)

users_app = typer.Typer(
    no_args_is_help=True,
    help="Users and API tokens of the HTTP API: add, list, passwd, role, disable, token.",
)
token_app = typer.Typer(
    no_args_is_help=True, help="API tokens (for MES, scrapers): create, list, revoke."
)
users_app.add_typer(token_app, name="token")

DbOpt = Annotated[
    Path | None, typer.Option("--db", help="users database file (default: data_dir/users.db)")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="gateway config: its data_dir holds users.db"),
]
RoleOpt = Annotated[str, typer.Option("--role", help=f"one of {', '.join(ROLES)}")]
PasswordEnvOpt = Annotated[
    str | None,
    typer.Option("--password-env", help="read the password from this environment variable"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout")]


class _UsageError(Exception):
    pass


def _iso(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(db: Path | None, config: Path | None) -> Path:
    if db is not None:
        return db
    if config is None:
        raise _UsageError("--db: give --db FILE, or --config FILE (its data_dir holds users.db)")
    from collector.config import ConfigError, load_config

    try:
        cfg, _ = load_config(config)
    except ConfigError as err:
        raise _UsageError(f"--config: {err.problems[0] if err.problems else err}") from None
    return Path(cfg.gateway.data_dir) / "users.db"


@contextmanager
def _store(command: str, db: Path | None, config: Path | None) -> Iterator[AuthStore]:
    from collector.api.auth import AuthError, AuthStore

    try:
        store = AuthStore(_path(db, config))
    except _UsageError as exc:
        sys.stderr.write(f"shopspc users {command}: {exc}\n")
        raise typer.Exit(EXIT_BAD) from None
    except Exception as exc:  # an unreadable file: one line, not a traceback
        sys.stderr.write(f"shopspc users {command}: {db or config}: {exc}\n")
        raise typer.Exit(EXIT_BAD) from None
    try:
        yield store
    except (AuthError, _UsageError) as exc:
        sys.stderr.write(f"shopspc users {command}: {exc}\n")
        raise typer.Exit(EXIT_BAD) from None
    finally:
        store.close()


def _password(env: str | None) -> str:
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise _UsageError(f"--password-env: environment variable {env} is not set or empty")
        return value
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="user name")],
    role: RoleOpt,
    password_env: PasswordEnvOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a user (the first one: --role admin)."""
    with _store("add", db, config) as store:
        user = store.add_user(name, _password(password_env), role)
    sys.stdout.write(f"user {user.name} added ({user.role})\n")


@users_app.command("list")
def list_(db: DbOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List users (never their hashes)."""
    with _store("list", db, config) as store:
        users = store.users()
    if as_json:
        sys.stdout.write(json.dumps([asdict(u) for u in users]) + "\n")
        return
    for u in users:
        flag = " (disabled)" if u.disabled else ""
        sys.stdout.write(f"{u.name}\t{u.role}{flag}\tchanged {_iso(u.changed_us)}\n")


@users_app.command("passwd")
def passwd(
    name: Annotated[str, typer.Argument(help="user name")],
    password_env: PasswordEnvOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Set a user's password (their sessions end)."""
    with _store("passwd", db, config) as store:
        if store.user(name) is None:
            raise _UsageError(f"name: no user {name!r}")
        store.set_password(name, _password(password_env))
    sys.stdout.write(f"password of {name} changed\n")


@users_app.command("role")
def role_(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Annotated[str, typer.Argument(help=f"one of {', '.join(ROLES)}")],
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Change a user's role."""
    with _store("role", db, config) as store:
        user = store.set_role(name, role)
    sys.stdout.write(f"{user.name} is now {user.role}\n")


@users_app.command("disable")
def disable(
    name: Annotated[str, typer.Argument(help="user name")],
    enable: Annotated[bool, typer.Option("--enable", help="enable again instead")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Disable a user (sign-in refused, sessions end), or --enable again."""
    with _store("disable", db, config) as store:
        user = store.set_disabled(name, not enable)
    sys.stdout.write(f"{user.name} {'disabled' if user.disabled else 'enabled'}\n")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="what uses the token, e.g. mes")],
    role: RoleOpt,
    ttl_days: Annotated[
        float | None, typer.Option("--ttl-days", min=0.001, help="lifetime (default: no expiry)")
    ] = None,
    by: Annotated[str, typer.Option("--by", help="who creates it (audited)")] = "cli",
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API token; prints its secret once on stdout (send as 'Authorization: Bearer …')."""
    with _store("token create", db, config) as store:
        info, secret = store.create_token(
            name, role, by, None if ttl_days is None else ttl_days * 86400
        )
    sys.stderr.write(
        f"token {info.id} ({info.name}, {info.role}, expires {_iso(info.expires_us)})\n"
    )
    sys.stdout.write(secret + "\n")


@token_app.command("list")
def token_list(db: DbOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List API tokens (never their secrets)."""
    with _store("token list", db, config) as store:
        tokens = store.tokens()
    if as_json:
        sys.stdout.write(json.dumps([asdict(t) for t in tokens]) + "\n")
        return
    for t in tokens:
        state = f"revoked {_iso(t.revoked_us)}" if t.revoked_us else f"expires {_iso(t.expires_us)}"
        sys.stdout.write(
            f"{t.id}\t{t.name}\t{t.role}\tby {t.created_by}\t{state}\tlast used {_iso(t.last_used_us)}\n"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="token id (from token list)")],
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke an API token."""
    with _store("token revoke", db, config) as store:
        info = store.revoke_token(token_id)
    sys.stdout.write(f"token {info.id} ({info.name}) revoked\n")
