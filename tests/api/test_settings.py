"""Service settings: one declaration per setting, read from DECONV_* variables when asked, never at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from api.settings import Settings, env_name, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_carries_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("DECONV_DATA_DIR", "/srv/deconv", "data_dir", Path("/srv/deconv")),
        ("DECONV_MAX_IMAGES", "5", "max_images_per_dataset", 5),
        ("DECONV_MAX_FILTERS", "7", "max_filters_per_layer", 7),
        ("DECONV_MAX_JOB_MAPS_BYTES", "4096", "max_job_maps_bytes", 4096),
        ("DECONV_RUN_JOBS", "false", "run_jobs", False),
        ("DECONV_API_KEY", "k", "api_key", "k"),
    ],
)
def test_a_variable_sets_its_field(monkeypatch, variable, value, field, expected):
    monkeypatch.setenv(variable, value)
    assert getattr(Settings(), field) == expected
    assert env_name(field) == variable


def test_an_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("DECONV_MAX_IMAGES", "5")
    assert Settings(max_images_per_dataset=9).max_images_per_dataset == 9
    assert Settings.from_env(max_images_per_dataset=None).max_images_per_dataset == 5


def test_an_empty_variable_keeps_the_default(monkeypatch):
    monkeypatch.setenv("DECONV_CHECKPOINT_EVERY", "")
    assert Settings().checkpoint_every == 5


@pytest.mark.parametrize(("variable", "value"), [("DECONV_MAX_UPLOAD_BYTES", "lots"), ("DECONV_MAX_FILTERS", "0")])
def test_a_bad_variable_is_refused_naming_it_and_its_value(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=rf"^{variable}: .*\(got '{value}'\)$"):
        Settings.from_env()


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="max_uploads"):
        Settings(max_uploads=1)


def test_no_setting_is_read_at_import():
    # a bad variable would raise if any module built settings when imported
    code = "import api.app, api.cli, api.deps, api.routes.jobs, api.routes.models"
    env = {"DECONV_MAX_UPLOAD_BYTES": "lots", "PYTHONPATH": str(ROOT), "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_deadline_variables_reach_the_runner_s_deadlines(monkeypatch):
    from workers.distributed.deadlines import Deadlines  # noqa: PLC0415

    monkeypatch.setenv("DECONV_ACTOR_START_TIMEOUT", "5")
    monkeypatch.setenv("DECONV_CALL_TIMEOUT_FLOOR", "2.5")
    assert Settings().deadlines() == Deadlines(startup=5.0, floor=2.5)
    monkeypatch.setenv("DECONV_CALL_TIMEOUT_FLOOR", "0")
    with pytest.raises(ValueError, match=r"^DECONV_CALL_TIMEOUT_FLOOR: .*\(got '0'\)$"):
        Settings.from_env()


def test_the_service_s_runner_gets_the_deadlines_of_its_settings(tmp_path):
    from api.app import create_app  # noqa: PLC0415

    settings = Settings(data_dir=tmp_path, run_jobs=False, actor_start_timeout=7, call_timeout_floor=3)
    assert create_app(settings).state.runner.deadlines == settings.deadlines()
    assert settings.deadlines().startup == 7 and settings.deadlines().floor == 3
