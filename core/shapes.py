"""The shapes of the ids and codes people send back to us: anything else is refused at the
edge, before it reaches a query (PostgreSQL rejects a NUL in text, for one)."""

from __future__ import annotations

import re

# An uploaded file's public id (core.files: "f_" + 16 random bytes, base64url).
FILE_ID = re.compile(r"f_[A-Za-z0-9_-]{8,40}")
# A checkout's reference (core.payments.new_checkout_ref: "co_" + 18 bytes, base64url).
CHECKOUT_REF = re.compile(r"co_[A-Za-z0-9_-]{10,40}")
# A paid request's reference, as people type it: R-4821.
REQUEST_REF = re.compile(r"R-\d{4,7}")
# A mechanic's invite code (core.mechanics).
INVITE_CODE = re.compile(r"[A-Za-z0-9]{4,32}")
# A widget visitor's token (channels.web.frames: random bytes and our signature, base64url).
VISITOR_TOKEN = re.compile(r"[A-Za-z0-9_.-]{16,128}")
# A widget client's own id for a frame (its acknowledgement names it).
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def fits(shape: re.Pattern[str], value: object) -> bool:
    """Whether value is a string of exactly this shape."""
    return isinstance(value, str) and shape.fullmatch(value) is not None
