"""The CDN as a web origin (RFC 9110), on a real local fog of 3 nodes: what curl, wget, aria2c
and Chromium do against `/v1/cdn/objects/{id}/content` — HEAD, validators and 304/412,
If-Range, several ranges as multipart/byteranges, 416, resumed and split downloads, signed
URLs that need no header, CORS, the media type recorded at publish, and a browser that plays
an MP4 from a signed URL and seeks into it."""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from fogwheel.cdn.client import plan, publish, signed_url
from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.store.migrate import add_missing_columns
from fogwheel.store.schema import metadata

CONSOLE = "http://console.test:8080"
SEGMENT = 256 * 1024  # small segments: a range crosses several


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install -y -qq {tool}; .ci/run does)")
    return path


def wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    workdir = tmp_path_factory.mktemp("fog")
    args = ["--cors-origin", CONSOLE]
    with LocalFog(3, lease_seconds=2.0, workdir=workdir, coordinator_args=args) as fog:
        yield fog


@pytest.fixture(scope="module")
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key) as c:
        yield c


def published_file(client: Client, path: Path, data: bytes, **kw: object) -> str:
    path.write_bytes(data)
    cid = publish(client, path, k=2, n=3, segment_size=SEGMENT, on_warning=lambda _: None, **kw)
    shas = [s for seg in plan(client, cid)["manifest"]["segments"] for s in seg["shares"]]
    wait_for(
        "every share is on a node", lambda: all(plan(client, cid)["holders"].get(s) for s in shas)
    )
    return cid


