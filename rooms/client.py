"""The LiveKit browser SDK, served by this service (no third-party CDN at run time).

`make run` / `make test` install the pinned npm package `livekit-client` into rooms/client/
with `npm ci` (which checks each tarball against the committed lockfile's integrity). Before
serving its bundle the service checks it once more against the sha256 committed beside the
lockfile, so a changed or half-installed file is never sent to a browser.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("autodoctor.rooms")

CLIENT_DIR = Path(__file__).resolve().parent / "client"
CHECKSUM_FILE = CLIENT_DIR / "livekit-client.sha256"


@dataclass(frozen=True)
class BrowserClient:
    """The bundle to serve (None with the reason when it cannot be)."""

    version: str
    body: bytes | None
    problem: str | None = None
    sha256: str = ""


def load_browser_client(client_dir: Path = CLIENT_DIR) -> BrowserClient:
    """Read and check the installed bundle once, at start-up."""
    package = json.loads((client_dir / "package.json").read_text(encoding="utf-8"))
    version = str(package["dependencies"]["livekit-client"])
    expected, relative = (client_dir / CHECKSUM_FILE.name).read_text(encoding="utf-8").split()
    path = client_dir / relative
    if not path.is_file():
        problem = f"livekit-client {version} is not installed (make run installs it: npm ci " \
                  f"in {client_dir.name}/)"
        log.warning("video: %s", problem)
        return BrowserClient(version, None, problem)
    body = path.read_bytes()
    found = hashlib.sha256(body).hexdigest()
    if found != expected:
        problem = f"livekit-client bundle sha256 {found[:12]}… is not the pinned {expected[:12]}…"
        log.error("video: %s; not serving it", problem)
        return BrowserClient(version, None, problem)
    return BrowserClient(version, body, None, found)
