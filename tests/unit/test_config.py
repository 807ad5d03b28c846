"""Settings: file, environment, secret references, errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from engine.config import describe_settings, load_settings
from engine.durations import format_duration, parse_duration
from engine.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_file_values_env_overrides_and_secret_refs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_text("wk_from_file\n")
    monkeypatch.setenv("SHOP_SECRET", "s3cret")
    monkeypatch.setenv("NUDGE_SERVER__PORT", "9123")
    path = write(
        tmp_path,
        f"""
server: {{host: 0.0.0.0, port: 8000}}
write_keys: [{{source: web, key: "$file:{tmp_path}/key"}}, "plain"]
shopify: {{secret: "$env:SHOP_SECRET"}}
processing: {{interval: 500ms, abandoned_after: 2h}}
""",
    )
    settings = load_settings(path)
    assert settings.server.port == 9123
    assert settings.server.host == "0.0.0.0"
    assert settings.write_keys[0].key.get_secret_value() == "wk_from_file"
    assert settings.write_keys[1].source == "default"
    assert settings.shopify.secret is not None
    assert settings.shopify.secret.get_secret_value() == "s3cret"
    assert settings.processing.interval == timedelta(milliseconds=500)
    assert settings.processing.abandoned_after == timedelta(hours=2)


def test_printed_settings_mask_secrets_and_carry_help(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "write_keys: [wk_visible]\nadmin_token: adm_x\n"))
    rows = {key: (value, help_text) for key, value, help_text in describe_settings(settings)}
    assert "wk_visible" not in repr(rows)
    assert "adm_x" not in repr(rows)
    assert rows["admin_token"][0] == "********"
    assert rows["server.port"] == ("8000", "Port the HTTP server listens on.")
    assert all(help_text for _, help_text in rows.values())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server: {port: many}", "server.port"),
        ("unknown_key: 1", "unknown_key"),
        ("default_timezone: Mars/Olympus", "default_timezone"),
        ("admin_token: $env:NUDGE_TEST_SURELY_UNSET", "NUDGE_TEST_SURELY_UNSET"),
        ("[1, 2", "not valid YAML"),
        ("- a\n- b", "mapping"),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert needle in info.value.message
    assert "config.yaml" in info.value.message


def test_durations_parse_and_format() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("1w") == timedelta(weeks=1)
    assert format_duration(timedelta(hours=48)) == "2d"
    assert format_duration(timedelta(seconds=90)) == "90s"
    for bad in ("1y", "soon", "-1h", True):
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]
