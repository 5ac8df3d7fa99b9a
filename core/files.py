"""Uploaded files: type sniffed from the bytes (never trusted from the client), size-limited,
stored content-addressed under the data directory."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.errors import CoreError
from core.messages import storable_text
from core.models import File


class UploadRejected(CoreError):
    """The file was refused; str() tells the person why and what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sniff_type(head: bytes) -> str | None:
    """The file's real type from its first bytes, or None when it is none we know."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "image/heic"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    return None


def blob_path(config: Config, sha256: str) -> Path:
    return config.uploads_dir / sha256[:2] / sha256[2:4] / sha256


def check_upload(config: Config, data: bytes) -> str:
    """The sniffed content type if the upload is acceptable; UploadRejected otherwise."""
    limit = config.uploads.max_bytes
    if len(data) > limit:
        raise UploadRejected("too_large", f"That file is {len(data) / 1e6:.1f} MB; the limit is "
                                          f"{limit / 1e6:.0f} MB. Please send a smaller one.")
    if not data:
        raise UploadRejected("empty", "That file is empty.")
    content_type = sniff_type(data[:32])
    if content_type is None or content_type not in config.uploads.allowed_types:
        raise UploadRejected("unsupported_type",
                             "Only photos (JPEG, PNG, WebP, GIF, HEIC), PDF files and short "
                             "videos (MP4, MOV, WebM) can be attached.")
    return content_type


async def check_quota(session: AsyncSession, config: Config, identity_id: int) -> None:
    """UploadRejected when this person already holds as many files attached to nothing as
    [uploads] max_unattached_per_visitor allows."""
    waiting = int(await session.scalar(
        select(func.count()).select_from(File).where(
            File.uploaded_by_identity_id == identity_id, File.intake_id.is_(None),
            File.consultation_id.is_(None))) or 0)
    if waiting >= config.uploads.max_unattached_per_visitor:
        raise UploadRejected("quota", "You have uploaded many files that aren't in a message "
                                      "yet; send them first, or wait a day.")


async def delete_unattached(session: AsyncSession, config: Config, now: datetime) -> int:
    """Uploads attached to nothing after [uploads] unattached_ttl_hours: their rows go, and
    their bytes on disk when no other upload has the same content. Returns how many."""
    cutoff = now - timedelta(hours=config.uploads.unattached_ttl_hours)
    gone = (await session.execute(
        delete(File).where(File.intake_id.is_(None), File.consultation_id.is_(None),
                           File.created_at < cutoff)
        .returning(File.sha256))).scalars().all()
    for sha256 in set(gone):
        still = await session.scalar(select(File.id).where(File.sha256 == sha256).limit(1))
        if still is None:
            blob_path(config, sha256).unlink(missing_ok=True)
    return len(gone)


async def store_upload(session: AsyncSession, config: Config, identity_id: int, data: bytes,
                       original_name: str | None, now: datetime) -> File:
    """Check and store one upload; the same bytes are kept once on disk."""
    content_type = check_upload(config, data)
    sha256 = hashlib.sha256(data).hexdigest()
    path = blob_path(config, sha256)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{sha256}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    name = storable_text(original_name or "")[:255] or None
    record = File(public_id="f_" + secrets.token_urlsafe(16), sha256=sha256,
                  content_type=content_type, size_bytes=len(data), original_name=name,
                  uploaded_by_identity_id=identity_id, created_at=now)
    session.add(record)
    await session.flush()
    return record
