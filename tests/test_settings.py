"""Settings: contract defaults, environment, flags over environment, one-line errors."""

from __future__ import annotations

import pytest

from streams.cli import main
from streams.kafka import config
from streams.settings import ConfigError, load_settings, parse_duration_ms


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SLIPGUARD_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_contracts() -> None:
    s = load_settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert (s.payments_topic, s.orders_topic) == ("payments", "orders")
    assert (s.recovery_topic, s.late_topic) == ("orders.recovery", "orders.late")
    assert (s.anomalies_topic, s.dlq_topic) == ("payments.anomalies", "slipguard.dlq")
    assert (s.order_timeout, s.grace, s.late_horizon) == (60_000, 5_000, 3_600_000)
    assert s.processing_guarantee == "exactly_once"
    assert (s.join_group, s.recover_group) == ("slipguard-join", "slipguard-recover")
    assert s.hmac_keys == ()
    assert (s.metrics_port_for("join"), s.metrics_port_for("recover")) == (9400, 9401)
    assert s.metrics_host == "127.0.0.1", "the endpoint is not on every interface unless asked"


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPGUARD_ORDER_TIMEOUT", "2m")
    monkeypatch.setenv("SLIPGUARD_METRICS_PORT", "0")
    assert load_settings().order_timeout == 120_000
    assert load_settings().metrics_port_for("join") == 0
    assert load_settings(order_timeout="90s").order_timeout == 90_000
    monkeypatch.setenv("SLIPGUARD_CHANGELOG_FORMAT", "2")  # as a deployment's env gives it: text
    assert load_settings().changelog_format == 2 and load_settings(changelog_format="3").changelog_format == 3


