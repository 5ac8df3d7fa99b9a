from __future__ import annotations

from typing import Any

import pytest

from bot.app import create_app
from core.config import Config
from core.db import create_engine


async def test_healthz_reports_database_ok(make_client: Any, config: Config) -> None:
    client = await make_client(config)
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "db": "ok"}


async def test_healthz_is_503_when_database_is_down(aiohttp_client: Any,
                                                    config: Config) -> None:
    # Nothing listens on port 1: the database is unreachable.
    dead = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        client = await aiohttp_client(create_app(config, engine=dead))
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert (await resp.json())["db"] == "down"
    finally:
        await dead.dispose()


async def test_metrics_in_prometheus_text_format(make_client: Any, config: Config) -> None:
    client = await make_client(config)
    await client.get("/healthz")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    body = await resp.text()
    assert 'autodoctor_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' \
        in body
    assert "autodoctor_db_up 1.0" in body


def test_unknown_override_is_refused(config: Config) -> None:
    with pytest.raises(TypeError, match="telegarm"):
        create_app(config, telegarm=object())


async def test_running_app_sweeps_on_its_schedule(make_client: Any, config: Config,
                                                  runtime: Any, clock: Any) -> None:
    import asyncio

    from core.config import with_changes
    from tests.core.test_dispatch import status_of
    from tests.factories import paid_request

    config = with_changes(config, timeouts={"sweep_interval_seconds": 1})
    await make_client(config, background=True)
    request = await paid_request(runtime)
    clock.advance(301)
    for _ in range(100):
        if (await status_of(runtime, request))[0] == "unattended":
            break
        await asyncio.sleep(0.1)
    assert (await status_of(runtime, request))[0] == "unattended"


async def test_favicon_is_served_with_caching_headers(make_client: Any, config: Config) -> None:
    client = await make_client(config)

    icon = await client.get("/favicon.ico")
    assert icon.status == 200
    assert icon.headers["Content-Type"].startswith("image/")
    assert (await icon.read()).startswith(b"\x00\x00\x01\x00")  # an ICO file's header
    assert "max-age=604800" in icon.headers["Cache-Control"]
    assert icon.headers["Cache-Control"].startswith("public")
    again = await client.get("/favicon.ico", headers={"If-None-Match": icon.headers["ETag"]})
    assert again.status == 304

    svg = await client.get("/favicon.svg")
    assert svg.status == 200
    assert svg.headers["Content-Type"] == "image/svg+xml"
    assert (await svg.text()).startswith("<svg")
    assert "max-age=604800" in svg.headers["Cache-Control"]


async def test_pages_name_the_icon(make_client: Any, config: Config) -> None:
    client = await make_client(config)
    for path in ("/", "/admin/login", "/pay/co_nosuchref0123"):
        page = await (await client.get(path)).text()
        assert '<link rel="icon" href="/favicon.svg" type="image/svg+xml">' in page, path
