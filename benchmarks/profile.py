# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Profile one benchmark client run with py-spy and summarise where its threads spend time.

::

    python -m benchmarks.profile echo wsengine-w1            # a probe figure, one client
    python -m benchmarks.profile throughput wsengine-otel --size 32 --type binary
    python -m benchmarks.profile send wsengine --threads 4 --size 32     # the send figure

It starts the same server as the benchmark does, runs the client process under
``py-spy record`` (sampling every thread, idle samples included, so waits show up), and
prints, per thread, the functions with the largest share of samples: ``self`` (the
sampled frame itself) and ``total`` (anywhere on the stack). The raw collapsed stacks are
kept (``--out``) for a flame graph. Needs ``py-spy`` (``pip install py-spy``) and the right
to trace a child process (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.figures import plan
from benchmarks.servers import ROOT, CountServer, EchoServer, FloodServer

__all__ = ["main", "summarise"]

_THREAD = re.compile(r"^(?:process \d+:\S*;)?thread \((0x[0-9a-fA-F]+)\)")


_ROLES = (("Dispatcher._work", "engine worker"), ("work", "sender"),
          ("WebsocketEngine._supervise", "supervisor"),
          ("BatchProcessor.worker", "OTel batch exporter"), ("_run_module_as_main", "main"),
          ("Thread.run", "other thread"))


def summarise(collapsed: str, top: int) -> str:
    """Per-thread self/total shares from py-spy's collapsed (``--format raw``) stacks."""
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    exclusive: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    roles: dict[str, str] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (")), "thread (?)")
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if thread not in roles:
            for marker, role in _ROLES:
                if any(f.startswith(marker + " ") for f in frames):
                    roles[thread] = role
                    break
        totals[thread] += count
        functions = [_short(f) for f in frames]
        for function in set(functions):
            inclusive[thread][function] += count
        if functions:
            exclusive[thread][functions[-1]] += count
    grand = sum(totals.values()) or 1
    lines = []
    for thread, samples in totals.most_common():
        role = roles.get(thread, "?")
        lines.append(f"\n{role} {thread}: {samples} samples ({100 * samples / grand:.1f}% of all)")
        lines.append(f"  {'self %':>7}  {'total %':>7}  function")
        ranked = sorted(inclusive[thread], key=lambda f: (-exclusive[thread][f],
                                                          -inclusive[thread][f]))
        for function in ranked[:top]:
            lines.append(f"  {100 * exclusive[thread][function] / samples:7.1f}  "
                         f"{100 * inclusive[thread][function] / samples:7.1f}  {function}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``function (path/to/file.py:123)`` -> ``function (file.py:123)``."""
    match = re.match(r"^(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not match:
        return frame
    function, path, line = match.groups()
    short = "/".join(Path(path).parts[-2:])
    return f"{function} ({short}{':' + line if line else ''})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("figure", help="echo, reconnect, stop, rss, many, throughput or send")
    parser.add_argument("client")
    parser.add_argument("--size", default="1024", help="throughput: message size in bytes")
    parser.add_argument("--type", default="text", choices=("text", "binary"))
    parser.add_argument("--count", type=int, default=300_000, help="throughput: messages")
    parser.add_argument("--samples", type=int, default=None, help="probe samples")
    parser.add_argument("--threads", type=int, default=1, help="send: sending threads")
    parser.add_argument("--rate", type=int, default=2000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15, help="functions per thread")
    parser.add_argument("--lines", action="store_true", help="keep line numbers apart")
    parser.add_argument("--no-idle", action="store_true",
                        help="leave out idle samples (threads blocked in a wait)")
    parser.add_argument("--blocking", action="store_true",
                        help="pause the client for each sample: exact stacks, slower run "
                             "(default: --nonblocking, stacks may mix frames now and then)")
    parser.add_argument("--out", type=Path, default=None, help="keep the collapsed stacks")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        parser.error("py-spy is not installed (pip install py-spy)")

    server: EchoServer | FloodServer | CountServer
    if args.figure == "send":
        size = int(args.size)
        count = args.count // args.threads * args.threads
        server = CountServer(size, count, deadline=args.timeout + 5)
        child = ["-m", "benchmarks.senders", "--client", args.client, "--url", server.url,
                 "--count", str(count), "--size", str(size), "--threads", str(args.threads)]
    elif args.figure == "throughput":
        size = int(args.size)
        server = FloodServer("flood", size, args.type, args.count, deadline=args.timeout + 5)
        child = ["-m", "benchmarks.clients", "--client", args.client, "--url", server.url,
                 "--count", str(args.count)]
    else:
        setup = plan(args.figure, 1, quick=False)
        if setup.server == "echo":
            server = EchoServer(args.timeout + 5)
        else:
            server = FloodServer("flood", 65536, "text", 0, args.timeout + 5)
        arguments = list(setup.arguments)
        if args.samples is not None:
            arguments[arguments.index("--samples") + 1] = str(args.samples)
        child = ["-m", "benchmarks.probes", "--figure", args.figure, "--client", args.client,
                 "--url", server.url, *arguments]
    with tempfile.TemporaryDirectory() as folder:
        out = args.out or Path(folder) / "stacks.txt"
        command = [spy, "record", "--format", "raw", "--threads", "--rate", str(args.rate),
                   "--output", str(out)]
        if not args.blocking:
            command.append("--nonblocking")
        if not args.no_idle:
            command.append("--idle")
        if not args.lines:
            command.append("--function")  # one entry per function, not per line
        command += ["--", sys.executable, *child, "--timeout", str(args.timeout)]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=args.timeout + 20)
        finally:
            server.close()
        result = [line for line in done.stdout.splitlines() if line.startswith("{")]
        print(f"client result: {(result[-1] if result else done.stderr.strip()[-300:])[:300]}")
        if not out.exists():
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        print(summarise(out.read_text(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
