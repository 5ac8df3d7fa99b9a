"""Join links /v/{token} and what they give (both databases): each person's own LiveKit grants
(decoded with livekit-api), clear refusals, the chat and End button beside the video, and the
observer's link."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from livekit import api

from core.clock import ManualClock
from core.config import Config
from core.errors import CoreError
from core.links import sign
from core.models import Admin
from core.runtime import Runtime
from core.video import Viewer, join_url, observer_link
from tests.core.test_consultations import Session, consultation_of, matched
from tests.rooms.test_rooms import join_links
from tests.standins.livekit_api import LiveKitStandin

MakeClient = Callable[..., Awaitable[TestClient]]


def path_of(url: str) -> str:
    return "/v/" + url.rsplit("/v/", 1)[1]


async def _links(runtime: Runtime, session: Session) -> tuple[str, str]:
    customer, = await join_links(runtime, session.customer_identity)
    mechanic, = await join_links(runtime, session.mechanic.id)
    return path_of(customer), path_of(mechanic)


async def _token(client: TestClient, path: str) -> tuple[dict[str, object], Any]:
    """The join call's answer, and its LiveKit token's claims as livekit-api decodes them."""
    response = await client.post(f"{path}/join")
    assert response.status == 200, await response.text()
    body = await response.json()
    return body, api.TokenVerifier(*_keys(client)).verify(str(body["token"]))


def _keys(client: TestClient) -> tuple[str, str]:
    from bot.app import RUNTIME

    secrets = client.server.app[RUNTIME].config.secrets
    return secrets.livekit_api_key, secrets.livekit_api_secret


async def test_each_person_gets_their_own_grants_for_this_room_only(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "video15", name="Sam Lee")
    consultation = await consultation_of(video_runtime, session.request)
    client = await make_client(video_config)
    customer_path, mechanic_path = await _links(video_runtime, session)

    body, claims = await _token(client, customer_path)
    assert body["url"] == livekit_api.url and body["room"] == consultation.room_name
    assert claims.identity == f"c{consultation.customer_id}" and claims.name == "Customer"
    video = claims.video
    assert video is not None and video.room_join and video.room == consultation.room_name
    assert video.can_publish_sources == ["camera", "microphone"]
    assert video.can_subscribe and not video.can_publish_data and not video.hidden
    assert not (video.room_create or video.room_admin or video.room_list)

    _body, claims = await _token(client, mechanic_path)
    assert claims.identity == f"m{consultation.mechanic_id}" and claims.name == "Sam"
    assert claims.video is not None and claims.video.room == consultation.room_name
    assert claims.video.can_publish_sources == ["camera", "microphone", "screen_share",
                                                "screen_share_audio"]

    async with video_runtime.readers() as s:
        watch = await observer_link(s, video_config, session.request.ref,
                                    video_runtime.clock.now())
    _body, claims = await _token(client, path_of(watch.url))
    assert claims.identity.startswith("o0-") and claims.video is not None
    assert claims.video.hidden and not claims.video.can_publish
    assert claims.video.can_subscribe and claims.video.room == consultation.room_name


async def test_the_access_token_is_short_lived(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient) -> None:
    import jwt

    session = await matched(video_runtime, "video15")
    client = await make_client(video_config)
    customer_path, _ = await _links(video_runtime, session)
    body, _claims = await _token(client, customer_path)
    raw = jwt.decode(str(body["token"]), options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 10 * 60  # [video] token_minutes


async def test_forged_expired_and_foreign_links_get_a_clear_page_and_no_room(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        clock: ManualClock) -> None:
    session = await matched(video_runtime, "video15")
    consultation = await consultation_of(video_runtime, session.request)
    client = await make_client(video_config)
    customer_path, _ = await _links(video_runtime, session)
    secret = video_config.secrets.secret_key
    later = clock.now() + timedelta(hours=1)
    refused = {
        "forged": customer_path[:-3] + ("AAA" if not customer_path.endswith("AAA") else "BBB"),
        "another person's": "/v/" + sign(secret, "v", consultation.id,
                                         f"c{consultation.customer_id + 1}", later),
        "another mechanic's": "/v/" + sign(secret, "v", consultation.id,
                                           f"m{consultation.mechanic_id + 1}", later),
        "another kind of link": "/v/" + sign(secret, "s", consultation.id,
                                             f"c{consultation.customer_id}", later),
        "no such session": "/v/" + sign(secret, "v", consultation.id + 99,
                                        f"c{consultation.customer_id}", later),
        "unknown admin": "/v/" + sign(secret, "v", consultation.id, "o77", later),
        "signed elsewhere": "/v/" + sign("another-secret", "v", consultation.id,
                                         f"c{consultation.customer_id}", later),
    }
    for what, path in refused.items():
        page = await client.get(path)
        assert page.status == 403, what
        assert "This video link can't be opened" in await page.text(), what
        assert (await client.post(f"{path}/join")).status == 403, what
        assert (await client.get(f"{path}/state")).status == 403, what
    # Past its signed limit ([video] link_hours), even with the session still waiting.
    clock.advance(hours=6, seconds=1)
    page = await client.get(customer_path)
    assert page.status == 403 and "not valid or has expired" in await page.text()


async def test_the_link_expires_with_the_session_plus_a_grace(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        clock: ManualClock) -> None:
    session = await matched(video_runtime, "video15")
    client = await make_client(video_config)
    customer_path, _ = await _links(video_runtime, session)
    await session.sam.send("end")
    page = await client.get(customer_path)  # within the grace: the page says it is over
    assert page.status == 200
    assert (await (await client.get(f"{customer_path}/state")).json())["over"] is True
    joined = await client.post(f"{customer_path}/join")
    assert joined.status == 410 and (await joined.json())["error"] == "over"
    clock.advance(minutes=11)  # [video] link_grace_minutes
    page = await client.get(customer_path)
    assert page.status == 403 and "This video session is over" in await page.text()


async def test_the_chat_beside_the_video_is_the_relayed_chat(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient) -> None:
    session = await matched(video_runtime, "video15", name="Sam Lee")
    client = await make_client(video_config)
    customer_path, mechanic_path = await _links(video_runtime, session)
    page = await client.get(customer_path)
    html = await page.text()
    assert page.status == 200 and "Standard Video" in html and "/video/livekit-client.js" in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    sent = await client.post(f"{customer_path}/messages",
                             json={"text": "Hello from the video page", "client_id": "a1"})
    assert sent.status == 200
    # Sent again (a retry after a dropped answer): relayed once.
    await client.post(f"{customer_path}/messages",
                      json={"text": "Hello from the video page", "client_id": "a1"})
    assert (await session.sam_saw()).count("Customer: Hello from the video page") == 1
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.status == "live"  # the customer's first message starts it here too
    await session.sam.send("Show me the front left wheel, please")
    state = await (await client.get(f"{mechanic_path}/state")).json()
    assert [(line["who"], line["text"], line["mine"]) for line in state["lines"]] == [
        ("Customer", "Hello from the video page", False),
        ("Sam", "Show me the front left wheel, please", True)]
    assert state["status"] == "live" and state["seconds_left"] == 45 * 60
    later = await (await client.get(
        f"{mechanic_path}/state?after={state['lines'][0]['id']}")).json()
    assert [line["text"] for line in later["lines"]] == ["Show me the front left wheel, please"]
    empty = await client.post(f"{customer_path}/messages", json={"text": "  "})
    assert empty.status == 400


async def test_the_end_button_ends_the_session_and_closes_the_room(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "video15")
    client = await make_client(video_config)
    customer_path, _ = await _links(video_runtime, session)
    await session.customer.send("Hi")
    assert (await client.post(f"{customer_path}/end")).status == 200
    consultation = await consultation_of(video_runtime, session.request)
    assert (consultation.status, consultation.end_reason) == ("completed", "customer_ended")
    assert livekit_api.rooms == {} and consultation.room_status == "closed"
    assert any("How was it?" in t for t in await session.customer_saw())


async def test_an_observer_watches_but_cannot_write_or_end(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        clock: ManualClock) -> None:
    session = await matched(video_runtime, "video15")
    async with video_runtime.sessions.begin() as s:
        admin = Admin(email="ops@example.com", password_hash="x", created_at=clock.now())
        s.add(admin)
    async with video_runtime.readers() as s:
        watch = await observer_link(s, video_config, session.request.ref, clock.now(),
                                    admin_id=admin.id)
    client = await make_client(video_config)
    path = path_of(watch.url)
    page = await client.get(path)
    assert page.status == 200 and "observing (hidden)" in await page.text()
    assert (await client.post(f"{path}/messages", json={"text": "hi"})).status == 403
    assert (await client.post(f"{path}/end")).status == 403
    assert (await consultation_of(video_runtime, session.request)).status == "waiting"


async def test_observer_links_only_for_sessions_with_a_room(
        video_runtime: Runtime, video_config: Config, clock: ManualClock) -> None:
    chat = await matched(video_runtime, "chat10", name="Ann Chat")
    async with video_runtime.readers() as s:
        with pytest.raises(CoreError, match="no video room"):
            await observer_link(s, video_config, chat.request.ref, clock.now())
        with pytest.raises(CoreError, match="no request"):
            await observer_link(s, video_config, "R-0000", clock.now())


async def test_join_url_names_one_person_and_one_consultation(video_config: Config,
                                                              clock: ManualClock) -> None:
    url = join_url(video_config, 7, Viewer("customer", 12), clock.now())
    assert url.startswith("http://127.0.0.1:8080/v/") and len(url) < 200
    assert Viewer.parse("c12") == Viewer("customer", 12)
    assert Viewer.parse("x1") is None and Viewer.parse("c") is None


async def test_an_admin_observes_from_the_session_page(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient) -> None:
    # The admin site's Observe goes to a hidden observer link of this admin's own, for the
    # room of the session under way; the opened page is an observer's.
    from admin_web.accounts import create_admin
    from tests.admin_web.conftest import EMAIL, PASSWORD, Site

    session = await matched(video_runtime, "video15")
    consultation = await consultation_of(video_runtime, session.request)
    async with video_runtime.transaction() as uow:
        admin = await create_admin(uow.session, EMAIL, PASSWORD, video_runtime.clock.now())
    site = Site(await make_client(video_config))
    assert (await site.log_in()).status == 303
    assert "Observe the video room" in await site.page(f"/admin/sessions/{consultation.id}")
    response = await site.client.get(f"/admin/sessions/{consultation.id}/observe",
                                     allow_redirects=False)
    assert response.status == 303, await response.text()
    path = path_of(response.headers["Location"])
    page = await site.client.get(path)
    assert page.status == 200 and "observing (hidden)" in await page.text()
    _, claims = await _token(site.client, path)
    assert claims.video.room == consultation.room_name and claims.video.hidden
    assert not claims.video.can_publish and claims.identity.startswith(f"o{admin.id}")
