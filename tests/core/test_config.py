from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from tests.conftest import TEST_ENV

SHIPPED = Path(__file__).resolve().parents[2] / "config.toml"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


def test_shipped_config_has_the_three_tiers_in_cents(tmp_path: Path) -> None:
    config = load_config(SHIPPED, environ=TEST_ENV, data_dir=tmp_path)
    assert {code: (p.price_cents, p.minutes) for code, p in config.plans.items()} == {
        "chat10": (999, 30), "video15": (2999, 45), "diagnostic": (4999, 60)}
    assert config.plans["diagnostic"].senior_only
    assert config.billing.fee_bps == 2000
    assert config.timeouts.unattended_after_seconds == 300
    assert config.timeouts.expire_after_seconds == 7200
    assert config.timeouts.no_show_after_seconds == 1800


def test_environment_supplies_secrets_and_database(tmp_path: Path) -> None:
    env = {**TEST_ENV, "TELEGRAM_BOT_TOKEN": "123:abc",
           "AUTODOCTOR_DATABASE_URL": "postgresql://u@h:5432/db",
           "AUTODOCTOR_DATA_DIR": str(tmp_path / "elsewhere")}
    config = load_config(SHIPPED, environ=env)
    assert config.secrets.telegram_bot_token == "123:abc"
    assert config.database_url == "postgresql+asyncpg://u@h:5432/db"
    assert config.data_dir == tmp_path / "elsewhere"
    assert config.channel_status()["telegram"] is True
    assert config.channel_status()["sms"] is False
    assert "123:abc" not in repr(config)


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    config = load_config(SHIPPED, environ=TEST_ENV, data_dir=tmp_path)
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path / 'autodoctor.db'}"


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = write(tmp_path, SHIPPED.read_text().replace("port = 8080", "port = 9191"))
    config = load_config(environ={**TEST_ENV, "AUTODOCTOR_CONFIG": str(path)}, data_dir=tmp_path)
    assert config.server.port == 9191


@pytest.mark.parametrize(("replace", "by", "message"), [
    ("port = 8080", 'port = "eighty"', "server.port must be an integer, got 'eighty'"),
    ("port = 8080", "port = 70000", "server.port must be at most 65535"),
    ('mode = "polling"', 'mode = "push"', "telegram.mode must be one of polling, webhook"),
    ("fee_bps = 2000", "fee_bps = 2000\nfee_pct = 20",
     "unknown setting [billing] 'fee_pct'"),
    ("price_cents = 999", "price_cents = 9.99", "plans.chat10.price_cents must be an integer"),
    ("echo = false", 'echo = "no"', "database.echo must be true or false"),
    ("checkout_ttl_seconds = 3600", "checkout_ttl_seconds = 60",
     "billing.checkout_ttl_seconds must be at least 1800"),
])
def test_bad_setting_names_key_and_expectation(tmp_path: Path, replace: str, by: str,
                                               message: str) -> None:
    body = SHIPPED.read_text()
    assert replace in body
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, body.replace(replace, by, 1)), environ=TEST_ENV,
                    data_dir=tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_production_needs_a_secret_key(tmp_path: Path) -> None:
    path = write(tmp_path, SHIPPED.read_text().replace(
        'environment = "development"', 'environment = "production"'))
    with pytest.raises(ConfigError, match="AUTODOCTOR_SECRET_KEY"):
        load_config(path, environ={}, data_dir=tmp_path)


def test_development_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_config(SHIPPED, environ={}, data_dir=tmp_path).secrets.secret_key
    second = load_config(SHIPPED, environ={}, data_dir=tmp_path).secrets.secret_key
    assert len(first) >= 32 and first == second


def test_cli_reports_bad_config_in_one_line_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, SHIPPED.read_text().replace("sweep_interval_seconds = 5",
                                                       "sweep_interval_seconds = -1"))
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(path), "migrate"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AUTODOCTOR_DATA_DIR": str(tmp_path)},
        cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: timeouts.sweep_interval_seconds must be at least 1, got -1"]


def test_terms_are_configured_and_checked(tmp_path: Path) -> None:
    shipped = load_config(SHIPPED, environ=TEST_ENV, data_dir=tmp_path)
    assert shipped.terms.version and "advice, not an inspection" in shipped.terms.text
    assert shipped.terms_url == "http://127.0.0.1:8080/terms"
    plans = SHIPPED.read_text().split("[billing]")[0]
    elsewhere = load_config(write(tmp_path, plans + '[terms]\nversion = "3"\n'
                                  'url = "https://example.com/terms"\n'),
                            environ=TEST_ENV, data_dir=tmp_path)
    assert (elsewhere.terms.version, elsewhere.terms_url) == ("3", "https://example.com/terms")
    for bad in ('version = ""', 'version = "has space"', f'version = "{"x" * 33}"',
                'version = 3', 'url = "javascript:alert(1)"'):
        with pytest.raises(ConfigError, match="terms"):
            load_config(write(tmp_path, plans + f"[terms]\n{bad}\n"), environ=TEST_ENV,
                        data_dir=tmp_path)
