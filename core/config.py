"""Typed settings: config.toml for everything non-secret, the environment for secrets."""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.typed_toml import build, rule

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
EXTENSION_PLAN = "extension"  # the plan code of a checkout buying more time for a session


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=rule(min=1, max=65535))
    # Proxies whose X-Forwarded-For names the client (nginx in front); empty: none.
    trusted_proxies: list[str] = field(default_factory=list)
    # On SIGTERM: how long the drain (refuse new sockets and webhooks, finish what is under
    # way, hand back outbox claims, close widget sockets with 1012) may take before exiting.
    drain_seconds: float = field(default=10.0, metadata=rule(min=0.5, max=300))
    # Several processes on PostgreSQL: how often one that is not the Telegram/SMS sender (or
    # the Telegram poller) tries to become it; the take-over time when the holder dies.
    leader_retry_seconds: float = field(default=2.0, metadata=rule(min=0.1, max=60))


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""
    sqlite_busy_timeout_ms: int = field(default=5000, metadata=rule(min=0))
    echo: bool = False


@dataclass(frozen=True)
class TimeoutsConfig:
    unattended_after_seconds: int = field(default=300, metadata=rule(min=1))
    expire_after_seconds: int = field(default=7200, metadata=rule(min=1))
    no_show_after_seconds: int = field(default=1800, metadata=rule(min=1))
    sweep_interval_seconds: int = field(default=5, metadata=rule(min=1))


@dataclass(frozen=True)
class DispatchConfig:  # offers in waves, core.dispatch.waves: the best wave_size first, and so on
    wave_size: int = field(default=20, metadata=rule(min=1))
    wave_seconds: int = field(default=10, metadata=rule(min=1))


@dataclass(frozen=True)
class Plan:
    name: str
    price_cents: int = field(metadata=rule(min=50))
    minutes: int = field(metadata=rule(min=1))
    video: bool = False
    senior_only: bool = False
    stripe_price_id: str = ""


@dataclass(frozen=True)
class BillingConfig:
    currency: str = "usd"
    fee_bps: int = field(default=2000, metadata=rule(min=0, max=10000))
    checkout_ttl_seconds: int = field(default=3600, metadata=rule(min=1800, max=86400))


@dataclass(frozen=True)
class ExtensionsConfig:
    """More time a customer may buy near the end of a consultation."""

    minutes: int = field(default=15, metadata=rule(min=1, max=120))
    price_cents: int = field(default=999, metadata=rule(min=50))


@dataclass(frozen=True)
class InvitesConfig:
    # A mechanic's invite not used within this many days is refused.
    ttl_days: int = field(default=7, metadata=rule(min=1))


@dataclass(frozen=True)
class LinksConfig:
    """How long signed links stay good: files sent in a session, and session records."""

    file_hours: int = field(default=72, metadata=rule(min=1))
    record_days: int = field(default=365, metadata=rule(min=1))
    # How long after the end a rating may still be changed.
    rating_change_hours: int = field(default=24, metadata=rule(min=0))


@dataclass(frozen=True)
class VideoConfig:
    """LiveKit rooms of the video tiers (the server's URL and keys are secrets)."""

    # A room nobody has joined yet stays open this long (the customer's no-show window).
    empty_timeout_seconds: int = field(default=1860, metadata=rule(min=60))
    # After the last person leaves, the room waits this long for them to come back.
    departure_timeout_seconds: int = field(default=300, metadata=rule(min=10))
    # Admins who may watch a room at once (hidden, subscribe-only), besides the two people.
    max_observers: int = field(default=2, metadata=rule(min=0, max=20))
    # A LiveKit access token minted by the join page is good for joining this long.
    token_minutes: int = field(default=10, metadata=rule(min=1, max=120))
    # A join link shows "session over" this long after the end, then it is refused.
    link_grace_minutes: int = field(default=10, metadata=rule(min=0, max=1440))
    # Whatever happens, a join link is refused this long after it was sent.
    link_hours: int = field(default=6, metadata=rule(min=1, max=72))
    # Calls to LiveKit's API give up after this; the sweep tries again.
    api_timeout_seconds: float = field(default=5.0, metadata=rule(min=0.1, max=60))


@dataclass(frozen=True)
class StripeConfig:
    api_base: str = "https://api.stripe.com"


@dataclass(frozen=True)
class UploadsConfig:
    max_bytes: int = field(default=10 * 1024 * 1024, metadata=rule(min=1))
    max_files_per_intake: int = field(default=10, metadata=rule(min=0))
    # Uploads one visitor may hold that are attached to nothing yet, and how long those are
    # kept before the sweep deletes them.
    max_unattached_per_visitor: int = field(default=20, metadata=rule(min=1))
    unattached_ttl_hours: int = field(default=24, metadata=rule(min=1))
    allowed_types: list[str] = field(default_factory=lambda: [
        "image/jpeg", "image/png", "image/webp", "image/gif", "image/heic",
        "application/pdf", "video/mp4", "video/quicktime", "video/webm",
    ])


