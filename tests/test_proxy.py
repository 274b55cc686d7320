# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""``proxy=`` and ``ssl=`` on both adapters (API.md "Adapters: one spelling", RELIABILITY
E16), against real proxies on 127.0.0.1 (``tests/support/proxyservers.py``): HTTP
CONNECT with and without credentials, SOCKS5 (local and proxy-side resolution), SOCKS4,
the environment's settings, refusals, and credentials kept out of errors, logs and spans.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import TlsMaterial
from tests.support.proxyservers import ConnectProxy, SocksProxy
from tests.support.servers import WsServer
from tests.test_reliability import FAST, Recorder, stop_and_check
from wsengine import EngineStartError, EngineState, WebsocketEngine
from wsengine.adapters._driver import DrivenAdapter
from wsengine.adapters._proxy import Proxy, parse_proxy
from wsengine.adapters.websocket_client import WebsocketClientAdapter
from wsengine.adapters.websockets_sync import WebsocketsAdapter
from wsengine.errors import ConfigError, HandshakeError
from wsengine.types import Message, MessageType

USER = "proxy-user"
PASSWORD = "s3cr3t-pr0xy-pw"
CREDENTIALS = (USER, PASSWORD)
#: What a leak of the credentials could look like in a record.
SECRETS = (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
#: Every variable urllib.request.getproxies() could read here, cleared by ``clean_env``.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy",
                   "no_proxy")

ADAPTERS: list[type[DrivenAdapter]] = [WebsocketClientAdapter, WebsocketsAdapter]


@pytest.fixture(params=ADAPTERS, ids=["websocket-client", "websockets"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., DrivenAdapter]]:
    """Build adapters of the class under test (same keywords for both); each is aborted
    after the test."""
    cls: type[DrivenAdapter] = request.param
    made: list[DrivenAdapter] = []

    def build(**options: Any) -> DrivenAdapter:
        adapter = cls(**options)
        made.append(adapter)
        return adapter

    yield build
    for adapter in made:
        adapter.abort()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the machine leaks into a test (lower or upper case)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)
    return monkeypatch


@pytest.fixture
def http_proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy() as proxy:
        yield proxy


@pytest.fixture
def auth_proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy(credentials=CREDENTIALS) as proxy:
        yield proxy


@pytest.fixture
def socks_proxy() -> Iterator[SocksProxy]:
    with SocksProxy() as proxy:
        yield proxy


def echo_once(adapter: DrivenAdapter, url: str) -> None:
    """Dial ``url``, send a text, check it comes back, close."""
    adapter.dial(url, 5)
    adapter.write("through")
    assert adapter.read(5) == Message(MessageType.TEXT, "through")
    adapter.close(timeout=5)


def localhost(server: WsServer) -> str:
    """The server's URL with ``localhost`` for its host (a name to resolve)."""
    return server.url.replace("127.0.0.1", "localhost")


# -- HTTP CONNECT ----------------------------------------------------------------------


def test_ws_through_an_http_proxy(
    make: Callable[..., DrivenAdapter], http_proxy: ConnectProxy, echo_server: WsServer
) -> None:
    """ws:// goes through the HTTP proxy's CONNECT tunnel to the server."""
    echo_once(make(proxy=http_proxy.url("http")), echo_server.url)
    assert http_proxy.tunnels == 1
    request = http_proxy.requests[0]
    assert (request.host, request.port) == ("127.0.0.1", int(echo_server.url.split(":")[2]
                                                             .strip("/")))


def test_wss_through_an_http_proxy_is_verified_end_to_end(
    make: Callable[..., DrivenAdapter],
    http_proxy: ConnectProxy,
    wss_echo_server: WsServer,
    tls: TlsMaterial,
) -> None:
    """wss:// through the tunnel works with a context trusting the server's CA, and fails
    certificate verification with the system's CAs: TLS runs end to end, verified."""
    echo_once(make(proxy=http_proxy.url("http"), ssl=tls.client_context), wss_echo_server.url)
    with pytest.raises(ssl.SSLCertVerificationError):
        make(proxy=http_proxy.url("http")).dial(wss_echo_server.url, 5)
    assert http_proxy.tunnels == 2


def test_proxy_credentials_reach_the_proxy(
    make: Callable[..., DrivenAdapter], auth_proxy: ConnectProxy, echo_server: WsServer
) -> None:
    """user:password in the proxy URL goes to the proxy as Basic Proxy-Authorization
    (percent-escapes decoded), and the tunnel opens."""
    url = f"http://{USER}:{PASSWORD.replace('-', '%2D')}@127.0.0.1:{auth_proxy.port}"
    echo_once(make(proxy=url), echo_server.url)
    assert [(r.username, r.password, r.answer) for r in auth_proxy.requests] == [
        (USER, PASSWORD, 200)
    ]


