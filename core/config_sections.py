"""The settings' sections, one frozen dataclass each, as config.toml's tables name them
(core.config builds Config from them and checks each field's rule)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.typed_toml import rule


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

    def provider_rates(self) -> dict[str, float]:
        """Messages a second of each channel whose provider limits the whole deployment (per
        bot, per sending number), not each process: one process at a time sends these."""
        return {"telegram": self.telegram_per_second, "sms": self.sms_per_second}


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
