# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""URL validation (RELIABILITY C1), redaction (C2, D1) and telemetry targets."""

from __future__ import annotations

import pytest

from wsengine._url import redact_url, url_target, validate_url
from wsengine.errors import ConfigError

C1_BAD_URLS: list[object] = [
    "", None, b"ws://x", "http://x", "ws://", "ws:///p", "wss://:443", "ws://h:99999",
    "ws://h:abc", "ws://h/p\r\nX-Evil: 1", "ws://h/ p",
]

MORE_BAD_URLS: list[object] = [
    "https://h/", "ws:h", "//h/", "h", "ws//h", 42, ["ws://h"],
    "ws://h:0", "ws://h:65536", "ws://h:-1", "ws://h:+80", "ws://h:", "ws://h:\uff18\uff10/",
    "ws://h:1:2/", "ws://[::1", "ws://[zz]/", "ws://[::1]x/", "ws://u:p@/",
    "ws://h/p\tq", "ws://h/p\nq", " ws://h/", "ws://h/\x00", "ws://h/\x7f", "ws://h/\u2028",
    "ws://h/\u200b", "ws://h\\evil/", "ws://h/#frag", "ws://h/#", "ws://h<x>/",
]

GOOD_URLS: list[tuple[str, tuple[str, str, int]]] = [
    ("ws://h", ("ws", "h", 80)),
    ("wss://example.com/", ("wss", "example.com", 443)),
    ("ws://127.0.0.1:8765/path?q=1", ("ws", "127.0.0.1", 8765)),
    ("ws://[::1]:8080/", ("ws", "::1", 8080)),
    ("wss://[2001:db8::1]/x", ("wss", "2001:db8::1", 443)),
    ("ws://[fe80::1%25eth0]:1/", ("ws", "fe80::1%25eth0", 1)),
    ("WSS://Host.Example:65535/A", ("wss", "host.example", 65535)),
    ("wss://user:pa:ss@h.example/?token=t", ("wss", "h.example", 443)),
    ("ws://h/p%20q?a=%0D%0A", ("ws", "h", 80)),
    ("ws://bücher.example/", ("ws", "bücher.example", 80)),
]


@pytest.mark.parametrize("url", C1_BAD_URLS + MORE_BAD_URLS, ids=repr)
def test_bad_url_raises_config_error_naming_the_field(url: object) -> None:
    """Each URL of RELIABILITY C1 (and more) is a ConfigError, also a ValueError, naming url."""
    with pytest.raises(ConfigError) as caught:
        validate_url(url)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("url ")


def test_field_name_is_used_in_the_message() -> None:
    """The caller chooses the field name shown in the error."""
    with pytest.raises(ConfigError, match=r"^url\(\) result "):
        validate_url("http://x", field="url() result")


@pytest.mark.parametrize("url", [None, b"ws://u:secret@h/", 3.5])
def test_non_str_error_shows_only_the_type(url: object) -> None:
    """For a non-str value only its type is shown, never its content."""
    with pytest.raises(ConfigError) as caught:
        validate_url(url)
    message = str(caught.value)
    assert type(url).__name__ in message
    assert "secret" not in message


def test_error_shows_the_url_redacted() -> None:
    """Credentials and sensitive query values of a refused URL stay out of the message."""
    with pytest.raises(ConfigError) as caught:
        validate_url("ws://alice:hunter2@h:99999/p?token=abc123&q=1")
    message = str(caught.value)
    assert "hunter2" not in message and "alice" not in message and "abc123" not in message
    assert "ws://REDACTED:REDACTED@h:99999/p?token=REDACTED&q=1" in message


def test_error_shows_control_characters_escaped() -> None:
    """A CR/LF in a refused URL appears escaped, so the message cannot forge log lines."""
    with pytest.raises(ConfigError) as caught:
        validate_url("ws://h/p\r\nX-Evil: 1")
    message = str(caught.value)
    assert "\r" not in message and "\n" not in message
    assert r"\r\nX-Evil" in message


