"""A Telegram Bot API stand-in on 127.0.0.1 that speaks the Bot API's wire format.

Methods are served at ``/bot<token>/<method>`` (case-insensitive, as Telegram does) and take
parameters as a query string, form data (urlencoded or multipart, nested objects as JSON
strings) or a JSON body; every answer is ``{"ok": true, "result": ...}`` or the error envelope
``{"ok": false, "error_code": 429, "description": "...", "parameters": {"retry_after": 2}}``.
Files are downloaded from ``/file/bot<token>/<file_path>``. The stand-in records every call,
plays the people (messages, photos, documents, button taps become updates for getUpdates or
for a webhook), and can be told to fail the next send to a chat with a 429, 403 or 500.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

TEXT_LIMIT = 4096
CALLBACK_DATA_LIMIT = 64
DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile limit
BOT_ID = 7000000001


# Telegram's limits on one bot (flood_limits): messages per second, overall.
BOT_MESSAGES_PER_SECOND = 30

class ApiError(Exception):
    """An error answer in the Bot API's envelope."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.code,
                                "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)


def blocked() -> ApiError:
    return ApiError(403, "Forbidden: bot was blocked by the user")


def bad_request(what: str) -> ApiError:
    return ApiError(400, f"Bad Request: {what}")


@dataclass(frozen=True)
class TgUser:
    """A Telegram user; in a private chat the chat id is the user id."""

    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None

    def as_user(self) -> dict[str, Any]:
        user: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name,
                                "language_code": "en"}
        if self.last_name:
            user["last_name"] = self.last_name
        if self.username:
            user["username"] = self.username
        return user

    def as_chat(self) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": self.id, "type": "private", "first_name": self.first_name}
        if self.last_name:
            chat["last_name"] = self.last_name
        return chat


@dataclass
class Call:
    """One request the stand-in received, with its parameters decoded."""

    method: str
    params: dict[str, Any]
    at: datetime
    status: int = 200
    result: Any = None
    error: str | None = None

    @property
    def chat_id(self) -> int | None:
        raw = self.params.get("chat_id")
        return int(raw) if raw is not None else None


@dataclass
class StoredFile:
    file_id: str
    unique_id: str
    path: str
    data: bytes

    def as_file(self) -> dict[str, Any]:
        return {"file_id": self.file_id, "file_unique_id": self.unique_id,
                "file_size": len(self.data), "file_path": self.path}


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None = None


@dataclass
class _Failure:
    error: ApiError
    methods: tuple[str, ...] = ("sendmessage", "sendphoto")


