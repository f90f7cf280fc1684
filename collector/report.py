"""Readable terminal summaries of analyze responses (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_BLOCKS = "▁▂▃▄▅▆▇█"


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _strip(stats: list, lcl: list, ucl: list, flagged: set[int]) -> Text:
    """One character per point: its height between the limits, red where a rule fired."""
    text = Text()
    for i, (v, lo, hi) in enumerate(zip(stats, lcl, ucl, strict=True)):
        if v is None:
            text.append(" ")
            continue
        if lo is None or hi is None or hi <= lo:
            ch = _BLOCKS[3]
        else:
            pos = (v - lo) / (hi - lo)
            ch = "▲" if pos > 1 else "▼" if pos < 0 else _BLOCKS[min(7, int(pos * 8))]
        text.append(ch, style="bold red" if i in flagged else "green")
    return text


def print_summary(result: dict[str, Any], title: str = "", console: Console | None = None) -> None:
    """Print each chart's estimate, limits and violations, and the capability indices."""
    con = console or Console()
    con.rule(f"[bold]{title}[/] — chart {result['chart']}")
    n1 = result.get("phase1_points")
    for ch in result["charts"]:
        est = ch.get("estimate") or {}
        flagged = {i for idx in ch["violations"].values() for i in idx}
        head = Text.assemble(
            (f"{ch['name']:>6} ", "bold"),
            f"centre {_fmt(est.get('center'))}  σ̂ {_fmt(est.get('sigma'))} ({est.get('method', '—')})  ",
            f"limits [{_fmt(ch['lcl'][0])}, {_fmt(ch['ucl'][0])}]" if ch["lcl"] else "",
        )
        con.print(head)
        # EWMA and CUSUM are judged on their smoothed path / sums, so plot those.
        plotted = ch.get("ewma") or ch.get("cusum_upper") or ch["statistics"]
        width = max(20, con.width - 8)
        start = max(0, len(plotted) - width)
        con.print(
            Text("       ")
            + _strip(
                plotted[start:], ch["lcl"][start:], ch["ucl"][start:], {i - start for i in flagged}
            )
        )
        if n1 is not None and start <= n1 < len(plotted):
            con.print(Text("       " + " " * (n1 - start) + "↑ Phase II", style="dim"))
        fired = {code: idx for code, idx in ch["violations"].items() if idx}
        if fired:
            table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
            table.add_column("rule")
            table.add_column("points (0-based)")
            for code, idx in fired.items():
                shown = ", ".join(map(str, idx[:12])) + (" …" if len(idx) > 12 else "")
                table.add_row(Text(code, style="red"), shown)
            con.print(table)
        else:
            con.print("       [green]in control[/]")
    cap = result.get("capability")
    if cap:
        table = Table(title="capability", box=None, padding=(0, 2))
        for col in ("index", "value", "lower", "upper"):
            table.add_column(col)
        for key in ("Cp", "Cpk", "Cpm", "Pp", "Ppk"):
            c = cap.get(key) or {}
            table.add_row(
                key, _fmt(c.get("value"), 3), _fmt(c.get("lower"), 3), _fmt(c.get("upper"), 3)
            )
        con.print(table)
        con.print(
            f"expected ppm outside {_fmt(cap.get('expected_ppm_outside'), 4)}, "
            f"observed ppm outside {_fmt(cap.get('observed_ppm_outside'), 4)}"
        )
        if cap.get("warning"):
            con.print(f"[yellow]⚠ {cap['warning']}[/]")
