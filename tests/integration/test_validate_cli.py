"""``nudge validate`` as a subprocess: exit codes, ``file:line:column: message``, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The subprocess reads no NUDGE_* settings from the caller's environment.
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}

GOOD = """
id: good
trigger:
  event: Checkout Started
  key: event.properties.cart_id
if: event.properties.value >= 20
steps:
  - wait: 1h
    channel: email
    template: t
"""

TYPO = """
id: typo
trigger:
  event: X
if: customer.stats.ordres > 1
channel: email
template: t
"""

MISSING_TEMPLATE = """
id: missing
trigger: {event: X}
channel: push
template: nowhere
"""


def validate(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "validate", *map(str, args)],
        cwd=cwd,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def project(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    rules_dir, templates_dir = tmp_path / "rules", tmp_path / "templates"
    rules_dir.mkdir(parents=True)
    templates_dir.mkdir()
    # A valid email template: a subject, and an html or text body (validate loads templates).
    (templates_dir / "t.email.j2").write_text(
        "{% block subject %}hi{% endblock %}\n{% block text %}hi{% endblock %}\n"
    )
    for name, text in files.items():
        (rules_dir / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return rules_dir, templates_dir


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_the_sample_rules_validate_with_exit_code_0(tmp_path: Path) -> None:
    result = validate(ROOT / "rules", "--templates", ROOT / "templates", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rule(s) valid, 0 error(s), 0 warning(s)" in result.stdout


def test_a_good_folder_exits_0_and_a_broken_one_exits_1(tmp_path: Path) -> None:
    good_rules, templates = project(tmp_path / "good", {"good.yaml": GOOD})
    bad_rules, _ = project(tmp_path / "bad", {"good.yaml": GOOD, "typo.yaml": TYPO})

    assert validate(good_rules, "--templates", templates, cwd=tmp_path).returncode == 0
    assert validate(bad_rules, "--templates", templates, cwd=tmp_path).returncode == 1


def test_each_error_is_printed_as_file_line_column_message(tmp_path: Path) -> None:
    rules_dir, templates = project(
        tmp_path,
        {"good.yaml": GOOD, "typo.yaml": TYPO, "missing.yaml": MISSING_TEMPLATE},
    )

    result = validate(rules_dir, "--templates", templates, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{rules_dir / 'missing.yaml'}:4:11: template 'nowhere' not found: expected "
        f"{templates / 'nowhere.push.j2'}",
        f"{rules_dir / 'typo.yaml'}:4:5: if: unknown name 'customer.stats.ordres' "
        "(did you mean 'orders'?)",
    ]
    assert "1 rule(s) valid, 2 error(s), 0 warning(s)" in result.stderr


def test_a_warning_alone_does_not_fail_validation(tmp_path: Path) -> None:
    rules_dir, templates = project(tmp_path, {"good.yaml": GOOD, "empty.yaml": ""})

    result = validate(rules_dir, "--templates", templates, cwd=tmp_path)

    assert result.returncode == 0
    assert f"{rules_dir / 'empty.yaml'}:1:1: warning: the file is empty" in result.stdout
    assert "1 rule(s) valid, 0 error(s), 1 warning(s)" in result.stdout


def test_json_output_lists_rules_and_problems_with_their_places(tmp_path: Path) -> None:
    rules_dir, templates = project(tmp_path, {"good.yaml": GOOD, "typo.yaml": TYPO})

    result = validate(rules_dir, "--templates", templates, "--format", "json", cwd=tmp_path)

    assert result.returncode == 1
    report = as_json(result)
    assert set(report) == {"ok", "rules", "problems"}
    assert report["ok"] is False
    assert report["rules"] == ["good"]
    assert report["problems"] == [
        {
            "file": str(rules_dir / "typo.yaml"),
            "line": 4,
            "column": 5,
            "severity": "error",
            "message": "if: unknown name 'customer.stats.ordres' (did you mean 'orders'?)",
            "rule": "typo",
        }
    ]


def test_json_output_for_good_rules_is_ok(tmp_path: Path) -> None:
    rules_dir, templates = project(tmp_path, {"good.yaml": GOOD})

    result = validate(rules_dir, "--templates", templates, "--format", "json", cwd=tmp_path)

    assert result.returncode == 0
    assert as_json(result) == {"ok": True, "rules": ["good"], "problems": []}


def test_a_single_rule_file_can_be_validated(tmp_path: Path) -> None:
    rules_dir, templates = project(tmp_path, {"good.yaml": GOOD, "typo.yaml": TYPO})

    good = validate(
        rules_dir / "good.yaml", "--templates", templates, "--format", "json", cwd=tmp_path
    )
    bad = validate(rules_dir / "typo.yaml", "--templates", templates, cwd=tmp_path)

    assert good.returncode == 0
    assert as_json(good)["rules"] == ["good"]  # only that file, not its neighbours
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"{rules_dir / 'typo.yaml'}:4:5: ")


def test_a_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = validate(tmp_path / "nowhere", "--templates", tmp_path, cwd=tmp_path)

    assert result.returncode == 2
    assert "neither a file nor a folder" in result.stdout + result.stderr