def test_a_407_is_a_handshake_error_naming_the_proxy(
    make: Callable[..., DrivenAdapter], auth_proxy: ConnectProxy, echo_server: WsServer
) -> None:
    """Wrong credentials: the dial fails with HandshakeError(status=407), saying it was
    the proxy, and the server is never reached."""
    adapter = make(proxy=auth_proxy.url("http", (USER, "wrong")))
    with pytest.raises(HandshakeError) as info:
        adapter.dial(echo_server.url, 5)
    assert info.value.status == 407
    assert "proxy" in str(info.value)
    assert echo_server.connections == []


def test_abort_cuts_the_proxy_step(make: Callable[..., DrivenAdapter]) -> None:
    """abort() from another thread ends a dial waiting for the proxy's CONNECT answer."""
    request_seen = threading.Event()
    with ConnectProxy(stall=request_seen) as stalling:
        adapter = make(proxy=stalling.url("http"))
        failures: list[BaseException] = []

        def dial() -> None:
            try:
                adapter.dial("ws://127.0.0.1:9/", 30)
            except BaseException as error:  # recorded for the test
                failures.append(error)

        thread = threading.Thread(target=dial, name="test-dial")
        thread.start()
        assert request_seen.wait(5)
        started = time.monotonic()
        adapter.abort()
        thread.join(5)
        assert not thread.is_alive()
        assert time.monotonic() - started < 2
        assert len(failures) == 1 and isinstance(failures[0], ConnectionError)


# -- SOCKS -----------------------------------------------------------------------------


def test_ws_and_wss_through_socks5_resolving_here(
    make: Callable[..., DrivenAdapter],
    socks_proxy: SocksProxy,
    echo_server: WsServer,
    wss_echo_server: WsServer,
    tls: TlsMaterial,
) -> None:
    """socks5://: the host name is resolved here and the proxy gets an address; ws and
    wss (verified) both work."""
    adapter = make(proxy=socks_proxy.url("socks5"), ssl=tls.client_context)
    echo_once(adapter, localhost(echo_server))
    echo_once(adapter, localhost(wss_echo_server))
    assert [(r.kind, r.address_type) for r in socks_proxy.requests] == [("socks5", "ip")] * 2
    assert socks_proxy.tunnels == 2


def test_socks5h_resolves_at_the_proxy(
    make: Callable[..., DrivenAdapter],
    socks_proxy: SocksProxy,
    wss_echo_server: WsServer,
    tls: TlsMaterial,
) -> None:
    """socks5h://: the proxy receives the host name, not an address."""
    echo_once(make(proxy=socks_proxy.url("socks5h"), ssl=tls.client_context),
              localhost(wss_echo_server))
    assert [(r.host, r.address_type) for r in socks_proxy.requests] == [("localhost", "domain")]


def test_socks5_credentials_reach_the_proxy_and_wrong_ones_fail(
    make: Callable[..., DrivenAdapter], echo_server: WsServer
) -> None:
    """SOCKS5 user/password authentication (RFC 1929): the right credentials open the
    tunnel; wrong ones fail the dial with HandshakeError, quoting neither."""
    with SocksProxy(credentials=CREDENTIALS) as proxy:
        echo_once(make(proxy=proxy.url("socks5", CREDENTIALS)), echo_server.url)
        with pytest.raises(HandshakeError) as info:
            make(proxy=proxy.url("socks5", (USER, "wrong"))).dial(echo_server.url, 5)
    assert [(r.username, r.password, r.answer) for r in proxy.requests] == [
        (USER, PASSWORD, 0), (USER, "wrong", 1)
    ]
    assert "SOCKS" in str(info.value)
    assert "wrong" not in str(info.value) and USER not in str(info.value)


def test_socks4_and_socks4a(
    make: Callable[..., DrivenAdapter], socks_proxy: SocksProxy, echo_server: WsServer
) -> None:
    """socks4:// sends an address, socks4a:// the host name."""
    echo_once(make(proxy=socks_proxy.url("socks4")), localhost(echo_server))
    echo_once(make(proxy=socks_proxy.url("socks4a")), localhost(echo_server))
    assert [(r.kind, r.host) for r in socks_proxy.requests] == [
        ("socks4", "127.0.0.1"), ("socks4a", "localhost")
    ]