@dataclass(frozen=True)
class RateLimitsConfig:
    telegram_per_second: float = field(default=30.0, metadata=rule(min=0.01))
    telegram_per_chat_per_second: float = field(default=1.0, metadata=rule(min=0.01))
    sms_per_second: float = field(default=1.0, metadata=rule(min=0.01))
    widget_messages_per_minute: int = field(default=60, metadata=rule(min=1))
    new_visitors_per_hour: int = field(default=120, metadata=rule(min=1))
    uploads_per_hour: int = field(default=120, metadata=rule(min=1))
    invite_failures_per_hour: int = field(default=10, metadata=rule(min=1))


@dataclass(frozen=True)
class TelegramConfig:
    mode: str = field(default="polling", metadata=rule(choices=("polling", "webhook")))
    api_base: str = "https://api.telegram.org"
    bot_username: str = "AutoDoctorBot"


@dataclass(frozen=True)
class TwilioConfig:
    api_base: str = "https://api.twilio.com"


@dataclass(frozen=True)
class SmsConfig:
    # Numbers people type without a country code are read as this region's (ISO 3166 code).
    default_region: str = "US"
    # Segments one Twilio message may take; a longer text goes as several messages.
    max_segments: int = field(default=10, metadata=rule(min=1, max=10))
    # Photos go as MMS to numbers that can take them (US and Canada); else as links.
    mms: bool = True


@dataclass(frozen=True)
class WidgetConfig:
    allowed_origins: list[str] = field(default_factory=list)
    max_frame_bytes: int = field(default=65536, metadata=rule(min=256))
    max_text_chars: int = field(default=4000, metadata=rule(min=1))


@dataclass(frozen=True)
class AdminConfig:
    """The admin site (/admin): how long a login lasts, and the lockout after failures."""

    session_idle_minutes: int = field(default=30, metadata=rule(min=1, max=7 * 24 * 60))
    login_max_failures: int = field(default=5, metadata=rule(min=1))
    lockout_minutes: int = field(default=15, metadata=rule(min=1))
    trust_forwarded_for: bool = False


@dataclass(frozen=True)
class TermsConfig:
    """The service terms and safety waiver a customer accepts before the payment link. A new
    `version` asks every customer again; `text` is what the /terms page shows (paragraphs
    apart by a blank line); `url`, when set, is linked instead of that page."""

    version: str = "1"
    url: str = ""
    text: str = ""


# A terms version is stored with each acceptance, and rides in a Telegram button's payload.
TERMS_VERSION_CHARS = 32


@dataclass(frozen=True)
class Secrets:
    """Secrets read from the environment only; never written to config.toml or logs."""

    telegram_bot_token: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = ""
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    livekit_url: str = ""
    livekit_api_key: str = ""
    livekit_api_secret: str = ""
    secret_key: str = ""
    metrics_token: str = ""

    def __repr__(self) -> str:
        present = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return f"Secrets(set={present})"


