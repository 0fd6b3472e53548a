"""Draws docs/img/perf-*.png from the tables in docs/PERFORMANCE.md (it measures nothing itself).

    .venv/bin/python scripts/plot_performance.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PERFORMANCE.md"
IMG = ROOT / "docs" / "img"


def table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first markdown table after ``heading``."""
    lines = text[text.index(heading):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def seconds(cell: str) -> float:
    return float(cell.removesuffix(" s"))


def main() -> None:
    text = DOC.read_text()
    IMG.mkdir(parents=True, exist_ok=True)

    speed = table(text, "## Density network: throughput")
    batches = sorted({int(r[0]) for r in speed})
    variants = list(dict.fromkeys(r[1].split(" (")[0].replace(", M=4", "") for r in speed))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(batches)
    for j, b in enumerate(batches):
        fps = [float(r[2]) for r in speed if int(r[0]) == b]
        ax.barh([i + j * width for i in range(len(variants))], fps, height=width, label=f"batch {b}")
    ax.set_yticks([i + width * (len(batches) - 1) / 2 for i in range(len(variants))], variants)
    ax.invert_yaxis()
    ax.set_xlabel("frames/s, 768x1024, 2 CPU cores")
    ax.set_title("Density network throughput (bench/model_speed.py)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(IMG / "perf-model-speed.png", dpi=100)

    capacity = table(text, "## End to end: how many 720p cameras")
    cams = [int(r[0]) for r in capacity]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(cams, [seconds(r[3]) for r in capacity], "o-", label="p50 latency")
    ax.plot(cams, [seconds(r[4]) for r in capacity], "s-", label="p95 latency")
    for c, r in zip(cams, capacity):
        if r[2] != "none":
            ax.annotate("drops frames", (c, seconds(r[4])), textcoords="offset points", xytext=(-80, -4))
    ax.set_xlabel("720p synthetic cameras at 1 fps")
    ax.set_ylabel("capture to metrics (s)")
    ax.set_xticks(cams)
    ax.set_title("End to end, 2 CPU cores (bench/e2e_capacity.py)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(IMG / "perf-capacity.png", dpi=100)


if __name__ == "__main__":
    main()
