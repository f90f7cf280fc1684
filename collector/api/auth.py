"""Sign-in and roles for the HTTP API: local users, API tokens, sessions, audit (SQLite).

* **Users** have an argon2id hash (argon2-cffi), a role — ``operator`` <
  ``engineer`` < ``admin`` — and a disabled flag. There is no default user:
  ``shopspc users add NAME --role admin`` creates the first one.
* **API tokens** (for MES and scrapers) are random secrets shown once; only
  their SHA-256 is stored, with a name, role, creator, expiry and last use.
  They are sent as ``Authorization: Bearer <token>``.
* **Sessions** (browser) are random ids in an HttpOnly, SameSite=Strict cookie;
  only their SHA-256 is stored, with the session's CSRF token. Unsafe methods
  on a session need the header ``X-CSRF-Token``; bearer tokens are exempt.
* **Audit**: every state-changing request (who, when, method, path, status,
  body summary with secrets redacted) is a row of the ``audit`` table.
* **Failed sign-ins** are limited per user and per client address
  (:class:`LoginLimiter`, in memory).

:class:`AuthStore` is used from the event loop and from threads (one lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ROLES",
    "AuthError",
    "AuthStore",
    "LoginLimiter",
    "Principal",
    "TokenInfo",
    "User",
    "role_at_least",
    "summarise_body",
]

ROLES = ("operator", "engineer", "admin")
_RANK = {r: k for k, r in enumerate(ROLES)}
MIN_PASSWORD = 10
_SECRET_KEYS = ("password", "token", "secret")
_LAST_USED_EVERY_US = 60_000_000  # a token's last_used is written at most once a minute

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_us INTEGER NOT NULL,
    changed_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER,
    last_used_us INTEGER,
    revoked_us INTEGER
);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    client TEXT NOT NULL,
    summary TEXT NOT NULL
);
"""


def _now_us() -> int:
    return time.time_ns() // 1000


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _secure_cookie(setting: bool | str, request: Request) -> bool:
    """The session cookie's Secure flag: ``auto`` follows the scheme the request came in on
    (a browser drops a Secure cookie that came over plain HTTP, except from localhost)."""
    if setting == "auto":
        return request.url.scheme == "https"
    return bool(setting)


def role_at_least(role: str, needed: str) -> bool:
    """Whether ``role`` ranks at or above ``needed`` (operator < engineer < admin)."""
    return _RANK.get(role, -1) >= _RANK[needed]


