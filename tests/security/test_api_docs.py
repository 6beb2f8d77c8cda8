"""The API documentation pages load nothing from another origin: their scripts, styles and icons
come from this server and answer 200, and their Content-Security-Policy names no other origin."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlparse

import pytest
from fastapi.testclient import TestClient

from latentops.platform.api.app import create_app

BASE = "http://testserver"
URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")
ASSET = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']""")


@pytest.fixture
def api(settings_env) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(settings_env), base_url=BASE)


def _foreign_origins(text: str) -> set[str]:
    return {match for match in URL.findall(text) if urlparse(match if ":" in match else "http:" + match).netloc
            != urlparse(BASE).netloc}


@pytest.mark.parametrize("page", ["/api/docs", "/api/redoc"])
def test_docs_page_and_its_assets_come_from_this_server(api: TestClient, page: str) -> None:
    answer = api.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert _foreign_origins(answer.text) == set(), answer.text
    assets = ASSET.findall(answer.text)
    assert len(assets) >= 2, answer.text  # a script and a style sheet, spec or icon
    for asset in assets:
        url = urljoin(BASE + page, asset)
        assert urlparse(url).netloc == urlparse(BASE).netloc
        fetched = api.get(url)
        assert fetched.status_code == 200, url
        if url.endswith("init.js"):  # our own set-up script names no other origin (no online validator)
            assert _foreign_origins(fetched.text) == set() and '"validatorUrl": null' in fetched.text


@pytest.mark.parametrize("page", ["/api/docs", "/api/redoc", "/api/docs/init.js"])
def test_docs_pages_have_a_strict_content_security_policy(api: TestClient, page: str) -> None:
    policy = api.get(page).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "http" not in policy and "*" not in policy  # no other origin, no wildcard


def test_swagger_ui_default_locations_are_gone(api: TestClient) -> None:
    """FastAPI's CDN pages are not served anywhere (``/docs`` and ``/redoc`` are portal 404s)."""
    for path in ("/docs", "/redoc"):
        answer = api.get(path, follow_redirects=False)
        assert answer.status_code in {303, 404} and "cdn.jsdelivr.net" not in answer.text
