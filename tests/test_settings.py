"""Settings come from the environment, strictly, with safe defaults."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

CHECK = "import django; django.setup(); from django.conf import settings as s; print(s.DEBUG, s.EMBEDDED, s.DATABASES['default']['ENGINE'])"


def load_settings(tmp_path, check: str = CHECK, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    clean.update({"DJANGO_SETTINGS_MODULE": "flowsite.settings", "FLOWSITE_DATA_DIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=clean, capture_output=True, text=True)


def test_with_nothing_set_it_runs_embedded_on_sqlite_with_a_generated_key(tmp_path):
    result = load_settings(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "django.db.backends.sqlite3"]
    key_file = tmp_path / "secret_key"
    assert len(key_file.read_text()) >= 50
    assert oct(key_file.stat().st_mode)[-3:] == "600"


def test_service_mode_refuses_to_start_without_a_secret_key(tmp_path):
    result = load_settings(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1/x", REDIS_URL="redis://127.0.0.1")

    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in result.stderr


def test_service_mode_reads_the_secret_from_a_file(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("from-a-file-0123456789")
    result = load_settings(
        tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1/x", REDIS_URL="redis://127.0.0.1", SECRET_KEY_FILE=str(secret)
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "django.db.backends.postgresql"]


def test_a_boolean_that_is_not_true_or_false_is_an_error(tmp_path):
    result = load_settings(tmp_path, DEBUG="yes")

    assert result.returncode != 0
    assert "DEBUG must be True or False, got 'yes'" in result.stderr


def test_a_limit_that_is_not_a_number_is_an_error(tmp_path):
    result = load_settings(tmp_path, FLOWSITE_MAX_FLOW_JOBS="lots")

    assert result.returncode != 0
    assert "FLOWSITE_MAX_FLOW_JOBS must be an integer, got 'lots'" in result.stderr


def test_a_token_lifetime_of_zero_hours_means_tokens_never_expire(tmp_path):
    check = "import django; django.setup(); from knox.settings import knox_settings as k; print(k.TOKEN_TTL)"

    never = load_settings(tmp_path, check=check, FLOWSITE_TOKEN_TTL_HOURS="0")
    day = load_settings(tmp_path, check=check, FLOWSITE_TOKEN_TTL_HOURS="24")

    assert (never.returncode, never.stdout.strip()) == (0, "None"), never.stderr
    assert (day.returncode, day.stdout.strip()) == (0, "1 day, 0:00:00"), day.stderr


def test_a_json_depth_limit_below_what_the_deepest_flow_needs_is_an_error(tmp_path):
    result = load_settings(tmp_path, FLOWSITE_MAX_FLOW_DEPTH="100", FLOWSITE_MAX_JSON_DEPTH="150")

    assert result.returncode != 0
    assert "FLOWSITE_MAX_JSON_DEPTH must be at least twice FLOWSITE_MAX_FLOW_DEPTH plus 2" in result.stderr


def test_a_duration_limit_a_datetime_cannot_hold_is_an_error(tmp_path):
    result = load_settings(tmp_path, FLOWSITE_MAX_DURATION_MS=str(10**20))

    assert result.returncode != 0
    assert "FLOWSITE_MAX_DURATION_MS must be at most ten years" in result.stderr


def test_throttles_trust_no_proxy_unless_num_proxies_is_set(tmp_path):
    check = "import django; django.setup(); from rest_framework.settings import api_settings as a; print(a.NUM_PROXIES)"

    default = load_settings(tmp_path, check=check)
    one = load_settings(tmp_path, check=check, NUM_PROXIES="1")
    junk = load_settings(tmp_path, check=check, NUM_PROXIES="-1")

    assert (default.returncode, default.stdout.strip()) == (0, "0"), default.stderr  # REMOTE_ADDR, not X-Forwarded-For
    assert (one.returncode, one.stdout.strip()) == (0, "1"), one.stderr
    assert junk.returncode != 0 and "NUM_PROXIES must be at least 0, got -1" in junk.stderr


def test_the_example_handlers_are_on_in_embedded_mode_and_opt_in_in_service_mode(tmp_path):
    check = (
        "import django; django.setup(); from jobs.registry import autodiscover_handlers, get_handler;"
        "autodiscover_handlers(); print(get_handler('download-video') is not None)"
    )
    service = {"DATABASE_URL": "postgres://postgres@127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1", "SECRET_KEY": "k"}

    embedded = load_settings(tmp_path, check=check, FLOWSITE_EXAMPLES="")
    service_default = load_settings(tmp_path, check=check, FLOWSITE_EXAMPLES="", **service)
    service_on = load_settings(tmp_path, check=check, FLOWSITE_EXAMPLES="1", **service)
    embedded_off = load_settings(tmp_path, check=check, FLOWSITE_EXAMPLES="False")

    assert [r.stdout.strip() for r in (embedded, service_default, service_on, embedded_off)] == [
        "True", "False", "True", "False"], [r.stderr for r in (embedded, service_default, service_on, embedded_off)]


def test_a_default_job_timeout_over_the_maximum_is_an_error(tmp_path):
    result = load_settings(tmp_path, FLOWSITE_DEFAULT_JOB_TIMEOUT="7200", FLOWSITE_MAX_JOB_TIMEOUT="3600")

    assert result.returncode != 0
    assert "FLOWSITE_DEFAULT_JOB_TIMEOUT must be at most FLOWSITE_MAX_JOB_TIMEOUT" in result.stderr


def test_webhook_settings_have_defaults_and_refuse_junk(tmp_path):
    check = ("import django; django.setup(); from django.conf import settings as s; "
             "print(s.FLOWSITE_WEBHOOK_CONNECT_TIMEOUT, s.FLOWSITE_WEBHOOK_READ_TIMEOUT, s.FLOWSITE_WEBHOOK_RETRY_DELAYS, "
             "s.FLOWSITE_WEBHOOK_MAX_PENDING, s.FLOWSITE_WEBHOOK_ALLOW_PRIVATE)")

    defaults = load_settings(tmp_path, check, FLOWSITE_WEBHOOK_ALLOW_PRIVATE="")
    junk = load_settings(tmp_path, check, FLOWSITE_WEBHOOK_RETRY_DELAYS="5,soon")
    negative = load_settings(tmp_path, check, FLOWSITE_WEBHOOK_RETRY_DELAYS="5,-1")
    allowed = load_settings(tmp_path, check, FLOWSITE_WEBHOOK_ALLOW_PRIVATE="1", FLOWSITE_WEBHOOK_READ_TIMEOUT="2")

    assert defaults.returncode == 0, defaults.stderr
    assert defaults.stdout.strip() == "3 10 [5, 30, 120, 600, 2700] 10000 False"
    assert junk.returncode != 0 and "FLOWSITE_WEBHOOK_RETRY_DELAYS must be comma-separated integers" in junk.stderr
    assert negative.returncode != 0 and "must not be negative" in negative.stderr
    assert allowed.stdout.split()[1] == "2" and allowed.stdout.split()[-1] == "True"
