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

from core.config_sections import (
    TERMS_VERSION_CHARS,
    AdminConfig,
    BillingConfig,
    DatabaseConfig,
    DispatchConfig,
    ExtensionsConfig,
    InvitesConfig,
    LinksConfig,
    Plan,
    RateLimitsConfig,
    ServerConfig,
    SmsConfig,
    StripeConfig,
    TelegramConfig,
    TermsConfig,
    TimeoutsConfig,
    TwilioConfig,
    UploadsConfig,
    VideoConfig,
    WidgetConfig,
)
from core.errors import ConfigError
from core.typed_toml import build, rule

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
EXTENSION_PLAN = "extension"  # the plan code of a checkout buying more time for a session


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