@pytest.mark.parametrize(("url", "target"), GOOD_URLS, ids=[u for u, _ in GOOD_URLS])
def test_good_url_is_accepted(url: str, target: tuple[str, str, int]) -> None:
    """Valid ws/wss URLs, IPv6 literals included, pass and keep all but the scheme's case."""
    checked = validate_url(url)
    assert checked.lower() == url.lower()
    assert checked.startswith(target[0] + "://")
    assert checked[len(target[0]):] == url[len(target[0]):]


@pytest.mark.parametrize(("url", "target"), GOOD_URLS, ids=[u for u, _ in GOOD_URLS])
def test_url_target_gives_scheme_host_and_port(url: str, target: tuple[str, str, int]) -> None:
    """url_target returns the lower-cased scheme and host and the port, defaulted by scheme."""
    assert url_target(url) == target


def test_url_target_refuses_an_invalid_url() -> None:
    """url_target raises ConfigError rather than returning garbage."""
    with pytest.raises(ConfigError):
        url_target("ws://h:abc/")


def test_redaction_matches_reliability_d1() -> None:
    """D1: credentials and sensitive query values become REDACTED, keys and order kept."""
    assert (redact_url("wss://u:p@host/p?sig=x&token=y&q=1")
            == "wss://REDACTED:REDACTED@host/p?sig=REDACTED&token=REDACTED&q=1")


@pytest.mark.parametrize(("url", "expected"), [
    ("wss://u@host/", "wss://REDACTED@host/"),
    ("wss://:pw@host/", "wss://REDACTED:REDACTED@host/"),
    ("wss://u:p@h@evil/", "wss://REDACTED:REDACTED@evil/"),
    ("ws://host/p?q=1&lang=en", "ws://host/p?q=1&lang=en"),
    ("ws://h/?ACCESS_TOKEN=a&api_key=b&X-Amz-Signature=c&Password=d&pwd=e",
     "ws://h/?ACCESS_TOKEN=REDACTED&api_key=REDACTED&X-Amz-Signature=REDACTED"
     "&Password=REDACTED&pwd=REDACTED"),
    ("ws://h/?client_secret=a&authorization=b&credentials=c&sessionid=d&jwt=e",
     "ws://h/?client_secret=REDACTED&authorization=REDACTED&credentials=REDACTED"
     "&sessionid=REDACTED&jwt=REDACTED"),
    ("ws://h/?code=a&ticket=b&nonce=c", "ws://h/?code=REDACTED&ticket=REDACTED&nonce=REDACTED"),
    ("ws://h/?%74oken=a&to%6Ben=b", "ws://h/?%74oken=REDACTED&to%6Ben=REDACTED"),
    ("ws://h/?token&q", "ws://h/?token&q"),
    ("ws://h/?token=a=b&q=1", "ws://h/?token=REDACTED&q=1"),
    ("ws://h/p#token=x", "ws://h/p"),
    ("ws://[::1]:80/?sig=1", "ws://[::1]:80/?sig=REDACTED"),
    ("http://u:p@h/?auth=1", "http://REDACTED:REDACTED@h/?auth=REDACTED"),
    ("u:p@h/x?token=1", "REDACTED:REDACTED@h/x?token=REDACTED"),
])
def test_redaction_cases(url: str, expected: str) -> None:
    """Userinfo, sensitive keys (case-insensitive, percent-decoded) and fragments are hidden."""
    assert redact_url(url) == expected


def test_redaction_keeps_a_url_without_secrets_unchanged() -> None:
    """A URL with nothing sensitive comes back as given."""
    url = "wss://stream.example.com:9443/ws/btcusdt@trade?q=1&depth=5"
    assert redact_url(url) == url


@pytest.mark.parametrize("garbage", [
    None, b"ws://u:p@h", 12, "", "::::", "ws://[::1", "ws://u:p@[", "\x00\r\n", "%", "@@@",
    "ws://h/?&&==&", "\ud800",
])
def test_redaction_never_raises(garbage: object) -> None:
    """Any input yields a string, and userinfo never survives."""
    result = redact_url(garbage)  # type: ignore[arg-type]
    assert isinstance(result, str)
    assert "u:p" not in result


def test_redaction_of_a_non_str_shows_no_content() -> None:
    """A non-str value is replaced by a placeholder."""
    assert "secret" not in redact_url(b"ws://h/?token=secret")  # type: ignore[arg-type]