class TelegramApi:
    """The Bot API for one bot token, plus the people who talk to it."""

    def __init__(self, token: str, *, username: str = "AutoDoctorBot",
                 clock: Callable[[], datetime] | None = None,
                 flood_limits: bool = False) -> None:
        self.token = token
        # Telegram's flood control, by the wall clock: more than 30 messages in any second
        # from the bot, or more than one a second to one chat, is answered 429 retry_after.
        self.flood_limits = flood_limits
        self.flood_refusals = 0
        # getUpdates calls that arrived while another was still open: two pollers of one bot
        # (Telegram answers one of them 409 Conflict; here they are counted).
        self.poll_overlaps = 0
        self._polls_open = 0
        self._sent_at: collections.deque[float] = collections.deque()
        self._chat_sent_at: dict[int, float] = {}
        self.username = username
        self.clock = clock or (lambda: datetime.now(UTC))
        self.calls: list[Call] = []
        self.webhook: Webhook | None = None
        self.answers: dict[str, str | None] = {}
        self.files: dict[str, StoredFile] = {}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.chats: dict[int, TgUser] = {}
        self._updates: list[dict[str, Any]] = []
        self._confirmed = 0
        self._update_ids = itertools.count(500_000_001)
        self._callback_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._open_queries: set[str] = set()
        self._failures: dict[int, list[_Failure]] = {}
        self._changed = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0
        self.base_url = ""
        # An outage: down (the port closed, open connections cut), or every request answered
        # with this status and an HTML page, as Telegram's front end does when the API is away.
        self.down = False
        self.outage_status: int | None = None

    # ------------------------------------------------------------------ server

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        host, self._port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{self._port}"
        return self.base_url

    async def go_down(self) -> None:
        """Connections refused (and any still open cut) until come_back()."""
        self.down = True
        assert self._site is not None
        await self._site.stop()

    async def come_back(self) -> None:
        """Listening again on the same port."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await self._site.start()
        self.down = False

    async def close(self) -> None:
        self._closing = True
        await self._notify()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _method(self, request: web.Request) -> web.Response:
        if self.down:  # a connection kept alive from before the outage: cut
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the stand-in is down")
        method = request.match_info["method"]
        params = await _params(request)
        call = Call(method=method, params=params, at=self.clock())
        self.calls.append(call)
        if self.outage_status is not None:
            call.status, call.error = self.outage_status, "outage"
            return web.Response(status=self.outage_status, content_type="text/html",
                                text="<html><body><h1>502 Bad Gateway</h1></body></html>")
        try:
            if request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            handler = self._handlers().get(method.lower())
            if handler is None:
                raise ApiError(404, "Not Found")
            call.result = await handler(params)
        except ApiError as exc:
            call.status, call.error = exc.code, exc.description
            return web.json_response(exc.body(), status=exc.code)
        await self._notify()
        return web.json_response({"ok": True, "result": call.result})

    async def _download(self, request: web.Request) -> web.Response:
        self.calls.append(Call(method="download", at=self.clock(),
                               params={"path": request.match_info["path"]}))
        if request.match_info["token"] != self.token:
            raise web.HTTPUnauthorized()
        for stored in self.files.values():
            if stored.path == request.match_info["path"]:
                return web.Response(body=stored.data,
                                    content_type="application/octet-stream")
        raise web.HTTPNotFound()

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"getme": self._get_me, "getupdates": self._get_updates,
                "setwebhook": self._set_webhook, "deletewebhook": self._delete_webhook,
                "sendmessage": self._send_message, "sendphoto": self._send_photo,
                "senddocument": self._send_document,
                "editmessagetext": self._edit_text,
                "editmessagereplymarkup": self._edit_markup,
                "answercallbackquery": self._answer, "getfile": self._get_file}

    # ------------------------------------------------------------------ methods

    async def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "AutoDoctor",
                "username": self.username, "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is "
                                "active; use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = min(float(params.get("timeout") or 0), 50.0)
        if offset > 0:
            # Telegram forgets every update below the offset: they are confirmed.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._confirmed = max(self._confirmed, offset - 1)
            await self._notify()
        deadline = time.monotonic() + timeout
        if self._polls_open:
            self.poll_overlaps += 1
        self._polls_open += 1
        try:
            async with self._changed:
                while not self._updates and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except TimeoutError:
                        break
        finally:
            self._polls_open -= 1
        return self._updates[:limit]

    async def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = params.get("url") or ""
        if not url:
            self.webhook = None
            return True
        if not url.startswith("https://"):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        allowed = params.get("allowed_updates")
        self.webhook = Webhook(url=url, secret_token=params.get("secret_token"),
                               allowed_updates=allowed)
        return True

    async def _delete_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    def _fail_if_told(self, method: str, chat_id: int) -> None:
        if self.flood_limits:
            self._flood_control(chat_id)
        pending = self._failures.get(chat_id)
        if pending and method in pending[0].methods:
            raise pending.pop(0).error

    def _flood_control(self, chat_id: int) -> None:
        now = time.monotonic()
        while self._sent_at and self._sent_at[0] <= now - 1.0:
            self._sent_at.popleft()
        last = self._chat_sent_at.get(chat_id)
        if len(self._sent_at) >= BOT_MESSAGES_PER_SECOND or (
                last is not None and now - last < 1.0):
            self.flood_refusals += 1
            raise too_many_requests(1)
        self._sent_at.append(now)
        self._chat_sent_at[chat_id] = now

    def _chat(self, params: dict[str, Any]) -> TgUser:
        try:
            chat_id = int(params["chat_id"])
        except (KeyError, TypeError, ValueError):
            raise bad_request("chat not found") from None
        user = self.chats.get(chat_id)
        if user is None:
            raise bad_request("chat not found")
        return user

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._chat(params)
        self._fail_if_told("sendmessage", user.id)
        text = str(params.get("text") or "")
        if not text.strip():
            raise bad_request("message text is empty")
        if len(text.encode("utf-16-le")) // 2 > TEXT_LIMIT:
            raise bad_request("message is too long")
        markup = _check_markup(params.get("reply_markup"))
        return self._bot_message(user, {"text": text}, markup)

    async def _send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._chat(params)
        self._fail_if_told("sendphoto", user.id)
        if not params.get("photo"):
            raise bad_request("there is no photo in the request")
        uploaded = _uploaded(params, "photo")
        stored = self._store_file(uploaded[1] if uploaded else b"\xff\xd8\xff" + b"\x00" * 32,
                                  "photos", "jpg")
        photo = [{"file_id": stored.file_id, "file_unique_id": stored.unique_id,
                  "width": 800, "height": 600, "file_size": len(stored.data)}]
        extra: dict[str, Any] = {"photo": photo}
        if params.get("caption"):
            extra["caption"] = params["caption"]
        return self._bot_message(user, extra, _check_markup(params.get("reply_markup")))

    async def _send_document(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._chat(params)
        self._fail_if_told("senddocument", user.id)
        uploaded = _uploaded(params, "document")
        if uploaded is None:
            raise bad_request("there is no document in the request")
        name, data = uploaded
        stored = self._store_file(data, "documents", "bin")
        document = {"file_id": stored.file_id, "file_unique_id": stored.unique_id,
                    "file_name": name, "file_size": len(data)}
        return self._bot_message(user, {"document": document},
                                 _check_markup(params.get("reply_markup")))

    async def _edit_text(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._editable(params)
        text = str(params.get("text") or "")
        if not text.strip():
            raise bad_request("message text is empty")
        if len(text.encode("utf-16-le")) // 2 > TEXT_LIMIT:
            raise bad_request("MESSAGE_TOO_LONG")
        markup = _check_markup(params.get("reply_markup"))
        if message.get("text") == text and message.get("reply_markup") == markup:
            raise bad_request("message is not modified: specified new message content and "
                              "reply markup are exactly the same as a current content and "
                              "reply markup of the message")
        message["text"] = text
        # Like Telegram: an edit without reply_markup removes the inline keyboard.
        _set_markup(message, markup)
        message["edit_date"] = int(self.clock().timestamp())
        return dict(message)

    async def _edit_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._editable(params)
        markup = _check_markup(params.get("reply_markup"))
        if message.get("reply_markup") == markup:
            raise bad_request("message is not modified: specified new message content and "
                              "reply markup are exactly the same as a current content and "
                              "reply markup of the message")
        _set_markup(message, markup)
        message["edit_date"] = int(self.clock().timestamp())
        return dict(message)

    def _editable(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._chat(params)
        try:
            message_id = int(params["message_id"])
        except (KeyError, TypeError, ValueError):
            raise bad_request("message identifier is not specified") from None
        message = self.messages.get((user.id, message_id))
        if message is None:
            raise bad_request("message to edit not found")
        if message.get("from", {}).get("id") != BOT_ID:
            raise bad_request("message can't be edited")
        return message

    async def _answer(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._open_queries:
            raise bad_request("query is too old and response timeout expired or query ID "
                              "is invalid")
        text = params.get("text")
        if text is not None and len(text) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self._open_queries.discard(query_id)
        self.answers[query_id] = text
        return True

    async def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        stored = self.files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > DOWNLOAD_LIMIT:
            raise bad_request("file is too big")
        return stored.as_file()

    # ------------------------------------------------------------------ helpers

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _bot_message(self, user: TgUser, content: dict[str, Any],
                     markup: dict[str, Any] | None) -> dict[str, Any]:
        message = {"message_id": self._next_message_id(user.id),
                   "from": {"id": BOT_ID, "is_bot": True, "first_name": "AutoDoctor",
                            "username": self.username},
                   "chat": user.as_chat(), "date": int(self.clock().timestamp()), **content}
        _set_markup(message, markup)
        self.messages[(user.id, message["message_id"])] = message
        return dict(message)

    def _store_file(self, data: bytes, folder: str, extension: str) -> StoredFile:
        number = next(self._file_ids)
        stored = StoredFile(file_id=f"FILE{number:06d}-{'x' * 40}", unique_id=f"U{number}",
                            path=f"{folder}/file_{number}.{extension}", data=data)
        self.files[stored.file_id] = stored
        return stored

    # ------------------------------------------------------------------ the people

    def _user_message(self, user: TgUser, content: dict[str, Any]) -> dict[str, Any]:
        self.chats[user.id] = user
        message = {"message_id": self._next_message_id(user.id), "from": user.as_user(),
                   "chat": user.as_chat(), "date": int(self.clock().timestamp()), **content}
        self.messages[(user.id, message["message_id"])] = message
        return {"update_id": next(self._update_ids), "message": message}

    def message(self, user: TgUser, text: str) -> dict[str, Any]:
        """An update: the user sent text (a /command gets its bot_command entity)."""
        content: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            length = len(text.split(" ", 1)[0])
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        return self._user_message(user, content)

    def photo(self, user: TgUser, data: bytes, caption: str | None = None) -> dict[str, Any]:
        """An update: the user sent a photo (Telegram adds a small thumbnail size)."""
        thumb = self._store_file(data[:64], "photos", "jpg")
        full = self._store_file(data, "photos", "jpg")
        sizes = [{"file_id": thumb.file_id, "file_unique_id": thumb.unique_id, "width": 90,
                  "height": 67, "file_size": len(thumb.data)},
                 {"file_id": full.file_id, "file_unique_id": full.unique_id, "width": 1280,
                  "height": 960, "file_size": len(full.data)}]
        content: dict[str, Any] = {"photo": sizes}
        if caption:
            content["caption"] = caption
        return self._user_message(user, content)

    def document(self, user: TgUser, data: bytes, file_name: str, *,
                 caption: str | None = None, mime_type: str = "application/pdf",
                 declared_size: int | None = None) -> dict[str, Any]:
        """An update: the user sent a file; declared_size is what Telegram says it weighs."""
        stored = self._store_file(data, "documents", file_name.rsplit(".", 1)[-1])
        content: dict[str, Any] = {"document": {
            "file_id": stored.file_id, "file_unique_id": stored.unique_id,
            "file_name": file_name, "mime_type": mime_type,
            "file_size": declared_size if declared_size is not None else len(data)}}
        if caption:
            content["caption"] = caption
        return self._user_message(user, content)

    def callback(self, user: TgUser, data: str, message_id: int | None = None
                 ) -> dict[str, Any]:
        """An update: the user tapped a button with this callback data on a bot message."""
        self.chats[user.id] = user
        query_id = f"{user.id}{next(self._callback_ids):08d}"
        self._open_queries.add(query_id)
        query: dict[str, Any] = {"id": query_id, "from": user.as_user(),
                                 "chat_instance": f"-{user.id}", "data": data}
        if message_id is not None:
            query["message"] = dict(self.messages[(user.id, message_id)])
        return {"update_id": next(self._update_ids), "callback_query": query}

    def tap(self, user: TgUser, label: str) -> dict[str, Any]:
        """Tap the button whose label contains `label` on the newest bot message showing it."""
        for (chat_id, message_id), message in sorted(self.messages.items(), reverse=True):
            if chat_id != user.id:
                continue
            for row in message.get("reply_markup", {}).get("inline_keyboard", []):
                for button in row:
                    if label.lower() in button["text"].lower() and "callback_data" in button:
                        return self.callback(user, button["callback_data"], message_id)
        raise AssertionError(f"no button {label!r} in chat {user.id}")

    async def inject(self, *updates: dict[str, Any]) -> None:
        """Queue updates for getUpdates, all at once (one batch for a waiting poll)."""
        self._updates.extend(updates)
        await self._notify()

    async def wait_confirmed(self, update: dict[str, Any]) -> None:
        """Until the bot confirmed the update (asked for later ones): it was handled."""
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: self._confirmed >= update["update_id"])

    def webhook_headers(self) -> dict[str, str]:
        """The headers Telegram sends with each webhook request."""
        assert self.webhook is not None, "no webhook set"
        headers = {"Content-Type": "application/json"}
        if self.webhook.secret_token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook.secret_token
        return headers

    # ------------------------------------------------------------------ what was seen

    def fail_next(self, chat_id: int, error: ApiError) -> None:
        """The next sendMessage/sendPhoto to this chat fails with `error`."""
        self._failures.setdefault(chat_id, []).append(_Failure(error))

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()
                and (chat_id is None or c.chat_id == chat_id)]

    def chat_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat as they look now (edits applied), oldest first."""
        return [m for (chat, _), m in sorted(self.messages.items())
                if chat == chat_id and m.get("from", {}).get("id") == BOT_ID]

    def texts(self, chat_id: int) -> list[str]:
        return [m.get("text", "") for m in self.chat_messages(chat_id)]


