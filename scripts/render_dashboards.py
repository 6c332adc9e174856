"""Draw the Grafana dashboards (deploy/grafana/dashboards) as PNGs from live Prometheus data.

Grafana itself cannot be installed here (no Debian package, nothing on PyPI or npm that runs the
server), so this runs every panel's PromQL against a real Prometheus and lays the panels out on the
dashboard's own 24-column grid with matplotlib: time series per legend, stat panels as big numbers,
bar gauges as bars. It reads the same JSON Grafana provisions, so a panel that renders here is a
query that works there.

By default it starts its own stack (free ports, a temp dir), Prometheus and a few rounds of the demo
traffic, renders docs/dashboards/<dashboard>.png and stops it all (``make dashboards``, ~3 min);
``--prometheus URL`` renders from a Prometheus that is already running (``make up``/``make demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: draw to files
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from factura.devstack import prometheus
from factura.devstack.config import StackConfig
from factura.devstack.dashboards import executable, load, panels
from factura.devstack.flow import publish, wait_for_outcomes
from factura.devstack.prometheus import Client
from factura.devstack.samples import Sample, demo_samples
from factura.devstack.stack import Stack

OUT = Path(__file__).resolve().parents[1] / "docs" / "dashboards"
BG, PANEL, TEXT, MUTED = "#111217", "#181b1f", "#d8d9da", "#8e8e8e"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#96d98d", "#ffb357"]
ROW_INCHES = 0.36  # one Grafana grid row (30 px) at the figure's scale


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format; the label set itself when there is no format."""
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt).strip()
    return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def human(value: float, unit: str, decimals: int | None = None) -> str:
    """A value the way Grafana's unit would show it."""
    if math.isnan(value):  # no observation in the window
        return "–"
    units = {
        "percentunit": lambda v: f"{v * 100:.1f}%",
        "s": lambda v: f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s",
        "bytes": lambda v: f"{v / 2**20:.0f} MiB",
        "ops": lambda v: f"{v:.2f}/s",
        "reqps": lambda v: f"{v:.2f}/s",
    }
    if unit in units:
        return units[unit](value)
    if decimals is not None:
        return f"{value:,.{decimals}f}"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"


def draw_timeseries(ax: Axes, client: Client, panel: dict[str, Any], window: tuple[float, float, float]) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    scale = {"percentunit": 100.0, "bytes": 1 / 2**20}.get(unit, 1.0)
    n = 0
    for target in panel["targets"]:
        for series in client.query_range(executable(target["expr"], VARIABLES), *window):
            times = [float(t) for t, _ in series["values"]]
            values = [float(v) * scale for _, v in series["values"]]
            ax.plot(
                times,
                values,
                color=COLORS[n % len(COLORS)],
                linewidth=1.6,
                label=legend(target["legendFormat"], series["metric"]),
            )
            n += 1
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{datetime.fromtimestamp(t, UTC):%H:%M:%S}"))
    ax.tick_params(colors=MUTED, labelsize=7)
    ax.grid(color="#2c3235", linewidth=0.6)
    ax.set_ylabel(
        {"percentunit": "%", "bytes": "MiB", "s": "seconds", "ops": "per second", "reqps": "req/s"}.get(unit, ""),
        color=MUTED,
        fontsize=7,
    )
    if n:
        ax.legend(loc="upper left", fontsize=6.5, frameon=False, labelcolor=TEXT, ncol=2 if n > 4 else 1)
    else:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)


def draw_stat(ax: Axes, client: Client, panel: dict[str, Any]) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "none")
    target = panel["targets"][0]
    results = client.query(executable(target["expr"], VARIABLES))
    ax.set_axis_off()
    if not results:
        ax.text(0.5, 0.45, "No data", color=MUTED, ha="center", va="center", fontsize=14, transform=ax.transAxes)
        return
    for i, r in enumerate(results[:4]):
        y = 0.45 - (i - (len(results[:4]) - 1) / 2) * 0.3
        label = legend(target["legendFormat"], r["metric"]) if target["legendFormat"] else ""
        value = human(float(r["value"][1]), unit, panel["fieldConfig"]["defaults"].get("decimals"))
        text = value + (f"  {label}" if label else "")
        ax.text(
            0.5,
            y,
            text,
            color=COLORS[0],
            ha="center",
            va="center",
            fontsize=26 if len(results) == 1 else 13,
            weight="bold",
            transform=ax.transAxes,
        )


def draw_bars(ax: Axes, client: Client, panel: dict[str, Any]) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "none")
    target = panel["targets"][0]
    results = sorted(client.query(executable(target["expr"], VARIABLES)), key=lambda r: float(r["value"][1]))
    if not results:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    names = [legend(target["legendFormat"], r["metric"]) for r in results]
    values = [float(r["value"][1]) for r in results]
    ax.barh(names, values, color=[COLORS[i % len(COLORS)] for i in range(len(values))], height=0.6)
    for i, v in enumerate(values):
        ax.text(v, i, " " + human(v, unit), color=TEXT, va="center", fontsize=7)
    ax.tick_params(colors=TEXT, labelsize=7)
    ax.set_xlim(0, max(values) * 1.3 or 1)
    ax.xaxis.set_visible(False)