@dataclass(frozen=True)
class Config:
    environment: str = field(default="development",
                             metadata=rule(choices=("development", "production")))
    # The base URL people reach the service on (links in chat). When config.toml leaves it
    # out, it follows where `serve` listens (see served_at).
    public_url: str = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    plans: dict[str, Plan] = field(default_factory=dict)
    billing: BillingConfig = field(default_factory=BillingConfig)
    extensions: ExtensionsConfig = field(default_factory=ExtensionsConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    invites: InvitesConfig = field(default_factory=InvitesConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    stripe: StripeConfig = field(default_factory=StripeConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    widget: WidgetConfig = field(default_factory=WidgetConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    terms: TermsConfig = field(default_factory=TermsConfig)
    # Not from the file: whether public_url was given, and what the environment resolves.
    public_url_given: bool = field(default=False, metadata={"env_only": True})
    data_dir: Path = field(default=Path("data"), metadata={"env_only": True})
    secrets: Secrets = field(default_factory=Secrets, metadata={"env_only": True})

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL in use (SQLite under the data dir when none is set)."""
        if self.database.url:
            return normalize_database_url(self.database.url)
        return f"sqlite+aiosqlite:///{self.data_dir / 'autodoctor.db'}"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def served_at(self, host: str, port: int) -> Config:
        """This configuration for a service listening on host:port: links follow that
        address unless public_url was set."""
        if self.public_url_given:
            return self
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in shown:
            shown = f"[{shown}]"
        return dataclasses.replace(self, public_url=f"http://{shown}:{port}")

    @property
    def terms_url(self) -> str:
        """Where the terms are read: [terms] url, or this service's /terms page."""
        return self.terms.url or f"{self.public_url.rstrip('/')}/terms"

    def plan(self, code: str) -> Plan:
        try:
            return self.plans[code]
        except KeyError:
            raise ConfigError(f"unknown plan {code!r}; known: {', '.join(self.plans)}") from None

    def product(self, code: str) -> Plan:
        """What a checkout of this plan code sells: a tier, or more time for a session."""
        if code == EXTENSION_PLAN:
            return Plan(name=f"{self.extensions.minutes} more minutes",
                        price_cents=self.extensions.price_cents,
                        minutes=self.extensions.minutes)
        return self.plan(code)

    @property
    def video_enabled(self) -> bool:
        """LiveKit is configured: the video tiers get rooms (else they run as chat)."""
        return self.channel_status()["livekit"]

    def channel_status(self) -> dict[str, bool]:
        """Which channels are on: a channel whose secrets are absent is off."""
        s = self.secrets
        return {
            "widget": True,
            "telegram": bool(s.telegram_bot_token),
            "sms": bool(s.twilio_account_sid and s.twilio_auth_token and s.twilio_from_number),
            "stripe": bool(s.stripe_secret_key),
            "livekit": bool(s.livekit_url and s.livekit_api_key and s.livekit_api_secret),
        }


def normalize_database_url(url: str) -> str:
    """Accept plain postgresql:// and sqlite:// URLs and pick the async driver."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


_ENV_SECRETS = {
    "telegram_bot_token": "TELEGRAM_BOT_TOKEN",
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_from_number": "TWILIO_FROM_NUMBER",
    "stripe_secret_key": "STRIPE_SECRET_KEY",
    "stripe_webhook_secret": "STRIPE_WEBHOOK_SECRET",
    "livekit_url": "LIVEKIT_URL",
    "livekit_api_key": "LIVEKIT_API_KEY",
    "livekit_api_secret": "LIVEKIT_API_SECRET",
    "secret_key": "AUTODOCTOR_SECRET_KEY",
    "metrics_token": "AUTODOCTOR_METRICS_TOKEN",
}


def _secret_key(environ: Mapping[str, str], data_dir: Path, environment: str) -> str:
    key = environ.get("AUTODOCTOR_SECRET_KEY", "")
    if key:
        return key
    if environment == "production":
        raise ConfigError("AUTODOCTOR_SECRET_KEY must be set when environment = \"production\"")
    # Development: one random key kept beside the database so signed links survive restarts.
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key)
    path.chmod(0o600)
    return key


def load_config(path: Path | str | None = None,
                environ: Mapping[str, str] | None = None,
                **overrides: Any) -> Config:
    """Read the TOML file, check every key and value, and merge the environment."""
    env = os.environ if environ is None else environ
    path = Path(path or env.get("AUTODOCTOR_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    config = build(Config, raw, "")
    given = bool(config.public_url)
    config = dataclasses.replace(config, public_url_given=given).served_at(
        config.server.host, config.server.port) if not given else \
        dataclasses.replace(config, public_url_given=True)
    if not config.plans:
        raise ConfigError("plans must define at least one tier, e.g. [plans.chat10]")
    version = config.terms.version
    if not version or len(version) > TERMS_VERSION_CHARS or not version.isprintable() \
            or not version.isascii() or " " in version:
        raise ConfigError(f"terms.version must be 1 to {TERMS_VERSION_CHARS} printable ASCII "
                          f"characters without spaces, got {version!r}")
    if config.terms.url and not config.terms.url.startswith(("https://", "http://")):
        raise ConfigError(f"terms.url must be an http(s) URL or empty, got {config.terms.url!r}")
    if env.get("AUTODOCTOR_DATABASE_URL"):
        config = dataclasses.replace(
            config, database=dataclasses.replace(config.database,
                                                 url=env["AUTODOCTOR_DATABASE_URL"]))
    data_dir = Path(env.get("AUTODOCTOR_DATA_DIR") or overrides.pop("data_dir", None) or "data")
    secrets_kwargs = {name: env.get(var, "") for name, var in _ENV_SECRETS.items()}
    secrets_kwargs["secret_key"] = _secret_key(env, data_dir, config.environment)
    config = dataclasses.replace(config, data_dir=data_dir, secrets=Secrets(**secrets_kwargs))
    return dataclasses.replace(config, **overrides) if overrides else config


def with_changes(config: Config, **sections: Mapping[str, Any] | Any) -> Config:
    """A copy of config with some settings changed, e.g. with_changes(c, timeouts={...})."""
    changes: dict[str, Any] = {}
    for name, value in sections.items():
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and not isinstance(current, type) \
                and isinstance(value, Mapping):
            changes[name] = dataclasses.replace(current, **value)
        else:
            changes[name] = value
    return dataclasses.replace(config, **changes)


__all__ = ["Config", "ConfigError", "Plan", "Secrets", "load_config", "normalize_database_url",
           "with_changes"]
