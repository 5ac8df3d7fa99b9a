"""The widget's scripts (/widget.js, /console.js): gzip-compressed for clients that accept it,
with an ETag, so an embedding site's visitors fetch them once and then only revalidate."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

# Served under a fixed name (embedding sites do not change their tag), so caches keep a copy
# for a while and then ask again; an unchanged script costs a 304.
CACHE_CONTROL = "public, max-age=300, must-revalidate"


@dataclass(frozen=True)
class _Body:
    mtime_ns: int
    raw: bytes
    gzipped: bytes
    etag: str


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (not when it says gzip;q=0)."""
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() not in ("gzip", "*"):
            continue
        quality = params.strip()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


class Script:
    """One JavaScript file, read again when it changes on disk (a deploy, an edit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._body: _Body | None = None

    def body(self) -> _Body:
        mtime = self.path.stat().st_mtime_ns
        if self._body is None or self._body.mtime_ns != mtime:
            raw = self.path.read_bytes()
            self._body = _Body(mtime, raw, gzip.compress(raw, compresslevel=9, mtime=0),
                               '"' + hashlib.sha256(raw).hexdigest()[:32] + '"')
        return self._body

    async def handle(self, request: web.Request) -> web.Response:
        body = self.body()
        zipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        # One ETag per representation: a cache never answers a gzip request with plain bytes.
        etag = body.etag[:-1] + '-gz"' if zipped else body.etag
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag, "Vary": "Accept-Encoding",
                   "X-Content-Type-Options": "nosniff"}
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers=headers)
        if zipped:
            headers["Content-Encoding"] = "gzip"
        response = web.Response(body=body.gzipped if zipped else body.raw, headers=headers,
                                content_type="application/javascript", charset="utf-8")
        return response
