# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""Read the console exporter's spans (the example's stdout) and print them as trees.

::

    python -m example --count 7 --interval 0.2 --pause-for 0.5 > spans.json
    python -m example.spantree spans.json --limit 4

prints each trace as a tree of span names, children in start order, with durations, the
attributes worth reading and the span events (see the example's ``README.rst``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

__all__ = ["Span", "parse_spans", "render_trees"]

#: One span as the console exporter prints it (``ReadableSpan.to_json()``), decoded.
Span = dict[str, Any]

#: Attributes that every span of a trace repeats, or that say little: left out of the tree.
_QUIET_ATTRIBUTES = frozenset(
    {"url.full", "url.scheme", "network.protocol.name", "network.transport", "server.address",
     "server.port"}
)


def parse_spans(text: str) -> list[Span]:
    """The spans in ``text``: the console exporter's JSON objects, one after the other.

    Raises:
        ValueError: ``text`` holds something else.
    """
    decoder = json.JSONDecoder()
    spans: list[Span] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return spans
        span, position = decoder.raw_decode(text, position)
        if not isinstance(span, dict) or "context" not in span:
            raise ValueError(f"not a span at character {position}")
        spans.append(span)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _describe(span: Span) -> str:
    start, end = _time(span["start_time"]), _time(span["end_time"])
    parts = [span["name"], f"{(end - start).total_seconds() * 1e3:.1f} ms"]
    attributes = span.get("attributes") or {}
    parts += [f"{key}={value}" for key, value in attributes.items()
              if key not in _QUIET_ATTRIBUTES]
    status = (span.get("status") or {}).get("status_code")
    if status == "ERROR":
        parts.append("status=ERROR")
    events = [
        f"{event['name']} +{(_time(event['timestamp']) - start).total_seconds() * 1e3:.1f} ms"
        for event in span.get("events") or []
    ]
    if events:
        parts.append(f"events: {', '.join(events)}")
    return "  ".join(parts)


def render_trees(spans: Sequence[Span], limit: int | None = None) -> str:
    """Each trace of ``spans`` as an indented tree, roots and children in start order.

    Args:
        spans: as :func:`parse_spans` returns them.
        limit: show at most this many children of a span, then count the others.
    """
    by_id = {span["context"]["span_id"]: span for span in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.get("parent_id")
        children.setdefault(parent if parent in by_id else None, []).append(span)
    for group in children.values():
        group.sort(key=lambda span: span["start_time"])

    def lines(span: Span, prefix: str) -> Iterator[str]:
        kids = children.get(span["context"]["span_id"], [])
        shown = kids if limit is None else kids[:limit]
        hidden = len(kids) - len(shown)
        for index, kid in enumerate(shown):
            last = index == len(shown) - 1 and not hidden
            yield f"{prefix}{'└── ' if last else '├── '}{_describe(kid)}"
            yield from lines(kid, prefix + ("    " if last else "│   "))
        if hidden:
            yield f"{prefix}└── ... {hidden} more"

    out: list[str] = []
    for root in children.get(None, []):
        out.append(f"trace {root['context']['trace_id']}")
        out.append(_describe(root))
        out.extend(lines(root, ""))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the trees of the spans in a file (or stdin); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m example.spantree",
        description="Print the console exporter's spans as trees.",
    )
    parser.add_argument("file", nargs="?", help="the example's stdout; default stdin")
    parser.add_argument("--limit", type=int, default=None,
                        help="children shown per span (default all)")
    args = parser.parse_args(argv)
    if args.file is None:
        text = sys.stdin.read()
    else:
        with open(args.file, encoding="utf-8") as stream:
            text = stream.read()
    try:
        spans = parse_spans(text)
    except ValueError as error:
        print(f"python -m example.spantree: {error}", file=sys.stderr)
        return 1
    print(render_trees(spans, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
