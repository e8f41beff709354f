"""The CDN through the SDK: publish a file, fetch it back from the nodes, read the stats.

    from fogwheel import Client
    from fogwheel.cdn.client import publish, fetch, signed_url

    with Client() as fog:
        cid = publish(fog, "film.mp4", k=4, n=8)  # served as video/mp4, guessed from the name
        stats = fetch(fog, cid, "copy.mp4")
        print(stats.from_peers / stats.size)      # the share delivered by peers
        url, expires = signed_url(fog, cid, expires_in=3600)  # <video src=url>, curl, wget

Publishing encrypts and erasure-codes the file here, one segment at a time (cdn/codec.py),
uploads every share to the coordinator (the origin), and registers the manifest and the key;
the coordinator places the shares on nodes, which fetch them in their next round trip.
"""

from __future__ import annotations

import mimetypes
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fogwheel.cdn.codec import SEGMENT_SIZE, build_manifest, encode_file, new_content_id, new_key
from fogwheel.cdn.fetch import Fetcher, FetchStats
from fogwheel.cdn.punch import NatPaths
from fogwheel.client import Blob, Client

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def publish(
    client: Client,
    path: str | os.PathLike[str],
    *,
    k: int = 4,
    n: int = 8,
    name: str | None = None,
    segment_size: int = SEGMENT_SIZE,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
    content_type: str | None = None,
) -> str:
    """Encrypt, erasure-code and upload `path`; returns its content id.

    `content_type` is the media type the coordinator serves it as (`video/mp4`); by default
    it is guessed from the file's name (`mimetypes`), application/octet-stream when no guess.
    When the fog has fewer live devices than `n`, the coordinator's warning (what that spread
    risks, what to change) goes to `on_warning`, or is raised as a `UserWarning`."""
    path = Path(path)
    kind = content_type or mimetypes.guess_type(name or path.name)[0]
    size = path.stat().st_size
    key = new_key()
    content_id = new_content_id()
    segments = []
    done = 0
    if progress:
        progress(0, size)
    for segment, shares in encode_file(
        path, key, content_id, name or path.name, k, n, segment_size
    ):
        for share in shares:
            client.put_blob(share, upload=True)
        segments.append(segment)
        done += segment.plain_len
        if progress:
            progress(done, size)
    manifest = build_manifest(
        content_id, (name or path.name)[:200], size, segment_size, k, n, segments
    )
    body: dict[str, Any] = {"manifest": manifest.to_dict(), "key": key.hex()}
    if kind:
        body["content_type"] = kind
    answer = client._request("POST", "/v1/cdn/objects", json=body).json()
    warning = answer.get("warning") if isinstance(answer, dict) else None
    if isinstance(warning, str) and warning:
        if on_warning is not None:
            on_warning(warning)
        else:
            warnings.warn(warning, UserWarning, stacklevel=2)
    return content_id


def plan(client: Client, content_id: str) -> dict[str, Any]:
    """The fetch plan: manifest, key, holders of every share, a node token."""
    return client._request("GET", f"/v1/cdn/objects/{content_id}").json()


def fetch(
    client: Client,
    content_id: str,
    out: str | os.PathLike[str],
    *,
    parallel: int = 8,
    progress: Progress | None = None,
) -> FetchStats:
    """Download the object from its holders (the origin for what they cannot give) into
    `out`, verified and decrypted; the figures go to the coordinator too."""
    the_plan = plan(client, content_id)
    sizes = {
        sha: seg["share_size"] for seg in the_plan["manifest"]["segments"] for sha in seg["shares"]
    }

    def origin(sha: str) -> bytes:
        return client.fetch(Blob(sha, sizes[sha]))

    out = Path(out)
    tmp = out.with_name(f".{out.name}.part")
    nat = NatPaths(
        client.url, client._http.headers.get("authorization", ""), content_id, client._http
    )
    with Fetcher(the_plan, origin, parallel=parallel, nat=nat) as f, open(tmp, "wb") as dst:
        total = f.manifest.size
        done = 0
        if progress:
            progress(0, total)
        for data in f.segments():
            dst.write(data)
            done += len(data)
            if progress:
                progress(done, total)
        stats = f.stats
    tmp.replace(out)
    client._request("POST", f"/v1/cdn/objects/{content_id}/fetches", json=stats.report())
    return stats


def signed_url(client: Client, content_id: str, *, expires_in: float = 3600) -> tuple[str, int]:
    """A URL of the object that needs no header, and when it stops working (unix seconds):
    for `<video src=…>`, players, curl and wget. At most 7 days; anyone who has it can read
    the object until then (docs/cdn.md, "Signed URLs")."""
    answer = client._request(
        "POST", f"/v1/cdn/objects/{content_id}/urls", json={"expires_in": int(expires_in)}
    ).json()
    return client.url + answer["path"], int(answer["expires"])


def cdn_stats(client: Client) -> dict[str, Any]:
    return client._request("GET", "/v1/cdn/stats").json()