def _check_markup(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    markup = json.loads(raw) if isinstance(raw, str) else raw
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if "callback_data" in button and not (
                    0 < len(button["callback_data"].encode()) <= CALLBACK_DATA_LIMIT):
                raise bad_request("BUTTON_DATA_INVALID")
            if "url" in button and not _public_url(button["url"]):
                raise bad_request(f"inline keyboard button URL '{button['url']}' is invalid: "
                                  "Wrong HTTP URL")
    return dict(markup)


def _public_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return urlsplit(url).scheme in ("http", "https", "tg") and "." in host and not (
        host.startswith("127.") or host == "localhost" or host.startswith("10.")
        or host.startswith("192.168."))


def _set_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
    if markup and markup.get("inline_keyboard"):
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _uploaded(params: dict[str, Any], field: str) -> tuple[str, bytes] | None:
    """The file a method's field carries: uploaded with the request ("attach://name" or the
    part itself), or None."""
    uploads: dict[str, tuple[str, bytes]] = params.get("_uploads", {})
    value = params.get(field)
    if isinstance(value, str) and value.startswith("attach://"):
        return uploads.get(value[len("attach://"):])
    return uploads.get(field)


async def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        params.update(body if isinstance(body, dict) else {})
    elif request.method == "POST" and request.can_read_body:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
        # Uploaded files (multipart parts), by field name: a method's field names one as
        # "attach://<name>", as the Bot API has it.
        params["_uploads"] = {k: (v.filename, v.file.read()) for k, v in form.items()
                              if isinstance(v, web.FileField)}
    if isinstance(params.get("allowed_updates"), str):
        params["allowed_updates"] = json.loads(params["allowed_updates"])
    return params
