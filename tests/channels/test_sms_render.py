"""SMS rendering without a network: GSM-7/UCS-2 segments, splitting, choices, reply codes."""

from __future__ import annotations

from pathlib import Path

from channels.sms_inbound import e164, keyword, pick
from channels.sms_render import (
    accept_payload,
    choices,
    encoding,
    is_gsm,
    render,
    reply_code,
    segment_count,
    segments,
    smart_encode,
    split_message,
)
from core.messages import Attachment, Button, Link, Outbound

TEXTS = Path(__file__).resolve().parents[2] / "bot" / "texts" / "en.j2"


def test_gsm_texts_take_160_alone_and_153_a_part() -> None:
    assert segment_count("a" * 160) == 1
    assert [len(p) for p in segments("a" * 161)] == [153, 8]
    assert segment_count("a" * 306) == 2 and segment_count("a" * 307) == 3
    # An extension character takes two septets, and is never split from its escape.
    assert segment_count("{" * 80) == 1 and segment_count("{" * 81) == 2
    assert [len(p) for p in segments("a" * 152 + "{" + "b" * 10)] == [152, 11]
    assert encoding("Grüße? No: ß is GSM, £ too; é, ñ") == "GSM-7"


def test_any_other_character_makes_the_whole_message_ucs2() -> None:
    assert encoding("Hello ł") == "UCS-2"
    assert segment_count("ł" * 70) == 1 and [len(p) for p in segments("ł" * 71)] == [67, 4]
    # An emoji is two UTF-16 units and is never split in half.
    parts = segments("a" * 66 + "\U0001F697" + "b" * 10)
    assert [len(p) for p in parts] == [66, 11]
    assert segment_count("\U0001F697" * 35) == 1


def test_typographic_characters_are_sent_as_their_gsm_look_alikes() -> None:
    assert smart_encode("It’s “fine” – really… Quick Chat · $9.99") == \
        'It\'s "fine" - really... Quick Chat - $9.99'
    assert segment_count(smart_encode("It’s " + "a" * 150)) == 1  # not 3 UCS-2 parts
    assert smart_encode("car \U0001F697") == "car \U0001F697"  # an emoji stays


def test_every_text_we_write_is_gsm_once_look_alikes_are_replaced() -> None:
    source = TEXTS.read_text(encoding="utf-8")
    assert is_gsm(smart_encode(source).replace("\t", " "))


def test_long_texts_are_split_at_word_boundaries_within_the_segment_limit() -> None:
    words = [f"word{n:03d}" for n in range(400)]
    text = " ".join(words)
    bodies = split_message(text, 2)
    assert all(segment_count(body) <= 2 for body in bodies)
    assert " ".join(bodies).split() == words  # no word cut, none lost
    assert all(len(body) > 250 for body in bodies[:-1])  # the room is used
    assert split_message("short", 1) == ["short"]
    unbroken = "x" * 400
    assert "".join(split_message(unbroken, 1)) == unbroken


def test_buttons_become_numbered_choices() -> None:
    buttons = [Button("Confirm and pay", "confirm"), Button("Change tier", "edit:plan")]
    assert choices("Is everything right?", buttons) == \
        "1. Confirm and pay\n2. Change tier\nReply 1 or 2."
    assert choices("Skip it?", buttons[:1]) == 'Reply 1 for "Confirm and pay".'
    listed = "Which one?\n1. Quick Chat\n2. Standard Video\n3. Full Diagnostic"
    tiers = [Button(f"T{n}", f"plan:{n}") for n in range(3)]
    assert choices(listed, tiers) == "Reply 1, 2 or 3."
    stars = [Button(str(n), f"rate:7:{n}") for n in range(1, 6)]
    assert choices("How was it?", stars) == "Reply 1, 2, 3, 4 or 5."


def test_a_typed_answer_picks_by_number_or_label_only_among_the_choices() -> None:
    buttons = [Button("Yes, end it", "end:7:confirm"), Button("Keep talking", "keep:7")]
    assert pick("2", buttons) == buttons[1] and pick(" 1. ", buttons) == buttons[0]
    assert pick("keep talking!", buttons) == buttons[1]
    assert pick("3", buttons) is None and pick("84000", buttons) is None
    assert pick("it's the brakes", buttons) is None


def test_offers_carry_a_reply_code_which_reads_back_as_the_accept_payload() -> None:
    assert reply_code("accept:R-4821") == "A4821" and reply_code("plan:chat10") is None
    assert accept_payload("a4821") == "accept:R-4821"
    assert accept_payload(" A-48210 ") == "accept:R-48210"
    assert accept_payload("A48") is None and accept_payload("1HGCM82633A004352") is None
    offer = Outbound("sms", "+15550100", "New request R-4821", buttons=(
        Button("Accept", "accept:R-4821"),))
    assert render(offer, 10).bodies == ["New request R-4821\nReply A4821 to accept."]


def test_links_and_files_are_plain_urls_unless_a_photo_can_go_as_mms() -> None:
    out = Outbound("sms", "+15550100", "Sam: sent 2 files", link=Link("Pay $9.99", "https://x/p"),
                   files=(Attachment("a.png", "image/png", "https://x/f/1"),
                          Attachment("b.pdf", "application/pdf", "https://x/f/2")))
    plain = render(out, 10)
    assert plain.bodies == ["Sam: sent 2 files\nPay $9.99: https://x/p\na.png: https://x/f/1\n"
                            "b.pdf: https://x/f/2"]
    mms = render(out, 10, lambda f: f.content_type == "image/png")
    assert mms.media == ["https://x/f/1"] and "a.png" not in mms.bodies[0]


def test_numbers_are_e164_and_keywords_are_the_whole_message() -> None:
    assert e164("(555) 123-0001", "US") == "+15551230001"
    assert e164("+44 20 7946 0018", "US") == "+442079460018"
    assert e164("whatsapp:+15551230001", "US") is None and e164("TWILIO", "US") is None
    assert keyword({"Body": " Stop. "}) == "stop" and keyword({"Body": "END"}) == "stop"
    assert keyword({"Body": "end session"}) is None
    assert keyword({"Body": "cancel request"}) is None
    assert keyword({"Body": "yes"}) == "start" and keyword({"Body": "Help"}) == "help"
    assert keyword({"Body": "arret", "OptOutType": "STOP"}) == "stop"