def test_socks_without_python_socks_is_a_config_error_naming_the_extra(
    make: Callable[..., DrivenAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SOCKS URL when python-socks cannot be imported: ConfigError naming
    ``wsengine[socks]``, at construction; an HTTP proxy still works without it."""
    monkeypatch.setitem(sys.modules, "python_socks", None)
    monkeypatch.setitem(sys.modules, "python_socks.sync", None)
    for scheme in ("socks5", "socks5h", "socks4"):
        with pytest.raises(ConfigError, match=r"wsengine\[socks\]"):
            make(proxy=f"{scheme}://127.0.0.1:1080")
    make(proxy="http://127.0.0.1:3128")


# -- the environment -------------------------------------------------------------------


def test_proxy_true_uses_the_environment(
    make: Callable[..., DrivenAdapter],
    clean_env: pytest.MonkeyPatch,
    http_proxy: ConnectProxy,
    echo_server: WsServer,
    wss_echo_server: WsServer,
    tls: TlsMaterial,
) -> None:
    """proxy=True (the default): http_proxy for ws://, https_proxy for wss://."""
    with ConnectProxy() as secure_proxy:
        clean_env.setenv("http_proxy", http_proxy.url("http"))
        clean_env.setenv("HTTPS_PROXY", secure_proxy.url("http"))
        adapter = make(ssl=tls.client_context)
        echo_once(adapter, echo_server.url)
        echo_once(adapter, wss_echo_server.url)
        assert (http_proxy.tunnels, secure_proxy.tunnels) == (1, 1)


def test_all_proxy_applies_when_no_scheme_proxy_is_set(
    make: Callable[..., DrivenAdapter],
    clean_env: pytest.MonkeyPatch,
    socks_proxy: SocksProxy,
    echo_server: WsServer,
) -> None:
    """all_proxy (here a SOCKS5 proxy) is used when http_proxy is not set."""
    clean_env.setenv("all_proxy", socks_proxy.url("socks5h"))
    echo_once(make(), echo_server.url)
    assert socks_proxy.tunnels == 1


@pytest.mark.parametrize("proxy", [None, False])
def test_proxy_none_ignores_the_environment(
    make: Callable[..., DrivenAdapter],
    clean_env: pytest.MonkeyPatch,
    http_proxy: ConnectProxy,
    echo_server: WsServer,
    wss_echo_server: WsServer,
    tls: TlsMaterial,
    proxy: object,
) -> None:
    """proxy=None or False connects directly whatever http_proxy/https_proxy/all_proxy
    say."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        clean_env.setenv(name, http_proxy.url("http"))
    adapter = make(proxy=proxy, ssl=tls.client_context)
    echo_once(adapter, echo_server.url)
    echo_once(adapter, wss_echo_server.url)
    assert http_proxy.requests == []


def test_no_proxy_is_honoured(
    make: Callable[..., DrivenAdapter],
    clean_env: pytest.MonkeyPatch,
    http_proxy: ConnectProxy,
    echo_server: WsServer,
) -> None:
    """A host named in no_proxy is reached directly; another host still goes through
    the proxy (the environment is read at each dial)."""
    clean_env.setenv("http_proxy", http_proxy.url("http"))
    clean_env.setenv("no_proxy", "example.invalid,localhost")
    adapter = make()
    echo_once(adapter, localhost(echo_server))
    assert http_proxy.requests == []
    echo_once(adapter, echo_server.url)
    assert http_proxy.tunnels == 1


def test_a_bad_environment_proxy_is_a_config_error_without_credentials(
    make: Callable[..., DrivenAdapter], clean_env: pytest.MonkeyPatch, echo_server: WsServer
) -> None:
    """An unusable http_proxy fails the dial with a ConfigError naming the variable and
    hiding its credentials."""
    clean_env.setenv("http_proxy", f"ftp://{USER}:{PASSWORD}@127.0.0.1:21")
    with pytest.raises(ConfigError, match="http_proxy") as info:
        make().dial(echo_server.url, 5)
    assert PASSWORD not in str(info.value) and USER not in str(info.value)


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://{USER}:{PASSWORD}@127.0.0.1:21",
        f"http://{USER}:{PASSWORD}@127.0.0.1:notaport",
        f"http://{USER}:{PASSWORD}@127.0.0.1:3128/path",
        f"https://{USER}:{PASSWORD}@127.0.0.1:3128",
        f"http://{USER}:{PASSWORD}@:3128",
        f"http://{USER}:{PASSWORD}@127.0.0.1:3128\r\nX-Evil: 1",
    ],
)
def test_a_bad_proxy_url_is_a_config_error_that_hides_credentials(
    make: Callable[..., DrivenAdapter], url: str
) -> None:
    """A proxy URL that cannot be used is refused at construction, without quoting the
    credentials."""
    with pytest.raises(ConfigError, match="proxy") as info:
        make(proxy=url)
    assert PASSWORD not in str(info.value) and USER not in str(info.value)


@pytest.mark.parametrize("value", [1, b"http://127.0.0.1:3128", ["http://127.0.0.1:3128"]])
def test_a_proxy_of_another_type_is_a_config_error(
    make: Callable[..., DrivenAdapter], value: object
) -> None:
    """proxy= takes a URL string, True, False or None."""
    with pytest.raises(ConfigError, match="proxy"):
        make(proxy=value)


def test_proxy_repr_hides_credentials() -> None:
    """A parsed proxy shows its scheme, host and port, never its credentials."""
    proxy = parse_proxy(f"socks5h://{USER}:{PASSWORD}@[::1]:1080")
    assert (proxy.scheme, proxy.host, proxy.port) == ("socks5h", "::1", 1080)
    assert (proxy.username, proxy.password) == (USER, PASSWORD)
    for text in (repr(proxy), str(proxy), proxy.url):
        assert PASSWORD not in text and USER not in text
        assert "[::1]:1080" in text
    assert parse_proxy("127.0.0.1:3128") == Proxy("http", "127.0.0.1", 3128)
    assert parse_proxy("http://proxy.example").port == 80


def test_ssl_context_is_used_for_verification(
    make: Callable[..., DrivenAdapter], wss_echo_server: WsServer, tls: TlsMaterial
) -> None:
    """ssl= is the context that verifies the server: one trusting the test CA connects,
    the default (system CAs) refuses the certificate."""
    echo_once(make(proxy=None, ssl=tls.client_context), wss_echo_server.url)
    with pytest.raises(ssl.SSLCertVerificationError):
        make(proxy=None).dial(wss_echo_server.url, 5)
    with pytest.raises(ConfigError, match="ssl"):
        make(ssl="not a context")


# -- websocket-client's own spellings ---------------------------------------------------


def test_websocket_client_proxy_options_map_onto_the_same_tunnel(
    auth_proxy: ConnectProxy, echo_server: WsServer
) -> None:
    """http_proxy_host/port/auth (websocket-client's spelling) open the same tunnel,
    credentials included; http_no_proxy bypasses it."""
    options = {"http_proxy_host": "127.0.0.1", "http_proxy_port": auth_proxy.port,
               "http_proxy_auth": CREDENTIALS}
    adapter = WebsocketClientAdapter(**options)
    try:
        echo_once(adapter, echo_server.url)
        bypassing = WebsocketClientAdapter(**options, http_no_proxy=["localhost"])
        echo_once(bypassing, localhost(echo_server))
    finally:
        adapter.abort()
    assert [(r.username, r.password) for r in auth_proxy.requests] == [CREDENTIALS]
    with pytest.raises(ConfigError, match="once"):
        WebsocketClientAdapter(proxy=None, http_proxy_host="127.0.0.1", http_proxy_port=1)


def test_websocket_client_sslopt_still_works_and_clashes_with_ssl(
    http_proxy: ConnectProxy, wss_echo_server: WsServer, tls: TlsMaterial
) -> None:
    """sslopt (ca_certs, context) still configures TLS, through a proxy too; sslopt with
    ssl= is a ConfigError, as is an unknown sslopt key."""
    for sslopt in ({"ca_certs": tls.ca_path}, {"context": tls.client_context}):
        adapter = WebsocketClientAdapter(proxy=http_proxy.url("http"), sslopt=sslopt)
        echo_once(adapter, wss_echo_server.url)
    assert http_proxy.tunnels == 2
    insecure = WebsocketClientAdapter(sslopt={"cert_reqs": ssl.CERT_NONE})
    echo_once(insecure, wss_echo_server.url)
    with pytest.raises(ConfigError, match="once"):
        WebsocketClientAdapter(ssl=tls.client_context, sslopt={"ca_certs": tls.ca_path})
    with pytest.raises(ConfigError, match="ca_cert'"):
        WebsocketClientAdapter(sslopt={"ca_cert": tls.ca_path})


# -- through the engine: fatal 407, nothing leaks -----------------------------------------


def test_a_407_on_first_start_fails_start_with_the_status(
    make: Callable[..., DrivenAdapter], auth_proxy: ConnectProxy, echo_server: WsServer
) -> None:
    """start() through a proxy answering 407 raises EngineStartError whose cause is
    HandshakeError(status=407); one request reached the proxy."""
    engine = WebsocketEngine(echo_server.url, Recorder(), config=FAST,
                             adapter=make(proxy=auth_proxy.url("http")))
    with pytest.raises(EngineStartError) as info:
        engine.start()
    cause = info.value.__cause__
    assert isinstance(cause, HandshakeError) and cause.status == 407
    stop_and_check(engine)
    assert len(auth_proxy.requests) == 1


def test_a_407_while_reconnecting_is_fatal_and_not_retried(
    make: Callable[..., DrivenAdapter], echo_server: WsServer
) -> None:
    """The proxy starts answering 407 after the first connection: the restart fails once
    with HandshakeError(407) and the engine stops for good, with no second attempt."""
    with ConnectProxy() as proxy:
        client = Recorder()
        engine = WebsocketEngine(echo_server.url, client, config=FAST,
                                 adapter=make(proxy=proxy.url("http")))
        engine.start()
        proxy.refuse_with = 407
        session = engine.session
        assert session is not None
        session.restart()
        assert engine.wait(5)
        assert engine.state is EngineState.STOPPED
        errors = client.details("restart_error")
        assert len(errors) == 1 and errors[0][0].status == 407
        stop_and_check(engine)
        assert [r.answer for r in proxy.requests] == [200, 407]


def test_proxy_credentials_never_reach_logs_errors_or_spans(
    make: Callable[..., DrivenAdapter],
    caplog: pytest.LogCaptureFixture,
    echo_server: WsServer,
) -> None:
    """E16: with every logger at DEBUG (websocket-client's trace on too), a dial through
    an authenticating HTTP proxy and a SOCKS5 one, and a start refused with 407, leave
    no trace of the password (plain or Base64) in log records, errors or spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caplog.set_level(logging.DEBUG)
    websocket.enableTrace(True, handler=logging.NullHandler())
    texts: list[str] = []
    try:
        with ConnectProxy(credentials=CREDENTIALS) as http, \
                SocksProxy(credentials=CREDENTIALS) as socks:
            for url in (http.url("http", CREDENTIALS), socks.url("socks5h", CREDENTIALS)):
                adapter = make(proxy=url)
                texts.append(repr(adapter))
                echo_once(adapter, echo_server.url)
            refused = make(proxy=http.url("http", (USER, PASSWORD + "x")))
            engine = WebsocketEngine(echo_server.url, Recorder(), config=FAST,
                                     adapter=refused, tracer_provider=provider)
            with pytest.raises(EngineStartError) as info:
                engine.start()
            stop_and_check(engine)
            assert http.tunnels == 1 and socks.tunnels == 1
    finally:
        websocket.enableTrace(False)
        provider.shutdown()
    error: BaseException | None = info.value
    while error is not None:
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        texts += [repr(dict(span.attributes or {})), str(span.status.description)]
        texts += [repr(dict(event.attributes or {})) for event in span.events]
    assert any("407" in text for text in texts)
    leaks = [text for text in texts if any(secret in text for secret in SECRETS)]
    assert leaks == []


# -- a third-party proxy: pproxy ----------------------------------------------------------


@pytest.fixture
def pproxy_server() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """pproxy (from PyPI) serving HTTP CONNECT and SOCKS5 with credentials on 127.0.0.1, in
    a process of its own, verbose: it prints one line per tunnel."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    command = [sys.executable, "-m", "pproxy", "-l",
               f"http+socks5://127.0.0.1:{port}#me:pproxy-secret", "-v"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        assert process.stdout is not None
        assert "Serving on" in process.stdout.readline()
        yield port, process
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_through_pproxy_with_credentials(
    make: Callable[..., DrivenAdapter], pproxy_server: tuple[int, subprocess.Popen[str]],
    echo_server: WsServer, scheme: str,
) -> None:
    """A real third-party proxy (pproxy), HTTP CONNECT and SOCKS5, with credentials: the
    message goes through, and pproxy's own log shows the tunnel to the server."""
    port, process = pproxy_server
    echo_once(make(proxy=f"{scheme}://me:pproxy-secret@127.0.0.1:{port}"), echo_server.url)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith(f"{scheme} 127.0.0.1:")
    assert line.endswith(f"-> 127.0.0.1:{echo_server.port}")
