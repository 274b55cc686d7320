# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""A fault-injecting TCP proxy on 127.0.0.1, for the network faults of RELIABILITY.md.

Each accepted connection (a *link*) is dialled through to the upstream server and pumped by
two threads, one per direction: ``UP`` carries what the client sends to the server, ``DOWN``
what the server sends to the client. Each direction of each link follows a :class:`Mode`
that a test may change at any time; new links start with the proxy's default modes.

Modes (per direction):

- ``pass``: forward as it comes.
- ``latency``: hold each chunk ``latency ± jitter`` seconds (seeded), keeping byte order.
- ``black_hole``: read and discard; nothing is forwarded, both sockets stay open (a
  network partition: no FIN, no RST; an EOF is noted, not forwarded).
- ``freeze``: stop reading (and forwarding): the sender's TCP window fills up.
- ``slice``: forward in chunks of ``min_chunk``-``max_chunk`` bytes (seeded), each its own
  ``send`` with TCP_NODELAY, ``chunk_delay`` seconds apart.
- ``limit``: forward ``limit`` more bytes, then close the link (FIN both ways).

Link-wide faults: :meth:`FaultProxy.reset` (RST both ways, via ``SO_LINGER`` 0) and
:meth:`FaultProxy.drop` (FIN both ways). :meth:`FaultProxy.heal` puts everything back to
``pass``.

Bounded: at most ``max_connections`` links at once (later ones are closed at once), and
the proxy stops by itself ``lifetime`` seconds after it started; it also stops on context
exit, closing every socket and joining every thread it started.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import ipaddress
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Direction", "FaultProxy", "LinkStats", "Mode", "Scope"]

#: Seconds a proxy thread waits at most without looking at its link's state again.
_POLL_SLICE = 0.1
#: Bytes a direction holds at most (latency, slicing) before it stops reading its source.
_PENDING_CAP = 1 << 20
_RECV_SIZE = 65536
#: Seconds close() waits for the proxy's threads.
JOIN_DEADLINE = 5.0
#: Finished links whose stats are kept (older ones are forgotten: soak runs make 10 000).
_HISTORY = 1000


class Direction(enum.Flag):
    """Which way the bytes go."""

    UP = enum.auto()  # client -> server
    DOWN = enum.auto()  # server -> client
    BOTH = UP | DOWN


class Scope(enum.Enum):
    """Which links a mode change applies to."""

    ALL = "all"  # links open now, and the default for later ones
    EXISTING = "existing"  # links open now only
    NEW = "new"  # later links only (the default)


@dataclass(frozen=True)
class Mode:
    """What one direction of a link does with the bytes it reads."""

    kind: str = "pass"
    latency: float = 0.0
    jitter: float = 0.0
    min_chunk: int = 1
    max_chunk: int = 3
    chunk_delay: float = 0.0
    limit: int = 0


PASS = Mode()


@dataclass(frozen=True)
class LinkStats:
    """What one link did, for assertions."""

    number: int
    bytes_up: int
    bytes_down: int
    #: The client closed its side (FIN or RST seen by the proxy).
    client_gone: bool
    #: The server closed its side.
    server_gone: bool
    closed: bool


class _Pending:
    __slots__ = ("data", "due")

    def __init__(self, due: float, data: bytes) -> None:
        self.due = due
        self.data = data


class _Link:
    """One proxied connection: a client socket, an upstream socket, two pump threads."""

    def __init__(self, proxy: FaultProxy, number: int, client: socket.socket,
                 upstream: socket.socket, modes: dict[Direction, Mode]) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.upstream = upstream
        # Guarded by proxy._lock: the mode of each direction and a generation number that
        # tells a pump the mode changed (limits count from the change).
        self.modes = dict(modes)
        self.generation = {Direction.UP: 0, Direction.DOWN: 0}
        self.bytes = {Direction.UP: 0, Direction.DOWN: 0}
        self.client_gone = False
        self.server_gone = False
        # Set once: the pumps leave; how the sockets end (RST or FIN).
        self.stopping = False
        self.reset_requested = False
        self.closed = threading.Event()
        # One wake-up pair per pump: mode changes and stop requests poke both.
        self.wakes = {d: socket.socketpair() for d in (Direction.UP, Direction.DOWN)}
        for pair in self.wakes.values():
            for end in pair:
                end.setblocking(False)
        self._pumps_left = 2
        self.threads: list[threading.Thread] = []

    def stats(self) -> LinkStats:
        return LinkStats(self.number, self.bytes[Direction.UP], self.bytes[Direction.DOWN],
                         self.client_gone, self.server_gone, self.closed.is_set())

    def wake(self) -> None:
        for _, writer in self.wakes.values():
            with contextlib.suppress(OSError):
                writer.send(b"\0")

    def stop(self, *, reset: bool = False) -> None:
        """Make both pumps leave; the last one closes the sockets (RST when ``reset``)."""
        with self.proxy._lock:
            self.stopping = True
            self.reset_requested = self.reset_requested or reset
        self.wake()

    def pump_done(self) -> None:
        with self.proxy._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
            reset = self.reset_requested
        if not last:
            return
        for sock in (self.client, self.upstream):
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for pair in self.wakes.values():
            for end in pair:
                end.close()
        self.proxy._link_closed(self)
        self.closed.set()