def render(board: dict[str, Any], client: Client, window: tuple[float, float, float], out: Path) -> None:
    grid = list(panels(board))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in grid)
    width, height = 18.0, rows * ROW_INCHES + 0.7
    fig: Figure = plt.figure(figsize=(width, height), facecolor=BG)
    start, end, _ = window
    span = f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} – {datetime.fromtimestamp(end, UTC):%H:%M} UTC"
    fig.text(0.01, 1 - 0.3 / height, board["title"], color=TEXT, fontsize=15, weight="bold", va="center")
    fig.text(
        0.99,
        1 - 0.3 / height,
        f"{span} · live local stack · drawn by scripts/render_dashboards.py (not Grafana)",
        color=MUTED,
        fontsize=8,
        ha="right",
        va="center",
    )
    top = 1 - 0.6 / height
    for panel in grid:
        pos = panel["gridPos"]
        x0, w = pos["x"] / 24, pos["w"] / 24
        y1 = top - pos["y"] * ROW_INCHES / height
        h = pos["h"] * ROW_INCHES / height
        frame = fig.add_axes((x0 + 0.003, y1 - h + 0.004, w - 0.006, h - 0.008))
        frame.set_facecolor(PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color("#2c3235")
        frame.text(
            0.01, 0.97, panel["title"], color=TEXT, fontsize=9, weight="bold", va="top", transform=frame.transAxes
        )
        title_h = 0.3 / (pos["h"] * ROW_INCHES)
        pad_x = 0.045 * w if panel["type"] == "timeseries" else 0.22 * w if panel["type"] == "bargauge" else 0.01
        inner = fig.add_axes((x0 + pad_x, y1 - h + 0.03 * h + 0.02, w - pad_x - 0.01, h * (1 - title_h) - 0.03))
        inner.set_facecolor(PANEL)
        for spine in inner.spines.values():
            spine.set_visible(False)
        match panel["type"]:
            case "timeseries":
                draw_timeseries(inner, client, panel, window)
            case "bargauge":
                draw_bars(inner, client, panel)
            case _:
                draw_stat(inner, client, panel)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BG)
    plt.close(fig)


def renumbered(samples: list[Sample], round_no: int) -> list[Sample]:
    """The demo samples again, under new invoice numbers (a repeat would only count as duplicates)."""
    again = []
    for s in samples:
        number = f"{s.invoice_number}-R{round_no}"
        payment = s.payment and s.payment | {
            "invoice_number": number,
            "payment_id": f"{s.payment['payment_id']}-R{round_no}",
        }
        again.append(
            dataclasses.replace(
                s, invoice_number=number, payload=s.payload | {"invoice_number": number}, payment=payment
            )
        )
    return again


def with_own_stack(args: argparse.Namespace) -> int:
    """Stack, Prometheus and demo traffic in a temp dir, then render; everything stops at the end."""
    with tempfile.TemporaryDirectory(prefix="factura-dashboards-") as tmp:
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix="dash.", mongo_database="dashboards")
        with Stack(cfg) as stack:
            print("starting a stack and Prometheus on free ports…", flush=True)
            stack.start_infra()
            stack.start_services()
            url = prometheus.start(cfg)
            began = time.time()
            for n in range(args.rounds):
                samples = renumbered(demo_samples(), n)
                asyncio.run(publish(cfg, samples))
                seen = asyncio.run(wait_for_outcomes(cfg, samples, timeout_s=60))
                print(f"round {n + 1}/{args.rounds}: {len(seen)} invoices settled", flush=True)
                time.sleep(args.pause)
            with Client(url) as client:
                return render_all(client, began - 60, args.out)


def render_all(client: Client, start: float, out: Path) -> int:
    end = time.time()
    window = (start, end, max(2.0, (end - start) / 240))
    VARIABLES["$__range"] = f"{max(60, int(end - start))}s"
    for name, board in load().items():
        path = out / f"{name}.png"
        render(board, client, window, path)
        print(path)
    return 0


VARIABLES: dict[str, str] = {"$__rate_interval": "30s"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", metavar="URL", help="render from this Prometheus instead of an own stack")
    parser.add_argument("--minutes", type=float, default=15, help="with --prometheus: the time range (default 15)")
    parser.add_argument("--rounds", type=int, default=4, help="own stack: rounds of demo traffic (default 4)")
    parser.add_argument("--pause", type=float, default=15, help="own stack: seconds between rounds (default 15)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.prometheus:
        with Client(args.prometheus) as client:
            return render_all(client, time.time() - args.minutes * 60, args.out)
    return with_own_stack(args)


if __name__ == "__main__":
    sys.exit(main())
