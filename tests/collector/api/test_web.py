"""The web screens over HTTP: pages and files served with types, caching and a CSP they obey."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from collector.api.app import ApiSettings, close_app, create_app
from collector.api.webapp import WEB_DIR, mount_web


@pytest.fixture
async def client(gateway, tmp_path):
    app = create_app(gateway, ApiSettings(users_db=tmp_path / "users.db", cookie_secure=False))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
    close_app(app)


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script>/<style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and data.strip():
            self.inline.append(f"<{self._in}>{data.strip()[:40]}")


async def test_index_is_served_with_csp_and_revalidation(client) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["etag"].startswith('"')
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    again = await client.get("/", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_html_has_no_inline_script_style_or_handlers(client) -> None:
    html = (await client.get("/")).text
    p = _Tags()
    p.feed(html)
    assert p.inline == []
    for tag, attrs in p.tags:
        assert "style" not in attrs, tag
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), attrs
        if tag == "link":
            assert attrs["href"].startswith("/static/")
    srcs = [a["src"] for t, a in p.tags if t == "script"]
    assert srcs == ["/static/app.js"]


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("i18n.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ],
)
async def test_static_files_have_their_types(client, name, ctype) -> None:
    r = await client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == ctype
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == (WEB_DIR / name).read_bytes()


def test_scripts_load_nothing_from_elsewhere() -> None:
    """No CDN, no eval, no inline style attribute strings: what the CSP would refuse."""
    for f in WEB_DIR.glob("*.js"):
        text = f.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), f.name
        assert "eval(" not in text and "new Function" not in text, f.name
        assert not re.search(r"""setAttribute\(\s*["']style""", text), f.name
        assert ".innerHTML" not in text, f.name  # text is inserted as text, never parsed
        for m in re.finditer(r"""from\s+["']([^"']+)["']""", text):
            assert m.group(1).startswith("./") and (WEB_DIR / m.group(1)[2:]).is_file(), m.group(1)


async def test_unknown_or_traversing_names_are_404(client) -> None:
    for name in ("nope.js", "..%2Fwebapp.py", "%2E%2E%2Fapp.py"):
        r = await client.get(f"/static/{name}")
        assert r.status_code == 404, name
        assert "error" in r.json()
    assert (await client.get("/static/nope.js")).json()["error"]["what"] == "static"
    assert (await client.get("/static/../webapp.py")).status_code == 404


def test_every_ui_string_exists_in_both_languages() -> None:
    text = (WEB_DIR / "i18n.js").read_text()
    en, zh = text.split("  zh: {")
    keys = lambda part: set(re.findall(r"^\s{4}(\w+):", part, re.M))  # noqa: E731
    assert keys(en) == keys(zh) and len(keys(en)) > 50
    used = set()
    for f in ("app.js", "index.html"):
        src = (WEB_DIR / f).read_text()
        used |= set(re.findall(r"""\bt\("(\w+)"\)""", src))
        used |= set(re.findall(r'data-i18n="(\w+)"', src))
    assert used - keys(en) == set()


async def test_api_answers_stay_json_beside_the_pages(client) -> None:
    assert (await client.get("/api/v1/characteristics")).status_code == 401
    assert (await client.get("/healthz")).json() == {"status": "ok"}


def test_a_folder_without_index_is_refused(tmp_path) -> None:
    from fastapi import FastAPI

    with pytest.raises(FileNotFoundError, match=r"index\.html"):
        mount_web(FastAPI(), None, folder=tmp_path)