class _Pump:
    """Moves the bytes of one direction of a link, following that direction's mode."""

    def __init__(self, link: _Link, direction: Direction, seed: int) -> None:
        self.link = link
        self.direction = direction
        up = direction is Direction.UP
        self.src = link.client if up else link.upstream
        self.dst = link.upstream if up else link.client
        self.wake_r = link.wakes[direction][0]
        self.rng = random.Random(seed)
        self.pending: collections.deque[_Pending] = collections.deque()
        self.pending_bytes = 0
        self.last_due = 0.0
        self.src_eof = False
        self.generation = -1
        self.taken = 0  # bytes read since the mode changed (for limit)
        self.poller = select.poll()

    def run(self) -> None:
        try:
            self._loop()
        except OSError:
            # A socket died under us (reset by a peer, or closed by stop()): end the link.
            self.link.stop()
        finally:
            self.link.pump_done()

    def _mode(self) -> Mode:
        link = self.link
        with link.proxy._lock:
            mode = link.modes[self.direction]
            generation = link.generation[self.direction]
            stopping = link.stopping
        if generation != self.generation:
            self.generation = generation
            self.taken = 0
        if stopping:
            return Mode("stop")
        return mode

    def _loop(self) -> None:
        link = self.link
        while True:
            mode = self._mode()
            kind = mode.kind
            if kind == "stop":
                return
            if kind == "reset":
                link.stop(reset=True)
                return
            if kind == "black_hole":
                self.pending.clear()
                self.pending_bytes = 0
            forwarding = kind not in ("black_hole", "freeze")
            now = time.monotonic()
            if forwarding and self.pending and self.pending[0].due <= now:
                if self._send_head():
                    continue
                want_out = True
            else:
                want_out = False
            if forwarding and not self.pending:
                if self.src_eof:
                    # Everything read is forwarded: pass the FIN on; this direction is done.
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                if kind == "limit" and self.taken >= mode.limit:
                    link.stop()
                    return
            reading = (
                kind != "freeze"
                and not self.src_eof
                and self.pending_bytes < _PENDING_CAP
                and not (kind == "limit" and self.taken >= mode.limit)
            )
            timeout = _POLL_SLICE
            if forwarding and self.pending and not want_out:
                timeout = min(timeout, max(0.0, self.pending[0].due - now))
            self._wait(reading, want_out, timeout)

    def _wait(self, reading: bool, want_out: bool, timeout: float) -> None:
        poller = self.poller
        src_fd = self.src.fileno()
        dst_fd = self.dst.fileno()
        wake_fd = self.wake_r.fileno()
        registered: dict[int, int] = {wake_fd: select.POLLIN}
        if reading:
            registered[src_fd] = select.POLLIN
        if want_out:
            registered[dst_fd] = registered.get(dst_fd, 0) | select.POLLOUT
        for fd, events in registered.items():
            poller.register(fd, events)
        try:
            ready = dict(poller.poll(max(0, int(timeout * 1000 + 0.999))))
        finally:
            for fd in registered:
                poller.unregister(fd)
        if wake_fd in ready:
            with contextlib.suppress(OSError):
                while self.wake_r.recv(4096):
                    pass
        if reading and src_fd in ready:
            self._receive()

    def _receive(self) -> None:
        link = self.link
        try:
            data = self.src.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except ConnectionResetError:
            # Pass a reset on as a reset.
            data = b""
            link.stop(reset=True)
        except OSError:
            data = b""
        if not data:
            self.src_eof = True
            with link.proxy._lock:
                if self.direction is Direction.UP:
                    link.client_gone = True
                else:
                    link.server_gone = True
            return
        mode = self._mode()
        self._ingest(data, mode)

    def _ingest(self, data: bytes, mode: Mode) -> None:
        kind = mode.kind
        now = time.monotonic()
        if kind == "black_hole":
            with self.link.proxy._lock:
                self.link.proxy._count(self.direction, len(data), dropped=True)
            return
        if kind == "limit":
            allowed = max(0, mode.limit - self.taken)
            data = data[:allowed]
            self.taken += len(data)
            if data:
                self._append(now, data)
            return
        self.taken += len(data)
        if kind == "latency":
            delay = max(0.0, mode.latency + self.rng.uniform(-mode.jitter, mode.jitter))
            self._append(max(self.last_due, now + delay), data)
        elif kind == "slice":
            due = max(self.last_due, now)
            position = 0
            while position < len(data):
                size = self.rng.randint(mode.min_chunk, mode.max_chunk)
                due += mode.chunk_delay
                self._append(due, data[position:position + size])
                position += size
        else:
            self._append(max(self.last_due, now), data)

    def _append(self, due: float, data: bytes) -> None:
        self.pending.append(_Pending(due, data))
        self.pending_bytes += len(data)
        self.last_due = due

    def _send_head(self) -> bool:
        """Send what is due at the head of the queue; False if the socket is full."""
        head = self.pending[0]
        try:
            sent = self.dst.send(head.data)
        except BlockingIOError:
            return False
        link = self.link
        with link.proxy._lock:
            link.bytes[self.direction] += sent
            link.proxy._count(self.direction, sent)
        self.pending_bytes -= sent
        if sent == len(head.data):
            self.pending.popleft()
        else:
            head.data = head.data[sent:]
        return True


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>`` with faults.

    Use it as a context manager (or call :meth:`start` and :meth:`close`).

    Args:
        upstream_port: the server's port on ``upstream_host``.
        upstream_host: must be a loopback address.
        max_connections: links open at once, at most; later connections are closed at once.
        lifetime: seconds after :meth:`start` when the proxy stops by itself.
        seed: seeds the latency jitter and slice sizes, so a run can be replayed.
        scheme: ``ws`` or ``wss``, for :attr:`url`.
    """

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1",
                 max_connections: int = 16, lifetime: float = 30.0, seed: int = 0,
                 scheme: str = "ws") -> None:
        if not ipaddress.ip_address(upstream_host).is_loopback:
            raise ValueError(f"the proxy only forwards to loopback, not {upstream_host}")
        self.upstream = (upstream_host, upstream_port)
        self.max_connections = max_connections
        self.lifetime = lifetime
        self._seed = seed
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self.listener.getsockname()[1]
        self.url = f"{scheme}://{self.host}:{self.port}/"
        # Guards modes, links and counters; `changed` is notified when a link opens or
        # closes and when bytes move, for tests waiting on counters.
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._defaults = {Direction.UP: PASS, Direction.DOWN: PASS}
        self._reset_new = False
        self._links: list[_Link] = []
        self._history: collections.deque[LinkStats] = collections.deque(maxlen=_HISTORY)
        #: Connections accepted (refused ones included) and links made, since the start.
        self.accepted = 0
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        #: Bytes read and discarded by black holes, per direction.
        self.dropped = {Direction.UP: 0, Direction.DOWN: 0}
        self._stop_r, self._stop_w = socket.socketpair()
        self._closed = False
        self._deadline = 0.0
        # The accept loop; ends on close() or when the lifetime is over. Joined by close().
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="test-proxy-accept", daemon=True
        )
        # Pump threads of live links (finished ones are pruned); joined by close().
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._deadline = time.monotonic() + self.lifetime
        self._accept_thread.start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(check=exc_type is None)

    def close(self, *, check: bool = True) -> None:
        """Stop accepting, close every link (FIN) and join every thread. Idempotent.

        Raises:
            AssertionError: a thread did not end within ``JOIN_DEADLINE`` (when ``check``).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
        if self._accept_thread.ident is not None:
            self._accept_thread.join(JOIN_DEADLINE)
        self._stop_links()
        deadline = time.monotonic() + JOIN_DEADLINE
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.listener.close()
        self._stop_r.close()
        self._stop_w.close()
        alive = [t.name for t in [self._accept_thread, *threads] if t.is_alive()]
        if check and alive:
            raise AssertionError(f"proxy threads still running: {alive}")

    def _stop_links(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.stop()

    # -- faults --------------------------------------------------------------------------

    def set_mode(self, mode: Mode, direction: Direction = Direction.BOTH,
                 scope: Scope = Scope.ALL) -> None:
        """Make ``direction`` follow ``mode`` on the links ``scope`` names."""
        directions = [d for d in (Direction.UP, Direction.DOWN) if d in direction]
        with self._lock:
            if scope is not Scope.EXISTING:
                for d in directions:
                    self._defaults[d] = mode
            links = list(self._links) if scope is not Scope.NEW else []
            for link in links:
                for d in directions:
                    link.modes[d] = mode
                    link.generation[d] += 1
        for link in links:
            link.wake()

    def heal(self, scope: Scope = Scope.ALL) -> None:
        """Back to ``pass`` both ways (and no more resets of new connections)."""
        with self._lock:
            if scope is not Scope.EXISTING:
                self._reset_new = False
        self.set_mode(PASS, Direction.BOTH, scope)

    def latency(self, seconds: float, jitter: float = 0.0,
                direction: Direction = Direction.BOTH, scope: Scope = Scope.ALL) -> None:
        """Delay every chunk by ``seconds ± jitter`` (uniform, seeded); order is kept."""
        self.set_mode(Mode("latency", latency=seconds, jitter=jitter), direction, scope)

    def black_hole(self, direction: Direction = Direction.BOTH,
                   scope: Scope = Scope.ALL) -> None:
        """Read and discard; forward nothing, not even a FIN; keep the sockets open."""
        self.set_mode(Mode("black_hole"), direction, scope)

    def freeze(self, direction: Direction, scope: Scope = Scope.ALL) -> None:
        """Stop reading ``direction``'s source, so its sender's window fills up."""
        self.set_mode(Mode("freeze"), direction, scope)

    def slice(self, min_chunk: int = 1, max_chunk: int = 3, delay: float = 0.001,
              direction: Direction = Direction.DOWN, scope: Scope = Scope.ALL) -> None:
        """Forward in chunks of ``min_chunk``-``max_chunk`` bytes, ``delay`` s apart."""
        self.set_mode(
            Mode("slice", min_chunk=min_chunk, max_chunk=max_chunk, chunk_delay=delay),
            direction, scope,
        )

    def limit_data(self, limit: int, direction: Direction = Direction.DOWN,
                   scope: Scope = Scope.ALL) -> None:
        """Forward ``limit`` more bytes (counted per link from now, or from its start for
        later links), then close the link with a FIN both ways."""
        self.set_mode(Mode("limit", limit=limit), direction, scope)

    def reset(self, scope: Scope = Scope.EXISTING) -> None:
        """Reset links (RST both ways, ``SO_LINGER`` 0); with ``Scope.ALL``/``NEW`` later
        connections are reset as soon as they are accepted, until :meth:`heal`."""
        with self._lock:
            if scope is not Scope.EXISTING:
                self._reset_new = True
            links = list(self._links) if scope is not Scope.NEW else []
        for link in links:
            link.stop(reset=True)

    def drop(self) -> None:
        """Close every open link with a FIN both ways (no close frame, no RST)."""
        self._stop_links()

    # -- observation ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Links open now."""
        with self._lock:
            return len(self._links)

    def links(self) -> list[LinkStats]:
        """Stats of the recent finished links and the open ones, oldest first."""
        with self._lock:
            return sorted([*self._history, *(link.stats() for link in self._links)],
                          key=lambda s: s.number)

    def link(self, number: int) -> LinkStats:
        """Stats of link ``number`` (1 for the first)."""
        for stats in self.links():
            if stats.number == number:
                return stats
        raise KeyError(number)

    def wait(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true (checked whenever a counter moves).

        Raises:
            AssertionError: not true within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"proxy condition not met within {timeout} s")
            with self.changed:
                # A notification missed between the check and here costs one slice at most.
                self.changed.wait(min(left, _POLL_SLICE))

    # -- internals -----------------------------------------------------------------------

    def _count(self, direction: Direction, size: int, *, dropped: bool = False) -> None:
        """Add ``size`` forwarded (or dropped) bytes; ``_lock`` must be held."""
        if dropped:
            self.dropped[direction] += size
        elif direction is Direction.UP:
            self.bytes_up += size
        else:
            self.bytes_down += size
        self.changed.notify_all()

    def _link_closed(self, link: _Link) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)
            self._history.append(dataclasses.replace(link.stats(), closed=True))
            self.changed.notify_all()

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    return
                events = dict(poller.poll(int(min(left, 1.0) * 1000) + 1))
                if self._stop_r.fileno() in events:
                    return
                if self.listener.fileno() in events:
                    self._accept_one()
                with self._lock:
                    self._threads = [t for t in self._threads if t.is_alive()]
        finally:
            # Lifetime over, or close(): no link outlives the accept loop.
            self._stop_links()

    def _accept_one(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        with self._lock:
            self.accepted += 1
            full = len(self._links) >= self.max_connections
            reset_new = self._reset_new
            self.changed.notify_all()
        if full or reset_new:
            if reset_new:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=2.0)
        except OSError:
            # Server down: the client sees its connection closed right after it opened.
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            number = self.connections
            link = _Link(self, number, client, upstream, self._defaults)
            self._links.append(link)
            self.changed.notify_all()
        directions = ((Direction.UP, "up"), (Direction.DOWN, "down"))
        for index, (direction, label) in enumerate(directions):
            pump = _Pump(link, direction, seed=self._seed * 1_000_003 + number * 2 + index)
            thread = threading.Thread(
                target=pump.run,
                name=f"test-proxy-{number}-{label}",
                daemon=True,
            )
            link.threads.append(thread)
        with self._lock:
            self._threads.extend(link.threads)
        for thread in link.threads:
            thread.start()