@pytest.fixture(scope="module")
def obj(client: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    data = os.urandom(3 * (1 << 20) + 4321)  # big enough for aria2c to split (1 MiB pieces)
    return published_file(client, tmp_path_factory.mktemp("pub") / "data.bin", data), data


@pytest.fixture()
def url(client: Client, obj: tuple[str, bytes]) -> str:
    return signed_url(client, obj[0], expires_in=600)[0]


def content_url(fog: LocalFog, cid: str) -> str:
    return f"{fog.url}/v1/cdn/objects/{cid}/content"


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([need("curl"), "-sS", *args], capture_output=True, timeout=120)


def head_lines(raw: bytes) -> dict[str, str]:
    lines = raw.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


# -- HEAD, validators, conditionals -------------------------------------------------------------


def test_head_sends_the_headers_of_get_and_no_body(fog: LocalFog, obj: tuple[str, bytes]) -> None:
    cid, data = obj
    got = httpx.get(content_url(fog, cid), headers=fog.headers, timeout=60)
    head = httpx.head(content_url(fog, cid), headers=fog.headers, timeout=60)
    assert head.status_code == got.status_code == 200 and head.content == b""
    assert got.content == data
    for name in ("etag", "last-modified", "cache-control", "accept-ranges", "content-type"):
        assert head.headers[name] == got.headers[name]
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["etag"] == f'"{cid}"'  # strong: the content id, quoted
    assert head.headers["accept-ranges"] == "bytes"
    assert head.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert head.headers["content-type"] == "application/octet-stream"  # .bin: no better guess


def test_wget_spider_and_aria2c_dry_run_find_the_object(url: str) -> None:
    spider = subprocess.run([need("wget"), "--spider", "-S", url], capture_output=True, timeout=60)
    assert spider.returncode == 0, spider.stderr.decode()[-2000:]
    assert b"200 OK" in spider.stderr and b"Length: 3150049" in spider.stderr
    dry = subprocess.run(
        [need("aria2c"), "--dry-run=true", "--use-head=true", url], capture_output=True, timeout=60
    )
    assert dry.returncode == 0, dry.stdout.decode()[-2000:]


def test_a_current_etag_or_date_gets_304_with_the_validators_and_no_body(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    cid, _ = obj
    first = httpx.head(content_url(fog, cid), headers=fog.headers, timeout=60)
    for condition in (
        {"if-none-match": f'"{cid}"'},
        {"if-none-match": f'"other", W/"{cid}"'},
        {"if-modified-since": first.headers["last-modified"]},
    ):
        r = httpx.get(content_url(fog, cid), headers={**fog.headers, **condition}, timeout=60)
        assert r.status_code == 304 and r.content == b"", condition
        assert r.headers["etag"] == f'"{cid}"' and "last-modified" in r.headers
        assert r.headers["cache-control"].startswith("private")
    stale = httpx.get(
        content_url(fog, cid), headers={**fog.headers, "if-none-match": '"old"'}, timeout=60
    )
    assert stale.status_code == 200


def test_if_match_and_if_unmodified_since_that_fail_are_412_with_a_sentence(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    cid, _ = obj
    for condition in (
        {"if-match": '"someone-elses"'},
        {"if-unmodified-since": "Sun, 06 Nov 1994 08:49:37 GMT"},
    ):
        r = httpx.get(content_url(fog, cid), headers={**fog.headers, **condition}, timeout=60)
        assert r.status_code == 412 and r.json()["error"], condition
    ok = httpx.head(
        content_url(fog, cid), headers={**fog.headers, "if-match": f'"{cid}"'}, timeout=60
    )
    assert ok.status_code == 200


# -- ranges ------------------------------------------------------------------------------------


def test_if_range_with_the_current_etag_gets_the_range_and_a_stale_one_the_whole(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    cid, data = obj
    ask = {**fog.headers, "range": "bytes=100-199"}
    fresh = httpx.get(content_url(fog, cid), headers={**ask, "if-range": f'"{cid}"'}, timeout=60)
    assert fresh.status_code == 206 and fresh.content == data[100:200]
    stale = httpx.get(content_url(fog, cid), headers={**ask, "if-range": '"v1"'}, timeout=60)
    assert stale.status_code == 200 and stale.content == data
    last = fresh.headers["last-modified"]
    dated = httpx.get(content_url(fog, cid), headers={**ask, "if-range": last}, timeout=60)
    assert dated.status_code == 206 and dated.content == data[100:200]


def test_curl_r_with_several_ranges_gets_multipart_byteranges(
    url: str, obj: tuple[str, bytes]
) -> None:
    _, data = obj
    a, b = SEGMENT - 10, 2 * SEGMENT + 10  # across segment boundaries
    r = curl("-D-", "-r", f"0-99,{a}-{b},-50", url)
    raw = r.stdout
    headers = head_lines(raw)
    assert raw.startswith(b"HTTP/1.1 206")
    assert headers["content-type"].startswith("multipart/byteranges; boundary=")
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert int(headers["content-length"]) == len(body)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"content-type: {headers['content-type']}\r\n\r\n".encode() + body
    )
    parts = [(p["content-range"], p.get_payload(decode=True)) for p in message.iter_parts()]
    size = len(data)
    assert parts == [
        (f"bytes 0-99/{size}", data[:100]),
        (f"bytes {a}-{b}/{size}", data[a : b + 1]),
        (f"bytes {size - 50}-{size - 1}/{size}", data[-50:]),
    ]


def test_overlapping_ranges_are_coalesced_into_one(url: str, obj: tuple[str, bytes]) -> None:
    _, data = obj
    r = httpx.get(url, headers={"range": "bytes=0-99,50-149,150-199"}, timeout=60)
    assert r.status_code == 206 and r.content == data[:200]
    assert r.headers["content-range"] == f"bytes 0-199/{len(data)}"


@pytest.mark.parametrize("asked", ["bytes=9-3", "bytes=x-y", "lines=0-1", "bytes=" + "0-0," * 20])
def test_an_unparseable_or_abusive_range_is_ignored_and_the_whole_sent(
    url: str, obj: tuple[str, bytes], asked: str
) -> None:
    r = httpx.get(url, headers={"range": asked}, timeout=60)
    assert r.status_code == 200 and r.content == obj[1]


def test_a_range_past_the_end_is_416_with_the_size_and_a_sentence(
    url: str, obj: tuple[str, bytes]
) -> None:
    size = len(obj[1])
    r = curl("-D-", "-r", f"{size}-", url)
    assert r.stdout.startswith(b"HTTP/1.1 416")
    assert head_lines(r.stdout)["content-range"] == f"bytes */{size}"
    assert f"ask for bytes 0-{size - 1}".encode() in r.stdout


def test_wget_c_resumes_a_partial_download(
    url: str, obj: tuple[str, bytes], tmp_path: Path
) -> None:
    _, data = obj
    target = tmp_path / "film.bin"
    target.write_bytes(data[:1_000_000])  # an interrupted download
    r = subprocess.run(
        [need("wget"), "-c", "-q", "-O", str(target), url], capture_output=True, timeout=120
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert target.read_bytes() == data


def test_aria2c_downloads_in_four_ranged_pieces_at_once(
    url: str, obj: tuple[str, bytes], tmp_path: Path
) -> None:
    r = subprocess.run(
        [need("aria2c"), "-q", "-x4", "-s4", "-k1M", "-d", str(tmp_path), "-o", "got.bin", url],
        capture_output=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout.decode()[-2000:]
    assert (tmp_path / "got.bin").read_bytes() == obj[1]


# -- signed URLs -------------------------------------------------------------------------------


def test_a_signed_url_needs_no_header_and_is_cached_no_longer_than_it_lives(
    client: Client, obj: tuple[str, bytes]
) -> None:
    link, expires = signed_url(client, obj[0], expires_in=120)
    assert expires - 5 <= time.time() + 120 <= expires + 5
    r = httpx.get(link, headers={"range": "bytes=0-9"}, timeout=60)
    assert r.status_code == 206 and r.content == obj[1][:10]
    age = int(r.headers["cache-control"].split("max-age=")[1].split(",")[0])
    assert 100 <= age <= 120 and r.headers["cache-control"].startswith("private")


def test_a_tampered_or_borrowed_signature_is_403_with_a_sentence(
    fog: LocalFog, client: Client, url: str, tmp_path: Path
) -> None:
    other = published_file(client, tmp_path / "other.bin", b"another object")
    expires = url.split("expires=")[1].split("&")[0]
    later = url.replace(f"expires={expires}", f"expires={int(expires) + 3600}")
    borrowed = url.replace(url.split("/objects/")[1].split("/")[0], other)
    for bad in (later, borrowed, url[:-1] + ("0" if url[-1] != "0" else "1")):
        r = httpx.get(bad, timeout=60)
        assert r.status_code == 403 and "does not match" in r.json()["error"], bad
    r = httpx.get(url.split("&signature=")[0], timeout=60)
    assert r.status_code == 403 and "both expires= and signature=" in r.json()["error"]


def test_an_expired_signed_url_is_403_saying_to_ask_for_a_new_one(
    client: Client, obj: tuple[str, bytes]
) -> None:
    link, _ = signed_url(client, obj[0], expires_in=1)
    time.sleep(2.1)
    r = httpx.get(link, timeout=60)
    assert r.status_code == 403 and "expired" in r.json()["error"]
    assert "fogwheel cdn url" in r.json()["error"]


def test_another_customer_can_neither_read_nor_sign_the_object(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    admin = {"authorization": f"Bearer {fog.admin_key}"}
    made = httpx.post(f"{fog.url}/v1/customers", params={"name": "eve"}, headers=admin)
    eve = {"authorization": f"Bearer {made.json()['api_key']}"}
    assert httpx.get(content_url(fog, obj[0]), headers=eve, timeout=60).status_code == 404
    asked = httpx.post(
        f"{fog.url}/v1/cdn/objects/{obj[0]}/urls", json={"expires_in": 60}, headers=eve
    )
    assert asked.status_code == 404
    too_long = httpx.post(
        f"{fog.url}/v1/cdn/objects/{obj[0]}/urls",
        json={"expires_in": 8 * 86400},
        headers=fog.headers,
    )
    assert too_long.status_code == 422 and "expires_in" in too_long.json()["error"]


def test_the_cli_prints_a_signed_url_that_curl_fetches(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key}
    r = subprocess.run(
        ["fogwheel", "cdn", "url", obj[0], "--expires", "15m"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    link = r.stdout.strip()
    assert curl("-r", "0-99", link).stdout == obj[1][:100]
    bad = subprocess.run(
        ["fogwheel", "cdn", "url", obj[0], "--expires", "soon"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "15m, 1h or 7d" in bad.stderr


@pytest.mark.postgres
def test_a_url_one_coordinator_signs_another_on_the_same_database_serves(tmp_path: Path) -> None:
    """Several coordinators on PostgreSQL share the signing key, so the URL secret too."""
    from tests.test_api_errors import scratch_database

    with (
        scratch_database() as db,
        LocalFog(nodes=0, coordinators=2, db=db, workdir=tmp_path / "fog") as fog,
    ):
        clip = tmp_path / "clip.webm"
        clip.write_bytes(b"not really a film" * 100)
        with Client(fog.urls[0], fog.api_key) as first:
            cid = publish(first, clip, k=2, n=3, on_warning=lambda _: None)
            link, _ = signed_url(first, cid, expires_in=60)
        assert link.startswith(fog.urls[0])
        elsewhere = fog.urls[1] + link[len(fog.urls[0]) :]
        r = httpx.get(elsewhere, headers={"range": "bytes=4-10"}, timeout=60)
        assert r.status_code == 206 and r.content == clip.read_bytes()[4:11]
        assert r.headers["content-type"] == "video/webm"


def test_a_revoked_publishers_signed_urls_stop_working(fog: LocalFog, tmp_path: Path) -> None:
    admin = {"authorization": f"Bearer {fog.admin_key}"}
    made = httpx.post(f"{fog.url}/v1/customers", params={"name": "mallory"}, headers=admin).json()
    with Client(fog.url, made["api_key"]) as mallory:
        (tmp_path / "leak.txt").write_bytes(b"for a while")
        cid = publish(mallory, tmp_path / "leak.txt", k=2, n=3, on_warning=lambda _: None)
        link, _ = signed_url(mallory, cid, expires_in=600)
    assert httpx.get(link, timeout=60).content == b"for a while"
    revoked = httpx.post(f"{fog.url}/v1/customers/{made['customer_id']}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    r = httpx.get(link, timeout=60)
    assert r.status_code == 403 and "no longer has a key" in r.json()["error"]


# -- CORS and Allow ----------------------------------------------------------------------------


def test_any_page_may_read_a_signed_url_and_preflight_it(url: str) -> None:
    r = httpx.get(url, headers={"origin": "https://player.example", "range": "bytes=0-0"})
    assert r.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "accept-ranges", "etag", "content-length"} <= exposed
    assert "access-control-allow-credentials" not in r.headers
    pre = httpx.options(
        url,
        headers={
            "origin": "https://player.example",
            "access-control-request-method": "GET",
            "access-control-request-headers": "range",
        },
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
    assert "range" in pre.headers["access-control-allow-headers"]


def test_with_a_key_only_the_configured_origin_may_read(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    where = content_url(fog, obj[0])
    mine = httpx.head(where, headers={**fog.headers, "origin": CONSOLE}, timeout=60)
    assert mine.headers["access-control-allow-origin"] == CONSOLE
    assert mine.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in mine.headers
    evil = httpx.head(where, headers={**fog.headers, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    ask = {
        "access-control-request-method": "GET",
        "access-control-request-headers": "authorization",
    }
    ok = httpx.options(where, headers={**ask, "origin": CONSOLE})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == CONSOLE
    refused = httpx.options(where, headers={**ask, "origin": "https://evil.example"})
    assert refused.status_code == 403 and "--cors-origin" in refused.json()["error"]
    plain = httpx.options(where)
    assert plain.status_code == 204 and plain.headers["allow"] == "GET, HEAD, OPTIONS"


def test_cors_origin_takes_only_origins(tmp_path: Path) -> None:
    r = subprocess.run(
        ["fogwheel", "coordinator", "--data-dir", str(tmp_path), "--port", "0",
         "--cors-origin", "https://console.example.com/app"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "scheme://host[:port]" in r.stderr


def test_a_method_the_content_does_not_take_is_405_listing_those_it_does(
    fog: LocalFog, obj: tuple[str, bytes]
) -> None:
    r = httpx.put(content_url(fog, obj[0]), headers=fog.headers, content=b"x")
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD", "OPTIONS"}


# -- the media type ----------------------------------------------------------------------------


def test_the_media_type_is_guessed_from_the_name_or_given_and_served(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    guessed = published_file(client, tmp_path / "clip.mp4", b"\x00" * 100)
    r = httpx.head(content_url(fog, guessed), headers=fog.headers)
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox"  # a published page runs no script
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key}
    (tmp_path / "notes").write_bytes(b"plain words")
    given = subprocess.run(
        ["fogwheel", "cdn", "publish", str(tmp_path / "notes"), "--k", "2", "--n", "3",
         "--content-type", "text/plain; charset=utf-8"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert given.returncode == 0, given.stderr
    cid = given.stdout.strip().splitlines()[-1]
    r = httpx.get(content_url(fog, cid), headers=fog.headers)
    assert r.headers["content-type"] == "text/plain; charset=utf-8" and r.content == b"plain words"
    bad = subprocess.run(
        ["fogwheel", "cdn", "publish", str(tmp_path / "notes"), "--k", "2", "--n", "3",
         "--content-type", "text/plain\r\nset-cookie: x=1"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "content_type" in bad.stderr


def test_an_older_database_gains_the_media_type_column(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as c:  # cdn_objects as it was before media types were recorded
        c.execute(
            text(
                "CREATE TABLE cdn_objects (id VARCHAR(64) PRIMARY KEY, customer_id VARCHAR(64) "
                "NOT NULL, name VARCHAR(200) NOT NULL, size BIGINT NOT NULL, k INTEGER NOT NULL, "
                "n INTEGER NOT NULL, key VARCHAR(64) NOT NULL, manifest TEXT NOT NULL, "
                "created_at FLOAT NOT NULL, fetches INTEGER NOT NULL DEFAULT 0)"
            )
        )
    assert "cdn_objects.content_type" in add_missing_columns(engine, metadata)
    assert "content_type" in {c["name"] for c in inspect(engine).get_columns("cdn_objects")}


# -- Chromium plays an MP4 from a signed URL and seeks into it ---------------------------------

PAGE = """<!doctype html><html><body>
<video id=v crossorigin=anonymous muted playsinline preload=auto src="%(src)s"></video>
<script>
const v = document.getElementById('v'), SEEK = %(seek)s;
let sent = false, seekedTo = null, startedAt = null;
function report(o) {
  if (sent) return; sent = true;
  Object.assign(o, {currentTime: v.currentTime, readyState: v.readyState, duration: v.duration,
                    seekedTo: seekedTo, startedAt: startedAt});
  fetch('/report', {method: 'POST', body: JSON.stringify(o)});
}
v.addEventListener('error', () => report({ok: false, error: v.error ? v.error.code + ': ' +
                                           v.error.message : 'error'}));
v.addEventListener('seeked', () => { seekedTo = v.currentTime; });
v.addEventListener('timeupdate', () => {
  if (seekedTo === null && !v.seeking && v.currentTime > 0.5) {
    startedAt = v.currentTime; v.currentTime = SEEK;
  } else if (seekedTo !== null && v.currentTime > SEEK + 1.0) {
    report({ok: true});
  }
});
v.play().catch(e => report({ok: false, error: 'play() refused: ' + e}));
setTimeout(() => report({ok: false, error: 'timed out'}), 60000);
</script></body></html>"""


def test_chromium_plays_an_mp4_from_a_signed_url_and_seeks_into_it(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y -qq chromium; .ci/run does)")
    ffmpeg = need("ffmpeg")
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc=duration=10:size=320x240:rate=25", "-pix_fmt", "yuv420p", "-c:v", "libx264",
         "-g", "25", "-movflags", "+faststart", str(clip)],
        check=True, timeout=120,
    )  # fmt: skip
    cid = published_file(client, tmp_path / "clip.mp4", clip.read_bytes())
    src, _ = signed_url(client, cid, expires_in=600)
    reports: queue.Queue[dict] = queue.Queue()

    class Page(http.server.BaseHTTPRequestHandler):
        """The test page (another origin than the coordinator) and where it reports."""

        def do_GET(self) -> None:
            body = (PAGE % {"src": src, "seek": 6.0}).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            reports.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", f"http://127.0.0.1:{server.server_port}/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        got = reports.get(timeout=90)
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        server.shutdown()
    assert got["ok"], got
    assert got["duration"] == pytest.approx(10, abs=0.1)
    assert got["startedAt"] > 0.5  # it played before the seek
    assert 5.9 <= got["seekedTo"] <= 6.1  # the seek landed where it was sent
    assert got["currentTime"] > 7.0  # and played on past the seek point
    assert got["readyState"] >= 3  # HAVE_FUTURE_DATA: no stall, no error
