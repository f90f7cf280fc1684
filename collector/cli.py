"""The ``shopspc`` console command."""

from __future__ import annotations

import csv
import io
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from spc.analyze import analyze_json, error_json, loads_request
from spc.errors import SpcInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="shopspc: statistical process control on the edge gateway.",
    pretty_exceptions_enable=False,
)

EXIT_BAD_REQUEST = 2


def _fail(err: SpcInputError) -> None:
    """Print the contract's error object on stdout, a readable line on stderr, exit 2."""
    sys.stdout.write(json.dumps(error_json(err)) + "\n")
    where = f" at {err.path}" if err.path else ""
    sys.stderr.write(f"shopspc analyze: bad request{where}: {err.message}\n")
    raise typer.Exit(EXIT_BAD_REQUEST)


def _cell(text: str, where: str) -> float | None:
    text = text.strip()
    if text == "" or text.upper() in ("NA", "NAN", "NULL"):
        return None
    try:
        value = (
            float(text.replace(",", "."))
            if text.count(",") == 1 and "." not in text
            else float(text)
        )
    except ValueError:
        raise SpcInputError(where, f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SpcInputError(where, f"not a finite number: {text!r}")
    return value


def csv_request(
    text: str,
    name: str,
    *,
    chart: str,
    column: str | None,
    subgroup_size: int | None,
    subgroup_column: str | None,
    sizes_column: str | None,
    phase1: int | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Turn a CSV file (header row, one observation per row) into an analyze request."""
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        raise SpcInputError(name, "the CSV file is empty")
    header = [h.strip() for h in rows[0]]

    def col_index(label: str | None, what: str) -> int:
        if label is None:
            return -1
        if label in header:
            return header.index(label)
        if label.isdigit() and int(label) < len(header):
            return int(label)
        raise SpcInputError(
            f"{name}:1", f"no {what} column {label!r} (columns: {', '.join(header)})"
        )

    vcol = col_index(column, "value")
    if vcol < 0:
        # The first column whose first data cell is a number.
        for i in range(len(header)):
            try:
                if len(rows) > 1 and rows[1][i].strip() and float(rows[1][i]) == float(rows[1][i]):
                    vcol = i
                    if header[i].lower() not in ("subgroup", "part", "sample", "index", "id"):
                        break
            except (ValueError, IndexError):
                continue
        if vcol < 0:
            raise SpcInputError(f"{name}:2", "no numeric column found; name one with --column")
    gcol = col_index(subgroup_column, "subgroup")
    scol = col_index(sizes_column, "sizes")
    values: list[float | None] = []
    groups: list[str] = []
    sizes: list[float | None] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{name}:{line}:{header[vcol]}"
        if vcol >= len(row):
            raise SpcInputError(where, "row has no such column")
        values.append(_cell(row[vcol], where))
        if gcol >= 0:
            groups.append(row[gcol].strip())
        if scol >= 0:
            sizes.append(_cell(row[scol], f"{name}:{line}:{header[scol]}"))
    data: list[Any]
    if gcol >= 0:
        order: dict[str, list[float | None]] = {}
        for g, v in zip(groups, values, strict=True):
            order.setdefault(g, []).append(v)
        data = list(order.values())
    elif subgroup_size:
        data = [values[i : i + subgroup_size] for i in range(0, len(values), subgroup_size)]
    else:
        data = values
    request: dict[str, Any] = {"chart": chart, **options}
    if phase1 is not None and 0 < phase1 < len(data):
        request["data"] = data[:phase1]
        request["phase2"] = {"data": data[phase1:]}
        if sizes:
            request["sizes"] = sizes[:phase1]
            request["phase2"]["sizes"] = sizes[phase1:]
    else:
        request["data"] = data
        if sizes:
            request["sizes"] = sizes
    return request


@app.command()
def analyze(
    source: Annotated[str, typer.Argument(help="REQUEST.json, '-' for stdin, or a .csv file")],
    chart: Annotated[
        str | None, typer.Option(help="CSV only: the chart (imr, xbar-r, p, …)")
    ] = None,
    column: Annotated[
        str | None, typer.Option(help="CSV: the value column (name or 0-based index)")
    ] = None,
    subgroup_size: Annotated[
        int | None, typer.Option(help="CSV: consecutive rows per subgroup")
    ] = None,
    subgroup_column: Annotated[
        str | None, typer.Option(help="CSV: rows with the same value form a subgroup")
    ] = None,
    sizes_column: Annotated[str | None, typer.Option(help="CSV: sample sizes for p, np, u")] = None,
    phase1: Annotated[
        int | None, typer.Option(help="CSV: the first N points are Phase I, the rest Phase II")
    ] = None,
    lsl: Annotated[float | None, typer.Option(help="CSV: lower specification limit")] = None,
    usl: Annotated[float | None, typer.Option(help="CSV: upper specification limit")] = None,
    target: Annotated[float | None, typer.Option(help="CSV: target for Cpm")] = None,
    rules: Annotated[
        str | None, typer.Option(help="CSV: none, we, nelson or codes like N1,N2")
    ] = None,
    summary: Annotated[bool, typer.Option(help="print a readable summary instead of JSON")] = False,
) -> None:
    """Analyse history offline: JSON request in, JSON response out (contracts/analyze.md)."""
    try:
        if source == "-":
            text = sys.stdin.buffer.read()
        else:
            path = Path(source)
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise SpcInputError("", f"cannot read {source}: {exc.strerror}") from None
        if source.lower().endswith((".csv", ".txt", ".tsv")):
            options: dict[str, Any] = {}
            if lsl is not None or usl is not None:
                options["capability"] = {"lsl": lsl, "usl": usl, "target": target}
            if rules:
                options["rules"] = rules if rules in ("none", "we", "nelson") else rules.split(",")
            body = csv_request(
                text.decode("utf-8-sig", errors="replace"),
                source,
                chart=chart or ("xbar-r" if (subgroup_size or subgroup_column) else "imr"),
                column=column,
                subgroup_size=subgroup_size,
                subgroup_column=subgroup_column,
                sizes_column=sizes_column,
                phase1=phase1,
                options=options,
            )
        else:
            if chart is not None:
                raise SpcInputError(
                    "chart", "--chart is for CSV input; a JSON request names its chart"
                )
            body = loads_request(text)
        result = analyze_json(body)
    except SpcInputError as err:
        _fail(err)
        return
    except typer.Exit:
        raise
    except Exception as exc:  # never a traceback: an internal error is reported, exit 1
        sys.stdout.write(
            json.dumps({"error": {"path": "", "message": f"internal error: {exc!r}"}}) + "\n"
        )
        sys.stderr.write(f"shopspc analyze: internal error: {exc!r}\n")
        raise typer.Exit(1) from None
    if summary:
        from collector.report import print_summary

        print_summary(result, title=source)
    else:
        sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")


@app.command()
def demo() -> None:
    """Analyse the bundled sample data and print a readable summary (no server needed)."""
    from collector.report import print_summary

    text = resources.files("collector").joinpath("data/sample_bore.csv").read_text()
    body = csv_request(
        text,
        "sample_bore.csv",
        chart="xbar-r",
        column="bore_mm",
        subgroup_size=None,
        subgroup_column="subgroup",
        sizes_column=None,
        phase1=25,
        options={"capability": {"lsl": 24.97, "usl": 25.03}},
    )
    print_summary(analyze_json(body), title="Bore diameter, 40 subgroups of 5 (Phase I: 25)")
    imr = dict(body, chart="ewma", data=[v for g in body["data"] for v in g])
    imr["phase2"] = {"data": [v for g in body["phase2"]["data"] for v in g]}
    print_summary(analyze_json(imr), title="Same parts as individual values, EWMA λ=0.2")


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="the gateway configuration (YAML)")],
) -> None:
    """Validate a configuration file with the same loader as `shopspc run`; list every problem."""
    from collector.config import ConfigError, load_config

    try:
        cfg, connectors = load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"{problem}\n")
        sys.stderr.write(f"{config}: {len(err.problems)} problem(s)\n")
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    sys.stdout.write(
        f"{config}: OK — gateway {cfg.gateway.id}, {len(cfg.sources)} source(s), "
        f"{len(cfg.sinks)} sink(s), {len(cfg.characteristics)} characteristic(s)\n"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
