"""The coordinator URL as its base, however it was written."""

from __future__ import annotations

import pytest

from fogwheel.core.urls import coordinator_base


@pytest.mark.parametrize(
    "written, base",
    [
        ("http://127.0.0.1:8470", "http://127.0.0.1:8470"),
        ("http://127.0.0.1:8470/", "http://127.0.0.1:8470"),
        ("http://127.0.0.1:8470/v1", "http://127.0.0.1:8470"),
        ("http://127.0.0.1:8470/v1/", "http://127.0.0.1:8470"),
        ("http://127.0.0.1:8470/v1/jobs?limit=5", "http://127.0.0.1:8470"),
        (" https://fog.example/ ", "https://fog.example"),
        ("https://example.org/fog/v1", "https://example.org/fog"),  # behind a proxy's path
        ("https://example.org/fog", "https://example.org/fog"),
        ("http://host/v10", "http://host/v10"),  # only /v1 itself is the API's
    ],
)
def test_the_base_url_drops_only_the_apis_own_tail(written: str, base: str) -> None:
    assert coordinator_base(written) == base


@pytest.mark.parametrize("written", ["127.0.0.1:8470", "ftp://host", "http://", "fog"])
def test_a_url_that_is_no_url_says_the_form(written: str) -> None:
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        coordinator_base(written)
