"""CORS for CDN content (core/cors.py): any page for a signed URL, the configured origins for a
bearer key, never credentials, Vary: Origin wherever the answer depends on it."""

from __future__ import annotations

import pytest

from fogwheel.core.cors import preflight_headers, response_headers, valid_origin

CONSOLE = "https://console.example.com"


@pytest.mark.parametrize("allowed", [(), (CONSOLE,), ("*",)])
def test_a_signed_url_is_readable_from_any_page_whatever_is_configured(allowed) -> None:
    out = response_headers("https://anyone.example", allowed, signed=True)
    assert out["access-control-allow-origin"] == "*"
    assert "ETag" in out["access-control-expose-headers"]


def test_with_a_key_only_a_listed_origin_is_named_and_the_answer_varies_by_origin() -> None:
    assert response_headers(CONSOLE, (CONSOLE,), signed=False) == {
        "access-control-allow-origin": CONSOLE,
        "access-control-expose-headers": (
            "Content-Range, Accept-Ranges, ETag, Content-Length, Last-Modified"
        ),
        "vary": "Origin",
    }
    assert response_headers("https://evil.example", (CONSOLE,), signed=False) == {"vary": "Origin"}
    assert response_headers(None, (CONSOLE,), signed=False) == {"vary": "Origin"}


def test_nothing_configured_means_same_origin_only() -> None:
    assert response_headers(CONSOLE, (), signed=False) == {}
    assert preflight_headers(CONSOLE, "GET", (), signed=False) is None


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("allowed", [(), (CONSOLE,), ("*",)])
def test_credentials_are_never_allowed(signed: bool, allowed) -> None:
    for out in (
        response_headers(CONSOLE, allowed, signed),
        preflight_headers(CONSOLE, "GET", allowed, signed) or {},
    ):
        assert "access-control-allow-credentials" not in out


def test_a_preflight_allows_reads_and_the_headers_players_send_but_no_writes() -> None:
    out = preflight_headers(CONSOLE, "GET", (CONSOLE,), signed=False)
    assert out is not None and out["access-control-allow-methods"] == "GET, HEAD"
    for header in ("authorization", "range", "if-range", "if-none-match"):
        assert header in out["access-control-allow-headers"]
    assert preflight_headers(CONSOLE, "DELETE", (CONSOLE,), signed=False) is None
    assert preflight_headers(CONSOLE, "PUT", ("*",), signed=True) is None


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("*", True),
        ("https://console.example.com", True),
        ("http://127.0.0.1:8080", True),
        ("https://console.example.com/path", False),
        ("console.example.com", False),
        ("ftp://x", False),
        ("", False),
    ],
)
def test_what_cors_origin_accepts(text: str, ok: bool) -> None:
    assert valid_origin(text) is ok
