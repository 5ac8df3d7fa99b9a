"""The LiveKit browser SDK is served only as the pinned, checked bundle."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from rooms.client import CHECKSUM_FILE, CLIENT_DIR, load_browser_client


def test_the_installed_bundle_is_the_pinned_version_and_checksum() -> None:
    client = load_browser_client()
    assert client.problem is None and client.body is not None
    package = json.loads((CLIENT_DIR / "package.json").read_text())
    lock = json.loads((CLIENT_DIR / "package-lock.json").read_text())
    pinned = package["dependencies"]["livekit-client"]
    assert client.version == pinned and pinned[0].isdigit()  # an exact version, no range
    locked = lock["packages"]["node_modules/livekit-client"]
    assert locked["version"] == pinned and locked["integrity"].startswith("sha512-")
    assert hashlib.sha256(client.body).hexdigest() == CHECKSUM_FILE.read_text().split()[0]


def _copy_client(tmp_path: Path) -> Path:
    folder = tmp_path / "client"
    folder.mkdir()
    for name in ("package.json", "package-lock.json", CHECKSUM_FILE.name):
        shutil.copy(CLIENT_DIR / name, folder / name)
    return folder


def test_a_bundle_that_is_not_the_pinned_one_is_not_served(tmp_path: Path) -> None:
    folder = _copy_client(tmp_path)
    bundle = folder / "node_modules/livekit-client/dist/livekit-client.umd.js"
    bundle.parent.mkdir(parents=True)
    bundle.write_text("window.LivekitClient = {}; /* not the real one */")
    client = load_browser_client(folder)
    assert client.body is None and client.problem is not None
    assert "is not the pinned" in client.problem


def test_a_missing_bundle_says_how_to_install_it(tmp_path: Path) -> None:
    client = load_browser_client(_copy_client(tmp_path))
    assert client.body is None and client.problem is not None
    assert "make run installs it" in client.problem
