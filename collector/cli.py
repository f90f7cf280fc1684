"""The ``shopspc`` console command."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from collector.alarms_cli import alarms_app
from collector.limits_cli import limits_app
from collector.users_cli import users_app
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
def demo(
    live: Annotated[
        bool,
        typer.Option(
            "--live", help="simulated stations + gateway, live table (what `make demo` runs)"
        ),
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="analyse the bundled CSV data (the default for now)")
    ] = False,
    config: Annotated[
        Path, typer.Option(help="gateway configuration of the stations and the gateway")
    ] = Path("config/demo.yaml"),
    rate: Annotated[float, typer.Option(min=0.01, help="parts per second per station")] = 5.0,
    duration: Annotated[
        float | None, typer.Option(min=0.0, help="seconds to run (default: until Ctrl-C)")
    ] = None,
) -> None:
    """The demo: ``--live`` runs simulated stations and the gateway with live values and alarms.

    ``--live``: stations and gateway in one process on ``--config``, a live table
    and alarm lines in the terminal, no external server (series go to the
    configuration's embedded store). Without it (or with ``--offline``) the
    bundled sample data is analysed and summarised.
    """
    if live and offline:
        sys.stderr.write("shopspc demo: --live and --offline exclude each other\n")
        raise typer.Exit(EXIT_BAD_REQUEST)
    if not live:
        _offline_demo()
        return
    import asyncio
    import logging

    from collector.config import ConfigError, load_config
    from collector.live import run_live_demo

    _quiet_logs(logging.WARNING)
    # alarms are shown by the live screen; the alarm manager's log lines would repeat them
    for name in ("collector.pipeline", "collector.alarms", "collector.notify", "connectors"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        cfg, connectors = load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    try:
        asyncio.run(run_live_demo(cfg, connectors, rate=rate, duration=duration))
    except* Exception as group:
        for exc in group.exceptions:
            sys.stderr.write(f"shopspc demo: {exc}\n")
        raise typer.Exit(1) from None


def _offline_demo() -> None:
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


@app.command()
def schema(
    output: Annotated[
        Path | None,
        typer.Option(help="write here instead of stdout (e.g. config/shopspc.schema.json)"),
    ] = None,
) -> None:
    """Print the JSON Schema of the configuration file (connector sections included), for editors."""
    from collector.config import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


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


series_app = typer.Typer(
    no_args_is_help=True,
    help="Series in the embedded store (kind: localstore): query, export, stats.",
)
app.add_typer(series_app, name="series")
app.add_typer(limits_app, name="limits")
app.add_typer(alarms_app, name="alarms")
app.add_typer(users_app, name="users")

_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _series_time(text: str | None, what: str, now_us: int) -> int | None:
    """A --since/--until value: µs since the epoch, ISO 8601 (naive = UTC), 'now' or '15m'/'2h'/'7d' ago."""
    import re
    from datetime import UTC, datetime

    if text is None:
        return None
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text == "now":
        return now_us
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if m:
        return now_us - int(float(m[1]) * _DURATION_S[m[2]] * 1_000_000)
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        sys.stderr.write(
            f"shopspc series: {what} {text!r} is not µs since the epoch, ISO 8601, "
            "'now' or a duration ago like 15m, 2h, 7d\n"
        )
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    delta = stamp - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _series_tags(characteristic: str | None, tag: list[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.stderr.write(f"shopspc series: --tag {item!r} is not KEY=VALUE\n")
            raise typer.Exit(EXIT_BAD_REQUEST)
        tags[key] = value
    if characteristic is not None:
        tags["characteristic"] = characteristic
    return tags


def _series_open(db: Path) -> Any:
    from connectors.base import ConnectorError
    from connectors.localstore.store import SeriesStore

    try:
        return SeriesStore(db, readonly=True)
    except ConnectorError as exc:
        sys.stderr.write(f"shopspc series: {exc}\n")
        raise typer.Exit(EXIT_BAD_REQUEST) from None


def _series_table(rows: list[Any]) -> None:
    from connectors.localstore.store import iso_us

    tag_keys = sorted({k for r in rows for k in r.tags})
    field_keys = sorted({k for r in rows for k in r.fields})
    header = ["time", *tag_keys, *field_keys]
    cells = [
        [
            iso_us(r.time_us),
            *(r.tags.get(k, "") for k in tag_keys),
            *("" if r.fields.get(k) is None else str(r.fields[k]) for k in field_keys),
        ]
        for r in rows
    ]
    cells = [[c.replace("\n", "\\n") for c in row] for row in cells]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *cells, strict=True)]
    for row in [header, *cells]:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        sys.stdout.write("\n")


DbOption = Annotated[Path, typer.Option(help="the store's SQLite file (a localstore sink's path)")]
CharacteristicOption = Annotated[
    str | None, typer.Option(help="only series with this characteristic tag")
]
TagOption = Annotated[
    list[str] | None, typer.Option(help="only series with this tag, KEY=VALUE (repeatable)")
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        help="from (inclusive): µs since the epoch, ISO 8601 (UTC if naive), or 2h, 7d ago"
    ),
]
UntilOption = Annotated[str | None, typer.Option(help="until (exclusive), same forms as --since")]


@series_app.command("query")
def series_query(
    db: DbOption,
    measurement: Annotated[
        str, typer.Option(help="measurement, spc, alarm or gateway (contracts/timeseries.md)")
    ],
    characteristic: CharacteristicOption = None,
    tag: TagOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option(min=0, help="at most this many points (0: all)")] = 1000,
    newest_first: Annotated[bool, typer.Option(help="newest points first")] = False,
    output: Annotated[
        str, typer.Option("--format", help="jsonl (one JSON object per point) or table")
    ] = "jsonl",
) -> None:
    """Print points of one measurement, in time order, as JSON lines or a table."""
    import time

    from connectors.base import ConnectorError
    from connectors.localstore.store import iso_us

    if output not in ("jsonl", "table"):
        sys.stderr.write(f"shopspc series query: --format {output!r} is not jsonl or table\n")
        raise typer.Exit(EXIT_BAD_REQUEST)
    now_us = time.time_ns() // 1000
    tags = _series_tags(characteristic, tag)
    since_us = _series_time(since, "--since", now_us)
    until_us = _series_time(until, "--until", now_us)
    with _series_open(db) as store:
        try:
            rows = store.query(
                measurement,
                tags=tags,
                since_us=since_us,
                until_us=until_us,
                limit=limit or None,
                newest_first=newest_first,
            )
        except ConnectorError as exc:
            sys.stderr.write(f"shopspc series query: {exc}\n")
            raise typer.Exit(1) from None
    if output == "table":
        _series_table(rows)
        return
    for r in rows:
        record = {
            "time": iso_us(r.time_us),
            "time_us": r.time_us,
            "tags": r.tags,
            "fields": r.fields,
        }
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


@series_app.command("export")
def series_export(
    db: DbOption,
    output_format: Annotated[
        str,
        typer.Option("--format", help="csv, lp (line protocol, replayable into InfluxDB) or jsonl"),
    ] = "jsonl",
    measurement: Annotated[
        str | None, typer.Option(help="only this measurement (default: all)")
    ] = None,
    characteristic: CharacteristicOption = None,
    tag: TagOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    precision: Annotated[str, typer.Option(help="lp: timestamp precision ns, us, ms or s")] = "us",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here instead of stdout")
    ] = None,
) -> None:
    """Export points (all, or one measurement / characteristic / time range) as csv, lp or jsonl."""
    import time

    from connectors.base import ConnectorError
    from connectors.localstore.store import EXPORT_FORMATS

    if output_format not in EXPORT_FORMATS:
        sys.stderr.write(
            f"shopspc series export: --format {output_format!r} is not one of "
            f"{', '.join(EXPORT_FORMATS)}\n"
        )
        raise typer.Exit(EXIT_BAD_REQUEST)
    if precision not in ("ns", "us", "ms", "s"):
        sys.stderr.write(
            f"shopspc series export: --precision {precision!r} is not ns, us, ms or s\n"
        )
        raise typer.Exit(EXIT_BAD_REQUEST)
    now_us = time.time_ns() // 1000
    tags = _series_tags(characteristic, tag)
    since_us = _series_time(since, "--since", now_us)
    until_us = _series_time(until, "--until", now_us)
    with _series_open(db) as store:
        try:
            with (
                open(output, "w", encoding="utf-8", newline="")
                if output is not None
                else contextlib.nullcontext(sys.stdout)
            ) as fp:
                count = store.export(
                    fp,
                    output_format,  # type: ignore[arg-type]
                    measurement=measurement,
                    tags=tags,
                    since_us=since_us,
                    until_us=until_us,
                    precision=precision,  # type: ignore[arg-type]
                )
        except ConnectorError as exc:
            sys.stderr.write(f"shopspc series export: {exc}\n")
            raise typer.Exit(1) from None
        except OSError as exc:
            sys.stderr.write(f"shopspc series export: cannot write {output}: {exc.strerror}\n")
            raise typer.Exit(1) from None
    sys.stderr.write(f"shopspc series export: {count} point(s)\n")


@series_app.command("stats")
def series_stats(db: DbOption) -> None:
    """Print the store's size, bound, series and point counts and time span as JSON."""
    import dataclasses

    from connectors.base import ConnectorError

    with _series_open(db) as store:
        try:
            stats = store.stats()
        except ConnectorError as exc:
            sys.stderr.write(f"shopspc series stats: {exc}\n")
            raise typer.Exit(1) from None
    sys.stdout.write(json.dumps(dataclasses.asdict(stats)) + "\n")


@app.command()
def simulate(
    config: Annotated[
        Path, typer.Option(help="gateway configuration whose sources the stations serve")
    ] = Path("config/demo.yaml"),
    rate: Annotated[float, typer.Option(min=0.01, help="parts per second per station")] = 5.0,
    duration: Annotated[
        float | None, typer.Option(min=0.0, help="seconds to run (default: until Ctrl-C)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the planted patterns")] = 1,
    pattern_start: Annotated[
        int, typer.Option(min=0, help="part number (0-based) where the patterns start")
    ] = 20,
) -> None:
    """Serve simulated inspection stations (OPC UA, Modbus, MQTT) for the configured sources."""
    import asyncio
    import logging
    import signal

    from collector.config import ConfigError, load_config
    from collector.simulate import run_simulation

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # asyncua warns about the unencrypted endpoint the demo station offers on purpose.
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        cfg, connectors = load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_BAD_REQUEST) from None
    from collector.simulate import check_ports, plan_stations

    try:
        check_ports(plan_stations(cfg, connectors))
    except ExceptionGroup as group:
        for exc in group.exceptions:
            sys.stderr.write(f"shopspc simulate: {exc}\n")
        raise typer.Exit(EXIT_BAD_REQUEST) from None

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        try:
            stations = await run_simulation(
                cfg,
                connectors,
                rate=rate,
                duration=duration,
                seed=seed,
                start=pattern_start,
                stop=stop,
                say=say,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        say("stopped: " + ", ".join(f"{type(s).__name__} {s.parts} parts" for s in stations))

    try:
        asyncio.run(main())
    except* Exception as group:
        for exc in group.exceptions:
            sys.stderr.write(f"shopspc simulate: {exc}\n")
        raise typer.Exit(1) from None


def _quiet_logs(level: int) -> None:
    import logging

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua warns about the unencrypted endpoint the demo station offers on purpose.
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="the gateway configuration (YAML)")],
    data_dir: Annotated[
        Path | None, typer.Option(help="state directory (default: gateway.data_dir)")
    ] = None,
    drain_deadline: Annotated[
        float, typer.Option(min=0.0, help="seconds to flush the outbox at shutdown")
    ] = 10.0,
) -> None:
    """Run the gateway: read the sources, judge with SPC, write series and alarms (Ctrl-C stops)."""
    import asyncio
    import logging
    import signal

    from collector.config import ConfigError, load_config
    from collector.pipeline import Gateway

    _quiet_logs(logging.INFO)
    try:
        cfg, connectors = load_config(config)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"{problem}\n")
        raise typer.Exit(EXIT_BAD_REQUEST) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        try:
            gw = Gateway(
                cfg, connectors, data_dir=data_dir, drain_deadline_s=drain_deadline, freeze_gc=True
            )
            await _run_with_api(gw, stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        sys.stdout.write(f"stopped: {gw.stats.as_dict()}\n")

    try:
        asyncio.run(main())
    except* Exception as group:
        for exc in group.exceptions:
            sys.stderr.write(f"shopspc run: {exc}\n")
        raise typer.Exit(1) from None


async def _run_with_api(gw: Any, stop: Any) -> None:
    """The gateway and, unless ``gateway.http`` is empty, its HTTP API in one TaskGroup."""
    import asyncio

    http = gw.cfg.gateway.http
    address = gw.cfg.gateway.http_address
    if address is None:
        await gw.run(stop)
        return
    from collector.api.app import ApiSettings, close_app, create_app
    from collector.api.server import serve

    host, port = address
    # closed below, once the gateway has drained (not when the HTTP server stops)
    app = create_app(gw, ApiSettings.of(gw.cfg, gw.data_dir), close_at_shutdown=False)

    async def api() -> None:
        try:
            await serve(app, host, port, stop)
        except OSError as exc:
            stop.set()  # the gateway drains and stops: an API that cannot listen is a bad start
            raise RuntimeError(
                f"HTTP API on {http}: {exc}; choose a free port in gateway.http "
                "(or http: '' to run without the API)"
            ) from None

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gw.run(stop))
            tg.create_task(api())
    finally:
        close_app(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
