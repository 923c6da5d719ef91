"""A Redis online store whose URL has no password is opened with a warning, once per process and URL."""

from __future__ import annotations

import logging

import pytest

from ml_system.features.online.redis import RedisOnlineStore, _warn_once, password_warning


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://cache.internal:6379/0", True),
        ("unix:///run/redis.sock", True),
        ("redis://default@cache.internal:6379/0", True),  # a user name alone is no password
        ("redis://:s3cret@cache.internal:6379/0", False),
        ("rediss://app:s3cret@cache.internal:6380/0", False),
    ],
)
def test_a_url_without_a_password_is_named_and_loopback_is_called_lower_risk(url: str, warns: bool) -> None:
    message = password_warning(url)
    assert (message is not None) == warns
    if message:
        assert "no password" in message and "lower" in message and "s3cret" not in message


def test_opening_the_store_warns_once(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    _warn_once.cache_clear()  # as in a fresh process
    with caplog.at_level(logging.WARNING, logger="ml_system.features.online.redis"):
        for _ in range(3):
            RedisOnlineStore(redis_url).close()
    warned = [r for r in caplog.records if "no password" in r.getMessage()]
    assert len(warned) == 1
