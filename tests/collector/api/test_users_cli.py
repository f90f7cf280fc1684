"""``shopspc users``: the first admin, passwords, roles, tokens (typer's runner, a real SQLite file)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from collector.api.auth import AuthStore
from collector.cli import app

runner = CliRunner()


def _run(*args: str, **kw):
    return runner.invoke(app, ["users", *args], **kw)


def test_first_admin_by_prompt_then_list_passwd_role_disable(tmp_path) -> None:
    db = str(tmp_path / "users.db")
    r = _run("add", "boss", "--role", "admin", "--db", db, input="a long secret\na long secret\n")
    assert r.exit_code == 0, r.output
    assert "user boss added (admin)" in r.stdout
    r = _run(
        "add",
        "li",
        "--role",
        "operator",
        "--password-env",
        "PW_LI",
        "--db",
        db,
        env={"PW_LI": "operator pass 1"},
    )
    assert r.exit_code == 0, r.output
    r = _run("list", "--db", db, "--json")
    assert [(u["name"], u["role"], u["disabled"]) for u in json.loads(r.stdout)] == [
        ("boss", "admin", False),
        ("li", "operator", False),
    ]
    with AuthStore(db) as store:
        assert store.verify("boss", "a long secret") is not None
        assert store.verify("li", "operator pass 1") is not None
    r = _run("passwd", "li", "--password-env", "PW", "--db", db, env={"PW": "the new password"})
    assert r.exit_code == 0, r.output
    assert _run("role", "li", "engineer", "--db", db).exit_code == 0
    assert _run("disable", "li", "--db", db).exit_code == 0
    r = _run("list", "--db", db)
    assert "li\tengineer (disabled)" in r.stdout
    with AuthStore(db) as store:
        assert store.verify("li", "the new password") is None  # disabled
    assert _run("disable", "li", "--enable", "--db", db).exit_code == 0
    with AuthStore(db) as store:
        assert store.verify("li", "the new password").role == "engineer"


def test_refusals_exit_2_with_one_line(tmp_path) -> None:
    db = str(tmp_path / "users.db")
    r = _run("add", "x", "--role", "admin", "--password-env", "NOPE_UNSET", "--db", db)
    assert r.exit_code == 2 and "NOPE_UNSET is not set" in r.stderr
    r = _run("add", "x", "--role", "admin", "--password-env", "PW", "--db", db, env={"PW": "short"})
    assert r.exit_code == 2 and "password: at least 10 characters" in r.stderr
    r = _run(
        "add", "x", "--role", "root", "--password-env", "PW", "--db", db, env={"PW": "long enough!"}
    )
    assert r.exit_code == 2 and "role: must be one of operator, engineer, admin" in r.stderr
    assert (
        _run(
            "add",
            "x",
            "--role",
            "admin",
            "--password-env",
            "PW",
            "--db",
            db,
            env={"PW": "long enough!"},
        ).exit_code
        == 0
    )
    r = _run(
        "add",
        "x",
        "--role",
        "admin",
        "--password-env",
        "PW",
        "--db",
        db,
        env={"PW": "long enough!"},
    )
    assert r.exit_code == 2 and "exists already" in r.stderr
    r = _run("passwd", "ghost", "--password-env", "PW", "--db", db, env={"PW": "long enough!"})
    assert r.exit_code == 2 and "no user 'ghost'" in r.stderr
    r = _run("list")
    assert r.exit_code == 2 and "give --db FILE, or --config FILE" in r.stderr


def test_tokens_create_list_revoke(tmp_path) -> None:
    db = str(tmp_path / "users.db")
    r = _run("token", "create", "mes", "--role", "operator", "--ttl-days", "30", "--db", db)
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip()
    assert secret.startswith("spc_")
    with AuthStore(db) as store:
        p = store.token_principal(secret)
        assert p is not None and (p.name, p.role) == ("token:mes", "operator")
        (info,) = store.tokens()
    r = _run("token", "list", "--db", db, "--json")
    assert json.loads(r.stdout)[0]["created_by"] == "cli" and secret not in r.stdout
    assert _run("token", "revoke", info.id, "--db", db).exit_code == 0
    with AuthStore(db) as store:
        assert store.token_principal(secret) is None
    r = _run("token", "revoke", "nope", "--db", db)
    assert r.exit_code == 2 and "no token 'nope'" in r.stderr
