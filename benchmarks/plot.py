# SPDX-License-Identifier: Apache-2.0
# Copyright The wsengine authors
"""The receive-throughput plot used by the docs: messages per second by message size,
one line per client (median of the repetitions, bars from min to max), one panel per
message type. Written by ``python -m benchmarks --figures throughput --plot FILE.png``, or
redrawn from a saved report with ``python -m benchmarks.plot results.json FILE.png``.
Needs matplotlib (extra ``bench``).
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["main", "write_plot"]

#: Line style per client family: wsengine solid and marked, peers dashed.
_ENGINE_PREFIX = "wsengine"


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def write_plot(cases: list[dict[str, Any]], clients: list[str], path: Path,
               title: str) -> None:
    """Draw ``cases`` (``{"size", "type", "rates": {client: [msg/s, ...]}}``) to ``path``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    kinds = [k for k in ("text", "binary") if any(c["type"] == k for c in cases)]
    figure, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 4.6), squeeze=False,
                                sharey=True)
    sizes = sorted({c["size"] for c in cases})
    for axis, kind in zip(axes[0], kinds, strict=True):
        for client in clients:
            points = []
            for case in sorted((c for c in cases if c["type"] == kind), key=lambda c: c["size"]):
                rates = case["rates"].get(client)
                if rates:
                    median = statistics.median(rates)
                    points.append((case["size"], median, median - min(rates),
                                   max(rates) - median))
            if not points:
                continue
            xs, ys, below, above = zip(*points, strict=True)
            engine = client.startswith(_ENGINE_PREFIX)
            axis.errorbar(xs, ys, yerr=[below, above], label=client, capsize=3,
                          linestyle="-" if engine else "--", marker="o" if engine else "s",
                          linewidth=2.2 if engine else 1.3, markersize=5)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sizes, [_size_label(s) for s in sizes])
        axis.set_xlabel("message size")
        axis.set_title(f"receive, {kind}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("messages per second (median, min-max)")
    axes[0][-1].legend(fontsize=8, loc="best")
    figure.suptitle(textwrap.fill(title, 60 * len(kinds)), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m benchmarks.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    raw = json.loads(Path(args[0]).read_text())
    cases = raw["throughput"]
    clients = list(dict.fromkeys(c for case in cases for c in case["rates"]))
    write_plot(cases, clients, Path(args[1]), raw.get("versions", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