@pytest.mark.parametrize(("text", "ms"), [("60s", 60_000), ("1h", 3_600_000), ("250ms", 250), ("5", 5000),
                                         ("1.5s", 1500), ("2m", 120_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("SLIPGUARD_ORDER_TIMEOUT", "soon", "SLIPGUARD_ORDER_TIMEOUT: expected a duration"),
        ("SLIPGUARD_ORDER_TIMEOUT", "0s", "SLIPGUARD_ORDER_TIMEOUT: Input should be greater than 0"),
        ("SLIPGUARD_PROCESSING_GUARANTEE", "maybe_once",
         "SLIPGUARD_PROCESSING_GUARANTEE: Input should be 'exactly_once' or 'at_least_once'"),
        ("SLIPGUARD_BOOTSTRAP_SERVERS", "kafka", "SLIPGUARD_BOOTSTRAP_SERVERS: expected host:port"),
        ("SLIPGUARD_METRICS_PORT", "70000", "SLIPGUARD_METRICS_PORT"),
        ("SLIPGUARD_CHANGELOG_FORMAT", "5", "SLIPGUARD_CHANGELOG_FORMAT: Input should be less than or equal to 4"),
    ],
)
def test_bad_value_stops_with_one_clear_line(monkeypatch, capsys, env: str, value: str, expected: str) -> None:
    monkeypatch.setenv(env, value)
    assert main(["topics", "create"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_bad_flag_value_stops_with_one_clear_line(capsys) -> None:
    assert main(["topics", "create", "--grace=-1s"]) == 2
    assert "SLIPGUARD_GRACE" in capsys.readouterr().err


def test_secrets_are_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPGUARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SLIPGUARD_KAFKA_SASL_PASSWORD", "hunter2")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value) and "SASL" in str(info.value)


def test_security_settings_reach_every_client() -> None:
    s = load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                      kafka_sasl_username="u", kafka_sasl_password="p", kafka_ssl_ca_location="/ca.pem")
    for conf in (config.admin(s), config.producer(s), config.consumer(s, "g")):
        assert conf["security.protocol"] == "SASL_SSL"
        assert (conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == ("SCRAM-SHA-512", "u", "p")
        assert conf["ssl.ca.location"] == "/ca.pem"


def test_producers_partition_like_java_clients() -> None:
    assert config.producer(load_settings())["partitioner"] == "murmur2_random"


@pytest.mark.parametrize("key", ["", "short", "x" * 15])
def test_an_empty_or_short_hmac_key_is_a_configuration_error_not_signatures_off(key: str) -> None:
    with pytest.raises(ConfigError, match="SLIPGUARD_PAYMENT_HMAC_KEY: the HMAC key must be at least 16 bytes") as err:
        load_settings(payment_hmac_key=key)
    assert "(got" not in str(err.value), "the key itself is never shown"


def test_a_previous_hmac_key_is_accepted_beside_the_current_one_and_never_alone() -> None:
    s = load_settings(payment_hmac_key="n" * 16, payment_hmac_previous_key="o" * 16)
    assert s.hmac_keys == (b"n" * 16, b"o" * 16)
    with pytest.raises(ConfigError, match="PREVIOUS_KEY is set without SLIPGUARD_PAYMENT_HMAC_KEY"):
        load_settings(payment_hmac_previous_key="o" * 16)
    with pytest.raises(ConfigError, match="SLIPGUARD_PAYMENT_HMAC_PREVIOUS_KEY: the HMAC key must be at least 16"):
        load_settings(payment_hmac_key="n" * 16, payment_hmac_previous_key="short")


def test_a_malformed_database_url_never_prints_its_password(capsys, tmp_path) -> None:
    from streams.cli import main

    url = "postgres://writer:s3cr3t-pa55@[::1:5432/db"  # psycopg quotes the whole URI in its error
    (tmp_path / "url").write_text(url + "\n")
    assert main(["db", "migrate", f"--database-url-file={tmp_path / 'url'}"]) == 1
    err = capsys.readouterr().err
    assert "slipguard db migrate:" in err and "s3cr3t-pa55" not in err


def test_log_lines_never_carry_a_secret(capsys) -> None:
    import logging

    from streams.ops.logs import setup_logging

    s = load_settings(database_url="postgresql://u:hunter2-secret@h/db", payment_hmac_key="k" * 20 + "-hmac")
    setup_logging(s)
    logging.getLogger("slipguard.test").warning("connect to %s failed; key %s", s.database_url.get_secret_value(),
                                                "k" * 20 + "-hmac")
    err = capsys.readouterr().err
    assert "hunter2-secret" not in err and "-hmac" not in err and "***" in err


def test_every_secret_can_be_given_as_a_file_as_kubernetes_mounts_them(tmp_path, monkeypatch) -> None:
    values = {"database_url": "postgresql://w:s3cr3t-from-file@db:5432/slipguard",
              "payment_hmac_key": "k" * 32, "kafka_sasl_password": "sasl-from-file",
              "kafka_ssl_key_password": "tls-from-file"}
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")
        monkeypatch.setenv(f"SLIPGUARD_{name.upper()}_FILE", str(tmp_path / name))
    s = load_settings()
    assert s.database_url.get_secret_value() == values["database_url"]
    assert s.hmac_keys == (values["payment_hmac_key"].encode(),)
    assert s.kafka_sasl_password.get_secret_value() == "sasl-from-file"
    assert s.kafka_ssl_key_password.get_secret_value() == "tls-from-file"
    assert "from-file" not in repr(s) and "from-file" not in str(s.model_dump())


def test_a_secret_given_twice_or_an_unreadable_file_is_one_clear_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "url").write_text("postgresql://a:b@c/d")
    monkeypatch.setenv("SLIPGUARD_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("SLIPGUARD_DATABASE_URL", "postgresql://x:y@z/w")
    with pytest.raises(ConfigError, match="SLIPGUARD_DATABASE_URL and SLIPGUARD_DATABASE_URL_FILE are both set"):
        load_settings()
    monkeypatch.delenv("SLIPGUARD_DATABASE_URL")
    monkeypatch.setenv("SLIPGUARD_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"SLIPGUARD_DATABASE_URL_FILE: cannot read .*missing"):
        load_settings()


def test_secret_flags_take_files_and_win_over_the_environment(tmp_path, monkeypatch) -> None:
    from streams.cli import build_parser, settings_from

    values = {"database_url": "postgresql://w:from-flag-file@db:5432/slipguard", "payment_hmac_key": "n" * 32,
              "payment_hmac_previous_key": "o" * 32, "kafka_sasl_password": "sasl-from-flag-file",
              "kafka_ssl_key_password": "tls-from-flag-file"}
    flags = []
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")
        flags.append(f"--{name.replace('_', '-')}-file={tmp_path / name}")
    monkeypatch.setenv("SLIPGUARD_DATABASE_URL", "postgresql://w:from-env@db:5432/slipguard")
    s = settings_from(build_parser().parse_args(["recover", *flags]))
    assert s.database_url.get_secret_value() == values["database_url"], "the flag wins, as every flag does"
    assert s.hmac_keys == (b"n" * 32, b"o" * 32)
    assert s.kafka_sasl_password.get_secret_value() == "sasl-from-flag-file"
    assert s.kafka_ssl_key_password.get_secret_value() == "tls-from-flag-file"


def test_an_unreadable_secret_file_flag_is_one_clear_line(capsys, tmp_path) -> None:
    assert main(["recover", f"--database-url-file={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--database-url-file: cannot read" in err and "missing" in err, err


def _from_file(tmp_path, text: str, *words: str):
    from streams.cli import build_parser, settings_from

    (tmp_path / "run.env").write_text(text)
    return settings_from(build_parser().parse_args(["lag", "--env-file", str(tmp_path / "run.env"), *words]))


def test_an_env_file_gives_settings_under_the_environment_and_the_flags(monkeypatch, tmp_path) -> None:
    text = ("# slipguard demo 120000\n\nSLIPGUARD_PAYMENTS_TOPIC=demo.120000.payments\n"
            "export SLIPGUARD_JOIN_GROUP='slipguard-demo-120000-join'\nSLIPGUARD_ORDER_TIMEOUT=\"5s\"\n")
    s = _from_file(tmp_path, text)
    assert (s.payments_topic, s.join_group, s.order_timeout) == ("demo.120000.payments", "slipguard-demo-120000-join",
                                                                5_000)
    assert _from_file(tmp_path, text, "--join-group=g").join_group == "g", "a flag wins over the file"
    monkeypatch.setenv("SLIPGUARD_PAYMENTS_TOPIC", "from-env")
    assert _from_file(tmp_path, text).payments_topic == "from-env", "the environment wins over the file"


def test_an_env_file_may_name_a_secret_file(tmp_path) -> None:
    (tmp_path / "url").write_text("postgresql://w:pw@db:5432/x\n")
    s = _from_file(tmp_path, f"SLIPGUARD_DATABASE_URL_FILE={tmp_path / 'url'}\n")
    assert s.database_url.get_secret_value() == "postgresql://w:pw@db:5432/x"


@pytest.mark.parametrize(("text", "said"), [
    ("SLIPGUARD_PAYMENT_TOPIC=x\n", "line 1: SLIPGUARD_PAYMENT_TOPIC is not a setting"),
    ("# ok\nPAYMENTS_TOPIC=x\n", "line 2: PAYMENTS_TOPIC is not a setting"),
    ("SLIPGUARD_GRACE 5s\n", "line 1: expected NAME=value"),
    ("SLIPGUARD_GRACE=soon\n", "SLIPGUARD_GRACE: expected a duration"),
])
def test_a_bad_env_file_is_one_line_naming_the_line(capsys, tmp_path, text: str, said: str) -> None:
    (tmp_path / "run.env").write_text(text)
    assert main(["lag", "--env-file", str(tmp_path / "run.env")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err


def test_a_missing_env_file_is_one_line(capsys, tmp_path) -> None:
    assert main(["lag", "--env-file", str(tmp_path / "nope.env")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--env-file: cannot read" in err and "nope.env" in err, err


def test_every_setting_is_in_exactly_one_group_and_described() -> None:
    from streams.settings import SETTING_GROUPS, Settings

    grouped = [name for names in SETTING_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields)
    assert [name for name, f in Settings.model_fields.items() if not f.description] == []
