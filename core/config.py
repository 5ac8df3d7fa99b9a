"""Typed settings: config.toml for everything non-secret, the environment for secrets."""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def _rule(*, min: float | None = None, max: float | None = None,
          choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"min": min, "max": max, "choices": choices}


# The plan code of a checkout that buys more time for a consultation under way.
EXTENSION_PLAN = "extension"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_rule(min=1, max=65535))


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""
    sqlite_busy_timeout_ms: int = field(default=5000, metadata=_rule(min=0))
    echo: bool = False


@dataclass(frozen=True)
class TimeoutsConfig:
    unattended_after_seconds: int = field(default=300, metadata=_rule(min=1))
    expire_after_seconds: int = field(default=7200, metadata=_rule(min=1))
    no_show_after_seconds: int = field(default=1800, metadata=_rule(min=1))
    sweep_interval_seconds: int = field(default=5, metadata=_rule(min=1))


@dataclass(frozen=True)
class Plan:
    name: str
    price_cents: int = field(metadata=_rule(min=50))
    minutes: int = field(metadata=_rule(min=1))
    video: bool = False
    senior_only: bool = False
    stripe_price_id: str = ""


@dataclass(frozen=True)
class BillingConfig:
    currency: str = "usd"
    fee_bps: int = field(default=2000, metadata=_rule(min=0, max=10000))
    checkout_ttl_seconds: int = field(default=3600, metadata=_rule(min=1800, max=86400))


@dataclass(frozen=True)
class ExtensionsConfig:
    """More time a customer may buy near the end of a consultation."""

    minutes: int = field(default=15, metadata=_rule(min=1, max=120))
    price_cents: int = field(default=999, metadata=_rule(min=50))


@dataclass(frozen=True)
class LinksConfig:
    """How long signed links stay good: files sent in a session, and session records."""

    file_hours: int = field(default=72, metadata=_rule(min=1))
    record_days: int = field(default=365, metadata=_rule(min=1))
    # How long after the end a rating may still be changed.
    rating_change_hours: int = field(default=24, metadata=_rule(min=0))


@dataclass(frozen=True)
class StripeConfig:
    api_base: str = "https://api.stripe.com"


@dataclass(frozen=True)
class UploadsConfig:
    max_bytes: int = field(default=10 * 1024 * 1024, metadata=_rule(min=1))
    max_files_per_intake: int = field(default=10, metadata=_rule(min=0))
    allowed_types: list[str] = field(default_factory=lambda: [
        "image/jpeg", "image/png", "image/webp", "image/gif", "image/heic",
        "application/pdf", "video/mp4", "video/quicktime", "video/webm",
    ])


@dataclass(frozen=True)
class RateLimitsConfig:
    telegram_per_second: float = field(default=30.0, metadata=_rule(min=0.01))
    telegram_per_chat_per_second: float = field(default=1.0, metadata=_rule(min=0.01))
    sms_per_second: float = field(default=1.0, metadata=_rule(min=0.01))
    widget_messages_per_minute: int = field(default=60, metadata=_rule(min=1))


@dataclass(frozen=True)
class TelegramConfig:
    mode: str = field(default="polling", metadata=_rule(choices=("polling", "webhook")))
    api_base: str = "https://api.telegram.org"
    bot_username: str = "AutoDoctorBot"


@dataclass(frozen=True)
class TwilioConfig:
    api_base: str = "https://api.twilio.com"


@dataclass(frozen=True)
class WidgetConfig:
    allowed_origins: list[str] = field(default_factory=list)
    max_frame_bytes: int = field(default=65536, metadata=_rule(min=256))
    max_text_chars: int = field(default=4000, metadata=_rule(min=1))


@dataclass(frozen=True)
class AdminConfig:
    """The admin site (/admin): how long a login lasts, and the lockout after failures."""

    session_idle_minutes: int = field(default=30, metadata=_rule(min=1, max=7 * 24 * 60))
    login_max_failures: int = field(default=5, metadata=_rule(min=1))
    lockout_minutes: int = field(default=15, metadata=_rule(min=1))
    trust_forwarded_for: bool = False


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

    def __repr__(self) -> str:
        present = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return f"Secrets(set={present})"


@dataclass(frozen=True)
class Config:
    environment: str = field(default="development",
                             metadata=_rule(choices=("development", "production")))
    public_url: str = "http://127.0.0.1:8080"
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    plans: dict[str, Plan] = field(default_factory=dict)
    billing: BillingConfig = field(default_factory=BillingConfig)
    extensions: ExtensionsConfig = field(default_factory=ExtensionsConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    stripe: StripeConfig = field(default_factory=StripeConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    widget: WidgetConfig = field(default_factory=WidgetConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    # Not from the file: resolved from the environment.
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
}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table, got {value!r}")
        return _build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        _, vtype = typing.get_args(tp)
        return {k: _convert(v, vtype, f"{key}.{k}", {}) for k, v in value.items()}
    if origin is list:
        (itype,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(isinstance(v, itype) for v in value):
            raise ConfigError(f"{key} must be {_describe(tp)}, got {value!r}")
        return list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is not bool and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key} must be {_describe(tp)}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key} must be at least {meta['min']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key} must be at most {meta['max']}, got {value!r}")
    return value


if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _build(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("env_only")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"unknown setting {where}{unknown[0]!r}; "
                          f"known settings: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], key, f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key} is required ({_describe(hints[name])})")
    return cls(**kwargs)


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
    config = _build(Config, raw, "")
    if not config.plans:
        raise ConfigError("plans must define at least one tier, e.g. [plans.chat10]")
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
