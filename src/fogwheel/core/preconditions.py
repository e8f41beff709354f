"""Conditional requests on an immutable representation, decided without a socket or a clock.

RFC 9110 §13: the validators are a strong entity tag (§8.8.3) and a Last-Modified date
(§8.8.2); `evaluate` applies If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since
in the order of §13.2.2 and says whether a Range may be honoured (If-Range, §13.1.5). The CDN's
objects never change once published, so their Last-Modified is a strong validator too (§8.8.2.2:
it cannot have changed twice within its second) and an If-Range date may match it.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_tz

_ETAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
MAX_TAGS = 64  # entity tags of one If-(None-)Match worth reading; the rest are not compared


@dataclass(frozen=True)
class Validators:
    """What the selected representation is known by: its entity tag (the opaque part, no
    quotes) and its Last-Modified time in whole seconds since the epoch."""

    etag: str
    last_modified: int

    @property
    def etag_header(self) -> str:
        return f'"{self.etag}"'

    @property
    def last_modified_header(self) -> str:
        return http_date(self.last_modified)


@dataclass(frozen=True)
class Proceed:
    """Answer the request; `honour_range` is False when If-Range failed (serve it whole)."""

    honour_range: bool


@dataclass(frozen=True)
class NotModified:
    """304: the client's copy is current (If-None-Match or If-Modified-Since)."""

    reason: str


@dataclass(frozen=True)
class PreconditionFailed:
    """412: If-Match or If-Unmodified-Since does not hold."""

    reason: str


Outcome = Proceed | NotModified | PreconditionFailed


def http_date(seconds: int) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`."""
    return formatdate(seconds, usegmt=True)


def parse_http_date(text: str) -> int | None:
    """Seconds since the epoch of an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and
    asctime forms a recipient must accept, §5.6.7); None when it is none of them."""
    if len(text) > 64:
        return None
    try:
        parts = parsedate_tz(text.strip())
    except (ValueError, IndexError, TypeError):
        return None
    if parts is None:
        return None
    year, month, day, hour, minute, second = parts[:6]  # RFC 850's yy made 19yy or 20yy
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - (parts[9] or 0)


def entity_tags(field: str) -> tuple[list[tuple[bool, str]], bool] | None:
    """The (weak, opaque-tag) list of an If-Match / If-None-Match value and whether it is `*`;
    None when it is malformed (then the condition is ignored as though absent)."""
    text = field.strip()
    if text == "*":
        return [], True
    tags: list[tuple[bool, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        m = _ETAG.fullmatch(item)
        if m is None:
            return None
        if len(tags) < MAX_TAGS:
            tags.append((m.group(1) is not None, m.group(2)))
    return (tags, False) if tags else None


def evaluate(headers: Mapping[str, str], have: Validators, now: int, has_range: bool) -> Outcome:
    """The outcome of a GET or HEAD's preconditions, in the order of RFC 9110 §13.2.2.

    1. If-Match: 412 unless a listed tag matches strongly (or `*`).
    2. else If-Unmodified-Since: 412 when modified after the date.
    3. If-None-Match: 304 when a listed tag matches weakly (or `*`).
    4. else If-Modified-Since: 304 unless modified after the date (a date in the future, after
       `now`, is invalid and ignored, §13.1.3).
    5. If-Range, only with a Range: the Range is honoured only when it names this very
       representation (a strong tag match, or exactly its Last-Modified date).
    A malformed or unparseable field is ignored, as the RFC says for each.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if_match = entity_tags(lower["if-match"]) if "if-match" in lower else None
    if if_match is not None:
        tags, star = if_match
        if not star and not any(not weak and tag == have.etag for weak, tag in tags):
            return PreconditionFailed(f"If-Match does not name the current ETag {have.etag_header}")
    elif "if-unmodified-since" in lower and "if-match" not in lower:
        since = parse_http_date(lower["if-unmodified-since"])
        if since is not None and have.last_modified > since:
            return PreconditionFailed(
                "the object was modified after If-Unmodified-Since "
                f"(at {have.last_modified_header})"
            )
    if_none = entity_tags(lower["if-none-match"]) if "if-none-match" in lower else None
    if if_none is not None:
        tags, star = if_none
        if star or any(tag == have.etag for _, tag in tags):
            return NotModified(f"If-None-Match names the current ETag {have.etag_header}")
    elif "if-modified-since" in lower and "if-none-match" not in lower:
        since = parse_http_date(lower["if-modified-since"])
        if since is not None and since <= now and have.last_modified <= since:
            return NotModified(f"not modified since {http_date(since)}")
    if has_range and "if-range" in lower:
        return Proceed(honour_range=if_range_holds(lower["if-range"], have))
    return Proceed(honour_range=True)


def if_range_holds(field: str, have: Validators) -> bool:
    """RFC 9110 §13.1.5: an entity tag must match strongly (a weak one never does); a date must
    equal the Last-Modified exactly; anything else fails (so the client gets it whole)."""
    text = field.strip()
    m = _ETAG.fullmatch(text)
    if m is not None:
        return m.group(1) is None and m.group(2) == have.etag
    date = parse_http_date(text)
    return date is not None and date == have.last_modified
