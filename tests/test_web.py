"""The chat page's files and how they are served, without a browser."""

from __future__ import annotations

import asyncio
import re
from importlib import resources

import pytest

from shimmy import web
from shimmy.http.router import Router
from shimmy.http.types import Request, Response

PAGE_FILES = ("index.html", "app.js", "style.css")


def get(path: str, method: str = "GET") -> Response:
    router = Router()
    web.register(router)
    handler, _ = router.resolve(method, path)
    return asyncio.run(handler(Request(method, path, "", {}, b"")))


def header(response: Response, name: str) -> str:
    return dict(response.headers)[name]


def test_the_files_ship_inside_the_package() -> None:
    package = resources.files("shimmy.web")
    for name in PAGE_FILES:
        assert package.joinpath(name).read_bytes(), name


@pytest.mark.parametrize(("path", "content_type"), [
    ("/", "text/html; charset=utf-8"),
    ("/web/app.js", "text/javascript; charset=utf-8"),
    ("/web/style.css", "text/css; charset=utf-8"),
])
def test_each_file_is_served_with_its_type_and_a_strict_policy(
    path: str, content_type: str
) -> None:
    response = get(path)
    assert response.status == 200
    assert response.content_type == content_type
    policy = header(response, "content-security-policy")
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert header(response, "x-content-type-options") == "nosniff"


def test_head_is_answered_too() -> None:
    assert get("/", "HEAD").status == 200


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = web.asset_bytes("index.html").decode()
    references = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert set(references) == {"/web/style.css", "/web/app.js", "data:,"}
    for name in PAGE_FILES:
        text = web.asset_bytes(name).decode()
        assert "@import" not in text and "//cdn" not in text.lower(), name
    # the page's own code fetches only paths on this server
    code = web.asset_bytes("app.js").decode()
    assert re.findall(r'fetch\("([^"]*)"', code) == ["/v1/models", "/v1/chat/completions"]


@pytest.mark.parametrize("sink", [
    "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
    "setHTML", "createContextualFragment", "DOMParser",
])
def test_the_page_code_never_parses_text_as_html(sink: str) -> None:
    # text from the model or the server reaches the page only as text nodes
    assert sink not in web.asset_bytes("app.js").decode()