class AuthError(Exception):
    """A refused user or token operation: ``what`` names the argument, ``message`` says why."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        self.message = message
        super().__init__(f"{what}: {message}")


@dataclass(frozen=True)
class User:
    """A local user (never its hash)."""

    name: str
    role: str
    disabled: bool
    created_us: int
    changed_us: int


@dataclass(frozen=True)
class TokenInfo:
    """An API token's metadata (the secret is shown once, at creation)."""

    id: str
    name: str
    role: str
    created_by: str
    created_us: int
    expires_us: int | None
    last_used_us: int | None
    revoked_us: int | None


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a signed-in user (``via="session"``) or an API token (``via="token"``)."""

    name: str
    role: str
    via: str
    csrf: str = ""
    token_id: str = ""


def _check_role(role: str) -> str:
    if role not in _RANK:
        raise AuthError("role", f"must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or any(c.isspace() or ord(c) < 32 or c == ":" for c in name):
        # ':' is reserved: token principals are named token:NAME in the audit trail
        raise AuthError("name", "1 to 64 characters, no spaces, colons or control characters")
    return name


def _check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise AuthError("password", f"at least {MIN_PASSWORD} characters")
    return password


def summarise_body(body: bytes, limit: int = 500) -> str:
    """A short, secret-free summary of a request body for the audit trail."""
    if not body:
        return ""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return f"<{len(body)} bytes, not JSON>"

    def redact(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {
                k: "***" if any(s in str(k).lower() for s in _SECRET_KEYS) else redact(x)
                for k, x in v.items()
            }
        if isinstance(v, list):
            return [redact(x) for x in v]
        return v

    text = json.dumps(redact(obj), ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuthStore:
    """Users, API tokens, sessions and the request audit in one SQLite file.

    ``hasher`` is the argon2id hasher (argon2-cffi defaults; tests pass a cheaper one).
    """

    def __init__(self, path: str | Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error:
            self._conn.close()
            raise
        # verifying an unknown user costs as much as a known one (no user enumeration by timing)
        self._dummy = self._hasher.hash(secrets.token_hex(16))
        self._closed = False

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> AuthStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- users -----------------------------------------------------------------

    def add_user(self, name: str, password: str, role: str) -> User:
        """Create a user; raises :class:`AuthError` if the name exists or an argument is bad."""
        name, role = _check_name(name), _check_role(role)
        digest = self._hasher.hash(_check_password(password))
        now = _now_us()
        try:
            self._run(
                "INSERT INTO users (name, hash, role, disabled, created_us, changed_us) "
                "VALUES (?, ?, ?, 0, ?, ?)",
                (name, digest, role, now, now),
            )
        except sqlite3.IntegrityError:
            raise AuthError("name", f"user {name!r} exists already") from None
        return User(name, role, False, now, now)

    def user(self, name: str) -> User | None:
        """A user by name, or None."""
        rows = self._run(
            "SELECT name, role, disabled, created_us, changed_us FROM users WHERE name = ?", (name,)
        )
        return (
            User(rows[0][0], rows[0][1], bool(rows[0][2]), rows[0][3], rows[0][4]) if rows else None
        )

    def users(self) -> list[User]:
        """All users, by name."""
        rows = self._run(
            "SELECT name, role, disabled, created_us, changed_us FROM users ORDER BY name"
        )
        return [User(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def _change(self, name: str, sql: str, params: tuple[Any, ...]) -> User:
        with self._lock:
            cur = self._conn.execute(sql, (*params, _now_us(), name))
            changed = cur.rowcount
        if not changed:
            raise AuthError("name", f"no user {name!r}")
        user = self.user(name)
        assert user is not None
        return user

    def set_password(self, name: str, password: str) -> User:
        """Replace a user's password; their sessions end."""
        digest = self._hasher.hash(_check_password(password))
        user = self._change(
            name, "UPDATE users SET hash = ?, changed_us = ? WHERE name = ?", (digest,)
        )
        self._run("DELETE FROM sessions WHERE user = ?", (name,))
        return user

    def _keep_an_admin(self, name: str) -> None:
        rows = self._run(
            "SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0 AND name != ?",
            (name,),
        )
        user = self.user(name)
        if user is not None and user.role == "admin" and not user.disabled and not rows[0][0]:
            raise AuthError("name", f"{name} is the last enabled admin")

    def set_role(self, name: str, role: str) -> User:
        """Change a user's role (the last enabled admin stays admin)."""
        if _check_role(role) != "admin":
            self._keep_an_admin(name)
        return self._change(
            name, "UPDATE users SET role = ?, changed_us = ? WHERE name = ?", (_check_role(role),)
        )

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (sessions end, sign-in refused) or enable a user (never the last enabled admin)."""
        if disabled:
            self._keep_an_admin(name)
        user = self._change(
            name, "UPDATE users SET disabled = ?, changed_us = ? WHERE name = ?", (int(disabled),)
        )
        if disabled:
            self._run("DELETE FROM sessions WHERE user = ?", (name,))
        return user

    def verify(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs and they are enabled, else None (slow: argon2)."""
        rows = self._run("SELECT hash FROM users WHERE name = ?", (name,))
        digest = rows[0][0] if rows else self._dummy
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not rows:
            return None
        if self._hasher.check_needs_rehash(digest):
            self._run(
                "UPDATE users SET hash = ? WHERE name = ?", (self._hasher.hash(password), name)
            )
        user = self.user(name)
        return user if user is not None and not user.disabled else None

    # -- tokens ----------------------------------------------------------------

    def create_token(
        self, name: str, role: str, created_by: str, ttl_s: float | None = None
    ) -> tuple[TokenInfo, str]:
        """A new API token: its metadata and the secret (shown once, stored only as SHA-256)."""
        name, role = _check_name(name), _check_role(role)
        secret = "spc_" + secrets.token_urlsafe(32)
        tid = secrets.token_hex(6)
        now = _now_us()
        expires = None if ttl_s is None else now + int(ttl_s * 1e6)
        self._run(
            "INSERT INTO tokens (id, hash, name, role, created_by, created_us, expires_us) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tid, _sha(secret), name, role, created_by, now, expires),
        )
        return TokenInfo(tid, name, role, created_by, now, expires, None, None), secret

    def tokens(self) -> list[TokenInfo]:
        """Every token's metadata, newest first."""
        rows = self._run(
            "SELECT id, name, role, created_by, created_us, expires_us, last_used_us, revoked_us "
            "FROM tokens ORDER BY created_us DESC"
        )
        return [TokenInfo(*r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token (idempotent); raises :class:`AuthError` for an unknown id."""
        self._run(
            "UPDATE tokens SET revoked_us = ? WHERE id = ? AND revoked_us IS NULL",
            (_now_us(), token_id),
        )
        found = [t for t in self.tokens() if t.id == token_id]
        if not found:
            raise AuthError("token", f"no token {token_id!r}")
        return found[0]

    def token_principal(self, secret: str) -> Principal | None:
        """The principal of a valid (known, unrevoked, unexpired) token, else None."""
        rows = self._run(
            "SELECT id, name, role, expires_us, last_used_us, revoked_us FROM tokens WHERE hash = ?",
            (_sha(secret),),
        )
        if not rows:
            return None
        tid, name, role, expires, last, revoked = rows[0]
        now = _now_us()
        if revoked is not None or (expires is not None and now >= expires):
            return None
        if last is None or now - last > _LAST_USED_EVERY_US:
            self._run("UPDATE tokens SET last_used_us = ? WHERE id = ?", (now, tid))
        return Principal(name=f"token:{name}", role=role, via="token", token_id=tid)

    # -- sessions --------------------------------------------------------------

    def create_session(self, user: User, ttl_s: float) -> tuple[str, str]:
        """A new session for ``user``: (session id for the cookie, CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = _now_us()
        self._run("DELETE FROM sessions WHERE expires_us <= ?", (now,))
        self._run(
            "INSERT INTO sessions (hash, user, csrf, created_us, expires_us) VALUES (?, ?, ?, ?, ?)",
            (_sha(sid), user.name, csrf, now, now + int(ttl_s * 1e6)),
        )
        return sid, csrf

    def session_principal(self, sid: str) -> Principal | None:
        """The principal of a live session of an enabled user, else None."""
        rows = self._run(
            "SELECT s.user, u.role, s.csrf, s.expires_us, u.disabled FROM sessions s "
            "JOIN users u ON u.name = s.user WHERE s.hash = ?",
            (_sha(sid),),
        )
        if not rows:
            return None
        name, role, csrf, expires, disabled = rows[0]
        if disabled or _now_us() >= expires:
            return None
        return Principal(name=name, role=role, via="session", csrf=csrf)

    def end_session(self, sid: str) -> None:
        """Delete a session (sign-out)."""
        self._run("DELETE FROM sessions WHERE hash = ?", (_sha(sid),))

    # -- audit -----------------------------------------------------------------

    def audit(
        self, who: str, via: str, method: str, path: str, status: int, client: str, summary: str
    ) -> None:
        """Record one state-changing request."""
        self._run(
            "INSERT INTO audit (at_us, who, via, method, path, status, client, summary) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (_now_us(), who, via, method, path, int(status), client, summary),
        )

    def audit_rows(self, limit: int = 100, since_id: int = 0) -> list[dict[str, Any]]:
        """Audit rows after ``since_id``, oldest first."""
        cols = ("id", "at_us", "who", "via", "method", "path", "status", "client", "summary")
        rows = self._run(
            f"SELECT {', '.join(cols)} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (int(since_id), int(limit)),
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]


class LoginLimiter:
    """Failed sign-ins per key (user name, client address) within a window; in memory.

    After ``max_failures`` failures within ``window_s`` a key is locked until
    the oldest of them leaves the window. A success clears the user's key.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._fails: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        now = self._clock()
        times = [t for t in self._fails.get(key, ()) if now - t < self.window_s]
        if times:
            self._fails[key] = times
        else:
            self._fails.pop(key, None)
        return times

    def retry_after(self, *keys: str) -> float:
        """Seconds until a locked key may try again (0 when none is locked)."""
        wait = 0.0
        for key in keys:
            times = self._recent(key)
            if len(times) >= self.max_failures:
                wait = max(wait, self.window_s - (self._clock() - times[0]))
        return wait

    def failed(self, *keys: str) -> None:
        """Count a failure against every key."""
        now = self._clock()
        for key in keys:
            self._fails.setdefault(key, []).append(now)
            if len(self._fails) > 10_000:  # bounded: forget the oldest key
                self._fails.pop(next(iter(self._fails)))

    def succeeded(self, key: str) -> None:
        """Clear a key after a successful sign-in."""
        self._fails.pop(key, None)


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two secrets without leaking where they differ."""
    return hmac.compare_digest(a.encode(), b.encode())


# --------------------------------------------------------------------------- FastAPI side

SESSION_COOKIE = "shopspc_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"what", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, what: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.what = what
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(f"{status} {what}: {message}")


def _auth_of(request: Request) -> AuthStore:
    return request.app.state.api.auth


async def current_principal(request: Request) -> Principal:
    """The request's principal: ``Authorization: Bearer <token>`` or the session cookie.

    401 without valid credentials; 403 when an unsafe method on a session
    lacks the matching ``X-CSRF-Token`` header (tokens are exempt: no browser
    sends them on its own).
    """
    store = _auth_of(request)
    header = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": "Bearer"}
    if header:
        scheme, _, cred = header.partition(" ")
        if scheme.lower() != "bearer" or not cred.strip():
            raise ApiError(401, "authorization", "use 'Authorization: Bearer <token>'", challenge)
        principal = store.token_principal(cred.strip())
        if principal is None:
            raise ApiError(401, "token", "unknown, revoked or expired API token", challenge)
    else:
        sid = request.cookies.get(SESSION_COOKIE)
        principal = store.session_principal(sid) if sid else None
        if principal is None:
            what = "session" if sid else "credentials"
            msg = (
                "session expired or ended; sign in again" if sid else "sign in or send an API token"
            )
            raise ApiError(401, what, msg, challenge)
        request.state.principal = principal  # a refused forgery is audited under its session
        if request.method not in SAFE_METHODS and not constant_time_equal(
            request.headers.get(CSRF_HEADER, ""), principal.csrf
        ):
            raise ApiError(403, "csrf", f"missing or wrong {CSRF_HEADER} header for this session")
    request.state.principal = principal
    return principal


def require(role: str) -> Callable[..., Any]:
    """A dependency admitting principals of ``role`` or higher (403 otherwise)."""
    _check_role(role)

    async def dependency(principal: Current) -> Principal:
        if not role_at_least(principal.role, role):
            raise ApiError(
                403, "role", f"needs the {role} role; {principal.name} is {principal.role}"
            )
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


Current = Annotated[Principal, Depends(current_principal)]
AsOperator = Annotated[Principal, Depends(require("operator"))]
AsEngineer = Annotated[Principal, Depends(require("engineer"))]
AsAdmin = Annotated[Principal, Depends(require("admin"))]


class LoginRequest(BaseModel):
    """Sign-in with a local user's name and password."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64, description="user name")
    password: str = Field(min_length=1, max_length=1024, description="password")


class NewUser(BaseModel):
    """A user to create (admin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64, description="user name")
    password: str = Field(min_length=MIN_PASSWORD, max_length=1024, description="initial password")
    role: Literal["operator", "engineer", "admin"] = Field(description="role")


class UserChange(BaseModel):
    """Role or disabled flag of a user (admin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["operator", "engineer", "admin"] | None = Field(None, description="new role")
    disabled: bool | None = Field(None, description="disable (true) or enable (false)")


class PasswordChange(BaseModel):
    """A new password."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    password: str = Field(min_length=MIN_PASSWORD, max_length=1024, description="new password")


class NewToken(BaseModel):
    """An API token to create (admin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64, description="what uses it, e.g. 'mes'")
    role: Literal["operator", "engineer", "admin"] = Field(description="its role")
    ttl_days: float | None = Field(
        None, gt=0, description="lifetime in days (default: the API settings' token_ttl_days)"
    )


def _user_json(u: User) -> dict[str, Any]:
    return asdict(u)


def auth_router() -> APIRouter:
    """Routes under ``/auth``, ``/users`` and ``/tokens`` (mount under ``/api/v1``)."""
    r = APIRouter(tags=["auth"])

    @r.post("/auth/login")
    async def login(body: LoginRequest, request: Request, response: Response) -> dict[str, Any]:
        """Sign in: sets the session cookie (HttpOnly, SameSite=Strict) and returns the CSRF token."""
        api = request.app.state.api
        client = request.client.host if request.client else "?"
        keys = (f"user:{body.name}", f"ip:{client}")
        request.state.login_name = body.name
        wait = api.limiter.retry_after(*keys)
        if wait > 0:
            raise ApiError(
                429,
                "login",
                f"too many failed sign-ins; try again in {math.ceil(wait)} s",
                {"Retry-After": str(math.ceil(wait))},
            )
        user = await asyncio.to_thread(api.auth.verify, body.name, body.password)
        if user is None:
            api.limiter.failed(*keys)
            raise ApiError(401, "login", "wrong user name or password, or the user is disabled")
        api.limiter.succeeded(keys[0])
        sid, csrf = api.auth.create_session(user, api.settings.session_ttl_s)
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=int(api.settings.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=_secure_cookie(api.settings.cookie_secure, request),
            path="/",
        )
        request.state.principal = Principal(user.name, user.role, "session")
        return {"user": user.name, "role": user.role, "csrf_token": csrf}

    @r.post("/auth/logout")
    async def logout(request: Request, response: Response, p: Current) -> dict[str, Any]:
        """End the session (no-op for API tokens)."""
        sid = request.cookies.get(SESSION_COOKIE)
        if p.via == "session" and sid:
            _auth_of(request).end_session(sid)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return {"signed_out": p.name}

    @r.get("/auth/me")
    async def me(p: Current) -> dict[str, Any]:
        """Who am I (name, role, session or token; the session's CSRF token)."""
        out: dict[str, Any] = {"name": p.name, "role": p.role, "via": p.via}
        if p.via == "session":
            out["csrf_token"] = p.csrf
        return out

    admin = Depends(require("admin"))

    @r.get("/users", dependencies=[admin])
    async def list_users(request: Request) -> list[dict[str, Any]]:
        """Every local user (admin)."""
        return [_user_json(u) for u in _auth_of(request).users()]

    @r.post("/users", status_code=201, dependencies=[admin])
    async def add_user(body: NewUser, request: Request) -> dict[str, Any]:
        """Create a user (admin)."""
        store = _auth_of(request)
        return _user_json(
            await asyncio.to_thread(store.add_user, body.name, body.password, body.role)
        )

    @r.patch("/users/{name}", dependencies=[admin])
    async def change_user(name: str, body: UserChange, request: Request) -> dict[str, Any]:
        """Change a user's role or disabled flag (admin)."""
        store = _auth_of(request)
        if store.user(name) is None:
            raise ApiError(404, "user", f"no user {name!r}")
        user = store.user(name)
        if body.role is not None:
            user = store.set_role(name, body.role)
        if body.disabled is not None:
            user = store.set_disabled(name, body.disabled)
        assert user is not None
        return _user_json(user)

    @r.post("/users/{name}/password")
    async def change_password(
        name: str, body: PasswordChange, request: Request, p: Current
    ) -> dict[str, Any]:
        """Set a user's password: an admin for anyone, a user for themself (their sessions end)."""
        if p.name != name and not role_at_least(p.role, "admin"):
            raise ApiError(403, "role", "only an admin sets another user's password")
        store = _auth_of(request)
        if store.user(name) is None:
            raise ApiError(404, "user", f"no user {name!r}")
        return _user_json(await asyncio.to_thread(store.set_password, name, body.password))

    @r.get("/tokens", dependencies=[admin])
    async def list_tokens(request: Request) -> list[dict[str, Any]]:
        """Every API token's metadata (admin; never the secrets)."""
        return [asdict(t) for t in _auth_of(request).tokens()]

    @r.post("/tokens", status_code=201)
    async def create_token(body: NewToken, request: Request, p: AsAdmin) -> dict[str, Any]:
        """Create an API token (admin); the secret is in this response only."""
        settings = request.app.state.api.settings
        days = body.ttl_days if body.ttl_days is not None else settings.token_ttl_days
        ttl = None if days is None else days * 86400.0
        info, secret = _auth_of(request).create_token(body.name, body.role, p.name, ttl)
        return {**asdict(info), "token": secret}

    @r.delete("/tokens/{token_id}", dependencies=[admin])
    async def revoke_token(token_id: str, request: Request) -> dict[str, Any]:
        """Revoke an API token (admin)."""
        store = _auth_of(request)
        if not any(t.id == token_id for t in store.tokens()):
            raise ApiError(404, "token", f"no token {token_id!r}")
        return asdict(store.revoke_token(token_id))

    @r.get("/audit", dependencies=[admin])
    async def audit(request: Request, since_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """The request audit trail (admin), oldest first after ``since_id``."""
        return _auth_of(request).audit_rows(min(max(limit, 1), 1000), since_id)

    return r
