"""Free text at a button step: "2", "video" or "standard" pick the same button as a tap.

SMS has no buttons, so every choice must be reachable by typing (Botpress's
TwilioChoicesRenderer does the same with numbered lists).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.messages import Button

_WORD = re.compile(r"[a-z0-9$.]+")


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower().replace("/", " ")))


def match_choice(text: str, buttons: Sequence[Button]) -> Button | None:
    """The button the text means, or None when it matches none or more than one."""
    for button in buttons:
        if text.strip() == button.payload:
            return button
    said = _norm(text)
    if not said:
        return None
    if said.isdigit():
        index = int(said) - 1
        return buttons[index] if 0 <= index < len(buttons) else None
    for button in buttons:
        if said in (_norm(button.label), button.payload.lower().split(":")[-1]):
            return button
    words = set(said.split())
    hits = [b for b in buttons if words <= set(_norm(b.label).split())]
    return hits[0] if len(hits) == 1 else None
