"""Settings: values that would break the farm are refused at start-up, naming the variable; typos are warned."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError, unknown_variables


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ODM_FARM_LEASE_SECONDS", "0"),
        ("ODM_FARM_HEARTBEAT_SECONDS", "0"),
        ("ODM_FARM_WORKER_TTL", "0"),
        ("ODM_FARM_HEARTBEAT_SECONDS", "45"),  # longer than the default 30 s lease and worker TTL
        ("ODM_FARM_WEBHOOK_RETRIES", "0"),
        ("ODM_FARM_CLEANUP_MINUTES", "-1"),
        ("ODM_FARM_MAX_UPLOAD_MB", "-5"),
        ("ODM_FARM_ZIP_MAX_BYTES", "-1"),
        ("ODM_FARM_PORT", "0"),
        ("ODM_FARM_PORT", "70000"),
        ("ODM_FARM_PROGRESS_PORT", "-1"),
        ("ODM_FARM_BLOCKED_NETWORKS", "169.254.0.0/16,not-a-network"),
        ("ODM_FARM_BLOCKED_NETWORKS", "10.0.0.0/33"),
        ("ODM_FARM_WORKER_QUEUES", "cpu,gpus"),
        ("ODM_FARM_PUBLIC_URL", "farm.example.com:3000"),
        ("ODM_FARM_REDIS_URL", "127.0.0.1:6379"),
        ("ODM_FARM_LOG_FORMAT", "xml"),
    ],
)
def test_a_value_that_breaks_the_farm_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_heartbeat_must_be_shorter_than_lease_and_ttl() -> None:
    with pytest.raises(SettingsError, match="ODM_FARM_HEARTBEAT_SECONDS.*ODM_FARM_LEASE_SECONDS"):
        Settings.from_env({"ODM_FARM_LEASE_SECONDS": "5"})  # the default 10 s heartbeat is longer
    with pytest.raises(SettingsError, match="ODM_FARM_HEARTBEAT_SECONDS.*ODM_FARM_WORKER_TTL"):
        Settings.from_env({"ODM_FARM_HEARTBEAT_SECONDS": "5", "ODM_FARM_WORKER_TTL": "4"})
    ok = Settings.from_env({"ODM_FARM_LEASE_SECONDS": "5", "ODM_FARM_HEARTBEAT_SECONDS": "1"})
    assert ok.lease_seconds == 5 and ok.heartbeat_seconds == 1


def test_accounts_need_the_node_token() -> None:
    with pytest.raises(SettingsError, match="ODM_FARM_ACCOUNTS=True: needs ODM_FARM_TOKEN"):
        Settings.from_env({"ODM_FARM_ACCOUNTS": "true"})
    with pytest.raises(SettingsError, match="ODM_FARM_TOKEN_HOURS"):
        Settings.from_env({"ODM_FARM_TOKEN_HOURS": "0"})
    ok = Settings.from_env({"ODM_FARM_ACCOUNTS": "true", "ODM_FARM_TOKEN": "t", "ODM_FARM_USER_MAX_RUNNING": "2"})
    assert ok.accounts and not ok.registration and ok.user_max_running == 2


def test_defaults_and_usual_values_are_accepted() -> None:
    Settings()
    Settings.from_env({"ODM_FARM_PORT": "65535", "ODM_FARM_CLEANUP_MINUTES": "0", "ODM_FARM_MAX_UPLOAD_MB": "0",
                       "ODM_FARM_BLOCKED_NETWORKS": "10.0.0.0/8, fd00::/8", "ODM_FARM_WORKER_QUEUES": "gpu,cpu",
                       "ODM_FARM_PUBLIC_URL": "https://farm.example.com", "ODM_FARM_REDIS_URL": "redis://r:6379/0"})


def test_overrides_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="ODM_FARM_LEASE_SECONDS"):
        Settings.from_env({}, lease_seconds=-1.0)
    with pytest.raises(SettingsError, match="ODM_FARM_WEBHOOK_RETRIES"):
        Settings().replace(webhook_retries=0)


def test_a_misspelled_variable_gets_a_did_you_mean() -> None:
    warnings = unknown_variables({"ODM_FARM_LEASE_SECOND": "10", "ODM_FARM_PORT": "3000", "PATH": "/bin"})
    assert warnings == ["ODM_FARM_LEASE_SECOND is not a setting and is ignored; did you mean ODM_FARM_LEASE_SECONDS?"]
    (other,) = unknown_variables({"ODM_FARM_WHATEVER": "1"})
    assert other.startswith("ODM_FARM_WHATEVER is not a setting") and "did you mean" not in other


def test_engine_test_controls_are_not_reported_as_typos() -> None:
    assert unknown_variables({"ODM_FARM_SIMULATE_EXIT": "3", "ODM_FARM_SIMULATE_CACHE": "/tmp"}) == []


def test_secrets_are_masked_in_repr() -> None:
    text = repr(Settings(token="s3cr3t-token", s3_secret_key="s3cr3t-key", redis_url="redis://:pw9x@h:1/0",
                         metrics_token="s3cr3t-metrics"))
    assert "s3cr3t" not in text and "pw9x" not in text
