"""People's names as they give them: checked before a mechanic is shown one.

A name comes from outside (typed in a chat, or a Telegram profile) and is shown to mechanics
in chats and pages: it is cleaned, kept short, and refused when it is plainly not a name (a
VIN, a phone number, a link, a sentence)."""

from __future__ import annotations

import unicodedata

# The longest name kept (customers.display_name holds more; a first name needs no more).
MAX_NAME_CHARS = 40
_MAX_WORDS = 3
# Between the letters of a name: "Mary-Jane", "O'Neil", "Jr.", "Ann Marie".
_JOINERS = frozenset(" -'’.")
# Answers that are not names, though made of letters.
_NOT_NAMES = frozenset({
    "skip", "no", "none", "nope", "yes", "ok", "okay", "hi", "hello", "hey", "help", "start",
    "cancel", "stop", "done", "next", "name", "my name", "anonymous", "n/a", "na", "test",
    "no name", "customer", "agree", "i agree",
})

# How people start an answer to "what's your name?": the name follows.
_OPENINGS = ("my name is ", "my name's ", "i'm ", "i am ", "im ", "it's ", "its ", "this is ",
             "call me ", "name is ", "name: ")


def clean_name(raw: str | None) -> str | None:
    """The name in `raw` as shown to others (spaces collapsed, a lower-case name capitalised),
    or None when it is not plausibly a person's name."""
    if not raw:
        return None
    if any(unicodedata.category(ch).startswith("C") for ch in raw):
        return None  # control, format, unassigned or private-use characters
    name = " ".join(raw.split())
    lowered = name.casefold()
    for opening in _OPENINGS:
        if lowered.startswith(opening):
            name = name[len(opening):].strip(" ,.!")
            break
    if not name or len(name) > MAX_NAME_CHARS or len(name.split()) > _MAX_WORDS:
        return None
    if name.casefold() in _NOT_NAMES:
        return None
    if not name[0].isalpha() or not all(ch.isalpha() or ch in _JOINERS for ch in name):
        return None  # digits (a VIN, a phone number, a mileage), symbols, emoji, links
    if sum(ch.isalpha() for ch in name) < 1:
        return None
    return name.title() if name.islower() else name


def first_name_of(raw: str | None) -> str | None:
    """The first name in a full name from a channel's profile ("Alice Driver" → "Alice"), or
    None when the profile's name is not usable."""
    words = (raw or "").split()
    return clean_name(words[0]) if words else None
