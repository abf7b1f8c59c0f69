"""The faust and aiokafka internals the writer overrides are still there, in the versions
it was written for: an upgrade that removes one fails here, not in production."""

from __future__ import annotations

from streams.recover import faust_compat


def test_every_overridden_internal_exists() -> None:
    assert faust_compat.missing() == []


def test_the_installed_versions_are_those_the_overrides_were_written_for() -> None:
    assert faust_compat.unexpected_versions() == {}, (
        "faust-streaming or aiokafka changed: check streams/recover/faust_compat.py against the new version, "
        "then update WRITTEN_FOR and the pins in pyproject.toml")


def test_the_writer_app_reads_with_the_read_committed_consumer() -> None:
    """What the overrides are for: the app `slipguard recover` runs builds its consumers
    through them (nothing connects here)."""
    from streams.recover.app import build_app
    from streams.settings import load_settings

    app, _ = build_app(load_settings())
    assert app.transport.Consumer is faust_compat._ReadCommittedConsumer
