"""The gateway configuration: one YAML file, ``version: 1``, validated before any socket opens.

Every problem is reported at once with file, line and dotted key
(``plant.yaml:42: characteristics[3].usl: USL must be above LSL``). Unknown
keys are errors. Secrets are never in the file: connector configs name
environment variables (``password_env``). ``shopspc check-config`` runs this
same loader.

Connector sections (``sources``, ``sinks``) are validated by the connector's
own config model, found by its ``kind`` in ``connectors/<kind>/config.py``
(``SOURCE_CONFIG`` / ``SINK_CONFIG``), so adding a connector touches no file here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.alarmconfig import AlarmsConfig
from collector.yamlpos import Located, YamlError, dotted, load_yaml
from connectors.mqtt.config import MqttPublisherConfig
from connectors.webhook.config import WebhookConfig

__all__ = [
    "ApiConfig",
    "Characteristic",
    "ConfigError",
    "GatewayConfig",
    "Problem",
    "load_config",
    "parse_config",
]

SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
CHARTS = ("imr", "xbar-r", "xbar-s", "p", "np", "c", "u", "ewma", "cusum")
RULE_CODES = tuple(f"N{i}" for i in range(1, 9)) + tuple(f"WE{i}" for i in range(1, 5))
SEVERITIES = ("critical", "major", "minor")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _segment(value: str) -> str:
    if not SEGMENT.match(value):
        raise ValueError(
            f"{value!r} may only contain letters, digits, '_' and '-' (it becomes an MQTT topic level)"
        )
    return value


Segment = Annotated[str, Field(min_length=1, max_length=64)]


class Binding(_Model):
    """Where a value comes from: a binding of a source connector, or a fixed value."""

    source: str | None = Field(None, description="name of a connector under `sources`")
    binding: str | None = Field(
        None, description="binding id inside that connector (node, register or topic field)"
    )
    static: str | float | int | bool | date | None = Field(
        None, description="a fixed value instead of a source"
    )

    @model_validator(mode="after")
    def _one_of(self) -> Binding:
        has_source = self.source is not None or self.binding is not None
        if has_source and self.static is not None:
            raise ValueError("give either source+binding or static, not both")
        if has_source and (self.source is None or self.binding is None):
            raise ValueError("source and binding go together")
        if not has_source and self.static is None:
            raise ValueError("needs source+binding or static")
        return self


class Gauge(_Model):
    """The measuring instrument (测): id and calibration due date."""

    id: Binding
    calibration_due: Binding | None = None


class Context(_Model):
    """The 5M1E snapshot captured with each sample (人机料法环测)."""

    operator: Binding | None = None
    machine: Binding | None = None
    material_lot: Binding | None = None
    method: Binding | None = Field(None, description="program or recipe")
    environment: dict[str, Binding] = Field(
        default_factory=dict, description="e.g. temperature, humidity"
    )
    gauge: Gauge | None = None
    extra: dict[str, Binding] = Field(
        default_factory=dict, description="anything else to keep with the sample"
    )


class Subgrouping(_Model):
    """How consecutive samples form subgroups."""

    size: int = Field(1, ge=1, le=64, description="consecutive parts per subgroup")
    window_s: float | None = Field(
        None, gt=0, description="close a subgroup after this many seconds"
    )
    close_on: list[Literal["operator", "machine", "material_lot", "method", "gauge"]] = Field(
        default_factory=list, description="close the open subgroup when this context changes"
    )


class Limits(_Model):
    """Frozen limits or standards given; without them the characteristic starts in Phase I."""

    center: float | None = None
    sigma: float | None = Field(None, gt=0)
    phase1_subgroups: int = Field(
        25, ge=2, le=10_000, description="subgroups collected before limits are frozen"
    )


class PartTarget(_Model):
    """A part number's (or program's) target for short-run charts."""

    nominal: float = Field(description="target value of this part's characteristic")
    sigma: float | None = Field(
        None,
        gt=0,
        description="this part's process σ (required for Z-MR: values are divided by it)",
    )


class ShortRun(_Model):
    """Short-run charting: many part numbers on one chart, each value taken against its part's target.

    ``dnom``: the chart shows deviations from nominal (x − nominal); ``zmr``: standardised
    values (x − nominal) / σ_part, judged against centre 0 and σ 1.
    """

    kind: Literal["dnom", "zmr"] = "dnom"
    by: str = Field(
        "method",
        description="context field that names the part: operator, machine, lot, method, "
        "gauge_id, or an extra/environment field name",
    )
    targets: dict[str, PartTarget] = Field(
        min_length=1, description="part (context value) → nominal (and σ for zmr)"
    )

    @model_validator(mode="after")
    def _zmr_sigmas(self) -> ShortRun:
        if self.kind == "zmr":
            missing = [k for k, t in self.targets.items() if t.sigma is None]
            if missing:
                raise ValueError(f"zmr needs a sigma for every target; missing for {missing}")
        return self


class ManualEntry(_Model):
    """Entry checks for values typed in at the line (gauges without an interface)."""

    plausible_min: float | None = Field(None, description="lowest value that can be right")
    plausible_max: float | None = Field(None, description="highest value that can be right")
    decimals: int | None = Field(
        None, ge=0, le=9, description="at most this many decimals (the gauge's resolution)"
    )

    @model_validator(mode="after")
    def _order(self) -> ManualEntry:
        lo, hi = self.plausible_min, self.plausible_max
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"plausible_min {lo} must be below plausible_max {hi}")
        return self


class Characteristic(_Model):
    """One measured characteristic: where it is, how it is charted and where its values come from."""

    id: Segment
    site: Segment
    area: Segment
    line: Segment
    station: Segment
    description: str = ""
    unit: str = ""
    nominal: float | None = None
    lsl: float | None = None
    usl: float | None = None
    chart: Literal["imr", "xbar-r", "xbar-s", "p", "np", "c", "u", "ewma", "cusum"] = "imr"
    subgroup: Subgrouping = Subgrouping()
    rules: Literal["none", "we", "nelson"] | list[str] = "nelson"
    rules_dispersion: Literal["none", "we", "nelson"] | list[str] | None = None
    rule_params: dict[str, dict[str, float]] = Field(default_factory=dict)
    severity: dict[str, Literal["critical", "major", "minor"]] = Field(
        default_factory=lambda: {"default": "major"}, description="per rule code, and 'default'"
    )
    nsigmas: float = Field(3.0, gt=0)
    limits: Limits = Limits()
    value: Binding
    sample_size: Binding | None = Field(
        None,
        description="p/np: parts inspected per sample; u: inspection units (a binding or static)",
    )
    serial: Binding | None = None
    context: Context = Context()
    shortrun: ShortRun | None = Field(
        None, description="short-run (DNOM / Z-MR) charting across part numbers"
    )
    manual: ManualEntry = Field(
        default_factory=ManualEntry, description="checks for values entered by hand"
    )
    klass: str | None = Field(
        None,
        alias="class",
        description="characteristic class (e.g. critical, major): selects alarm severities",
    )

    _check_segments = field_validator("id", "site", "area", "line", "station")(_segment)

    @field_validator("rules", "rules_dispersion")
    @classmethod
    def _codes(cls, v: Any) -> Any:
        if isinstance(v, list):
            for code in v:
                if code not in RULE_CODES:
                    raise ValueError(f"unknown rule code {code!r} (N1…N8, WE1…WE4)")
        return v

    @field_validator("severity")
    @classmethod
    def _severity_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key != "default" and key not in (*RULE_CODES, "EWMA", "CUSUM"):
                raise ValueError(
                    f"unknown rule {key!r} in severity (default, N1…N8, WE1…WE4, EWMA, CUSUM)"
                )
        return v

    @model_validator(mode="after")
    def _specs(self) -> Characteristic:
        if self.lsl is not None and self.usl is not None and self.lsl >= self.usl:
            raise ValueError(f"LSL {self.lsl} must be below USL {self.usl}")
        if (
            self.chart in ("xbar-r", "xbar-s")
            and self.subgroup.size < 2
            and self.subgroup.window_s is None
        ):
            raise ValueError(f"a {self.chart} chart needs subgroup.size ≥ 2 or a subgroup.window_s")
        if self.chart in ("p", "np", "u") and self.sample_size is None:
            raise ValueError(
                f"a {self.chart} chart needs sample_size (parts inspected, or inspection units "
                "for u): a static number or a binding"
            )
        if self.shortrun is not None and self.chart not in ("imr", "ewma", "cusum"):
            raise ValueError(
                f"shortrun works on individual values (chart imr, ewma or cusum), not {self.chart}"
            )
        return self

    @property
    def path(self) -> str:
        """The ISA-95 path ``site/area/line/station/characteristic``."""
        return f"{self.site}/{self.area}/{self.line}/{self.station}/{self.id}"


class Gateway(_Model):
    """This gateway's identity and where it keeps its state."""

    id: Segment = "gateway-1"
    data_dir: str = Field("var/shopspc", description="outbox, limits and engine state live here")
    http: str = Field(
        "127.0.0.1:8470", description="host:port of the HTTP API and web screens ('' = off)"
    )

    _check_id = field_validator("id")(_segment)

    @property
    def http_address(self) -> tuple[str, int] | None:
        """``http`` as (host without IPv6 brackets, port); None when it is '' (no API)."""
        if not self.http:
            return None
        host, _, port = self.http.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("http")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v == "":
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} is not host:port (e.g. 127.0.0.1:8470, [::1]:8470) or ''")
        return v


class ApiConfig(_Model):
    """The HTTP API and web screens (``api:``; served on ``gateway.http``)."""

    cookie_secure: bool | Literal["auto"] = Field(
        "auto",
        description="mark the session cookie Secure: auto = when the sign-in came over HTTPS "
        "(browsers drop a Secure cookie sent over plain HTTP, except to localhost); true "
        "behind a TLS reverse proxy, which uvicorn sees as plain HTTP",
    )
    session_ttl_s: float = Field(
        12 * 3600.0, gt=0, description="browser session lifetime in seconds"
    )
    token_ttl_days: float | None = Field(
        365.0, gt=0, description="default API token lifetime in days (null: no expiry)"
    )
    login_max_failures: int = Field(
        5, ge=1, description="failed sign-ins per user and per client address before a lockout"
    )
    login_window_s: float = Field(
        300.0, gt=0, description="window (and lockout) of the failed sign-in count, seconds"
    )
    recent_points: int = Field(
        1000, ge=10, le=100_000, description="plotted points kept per characteristic for the API"
    )
    recent_save_s: float = Field(
        60.0,
        gt=0,
        description="seconds between saves of the recent points to data_dir/recent_points.npz "
        "(and when the gateway stops)",
    )
    stream_queue: int = Field(
        256, ge=1, description="SSE events buffered per client before it lags (events dropped)"
    )
    stream_keepalive_s: float = Field(15.0, gt=0, description="SSE keep-alive comment interval")
    metrics_public: bool = Field(
        False, description="serve /metrics without credentials (else an operator token)"
    )
    cors_origins: tuple[str, ...] = Field(
        (), description="origins allowed by CORS (empty: CORS off, same origin only)"
    )


class ConnectorSection(BaseModel):
    """A connector section before its own model validates it: ``kind`` plus the connector's keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str


class AlarmSection(AlarmsConfig):
    """Alarm handling (lifecycle, severities, causes) and where alarm events are delivered."""

    mqtt: MqttPublisherConfig | None = Field(
        None,
        description="broker that receives alarm events, retained states and gateway status "
        "(the MES contract); without it events stay in data_dir/alarms.db and the journal",
    )
    webhook: WebhookConfig | None = Field(
        None, description="HTTP endpoint that receives every alarm event (HMAC-signed)"
    )


class GatewayConfig(_Model):
    """The whole configuration file."""

    version: Literal[1]
    gateway: Gateway = Gateway()
    sources: dict[str, ConnectorSection] = Field(default_factory=dict)
    sinks: dict[str, ConnectorSection] = Field(default_factory=dict)
    alarms: AlarmSection = Field(default_factory=AlarmSection)
    api: ApiConfig = Field(default_factory=ApiConfig)
    characteristics: list[Characteristic] = Field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    """One configuration problem, located."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key or '(top)'}: {self.message}"


class ConfigError(Exception):
    """Everything wrong with a configuration file, all at once."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _pydantic_problems(
    exc: ValidationError, doc: Located, prefix: tuple[str | int, ...] = ()
) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(
            part
            for part in err["loc"]
            if not (isinstance(part, str) and part.startswith(("function-", "literal[", "list[")))
        )
        path = (*prefix, *loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(Problem(doc.file, doc.line_of(path), dotted(path), msg))
    return out


def _connector_model(kind: str, role: str) -> type[BaseModel] | None:
    try:
        module = importlib.import_module(f"connectors.{kind}.config")
    except ModuleNotFoundError:
        return None
    return getattr(module, f"{role.upper()}_CONFIG", None)


def _semantic_problems(cfg: GatewayConfig, doc: Located) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: tuple[str | int, ...], message: str) -> None:
        problems.append(Problem(doc.file, doc.line_of(path), dotted(path), message))

    seen: dict[str, int] = {}
    for i, ch in enumerate(cfg.characteristics):
        if ch.path in seen:
            add(
                ("characteristics", i, "id"),
                f"{ch.path} is already defined by characteristics[{seen[ch.path]}]",
            )
        seen.setdefault(ch.path, i)

        def check(b: Binding | None, path: tuple[str | int, ...]) -> None:
            if b is not None and b.source is not None and b.source not in cfg.sources:
                known = ", ".join(sorted(cfg.sources)) or "none defined"
                add((*path, "source"), f"no source named {b.source!r} (sources: {known})")

        base = ("characteristics", i)
        check(ch.value, (*base, "value"))
        check(ch.serial, (*base, "serial"))
        ctx = ch.context
        for name in ("operator", "machine", "material_lot", "method"):
            check(getattr(ctx, name), (*base, "context", name))
        for name, b in ctx.environment.items():
            check(b, (*base, "context", "environment", name))
        for name, b in ctx.extra.items():
            check(b, (*base, "context", "extra", name))
        if ctx.gauge is not None:
            check(ctx.gauge.id, (*base, "context", "gauge", "id"))
            check(ctx.gauge.calibration_due, (*base, "context", "gauge", "calibration_due"))
        check(ch.sample_size, (*base, "sample_size"))
    for k, ps in enumerate(cfg.alarms.process_state):
        if ps.source not in cfg.sources:
            known = ", ".join(sorted(cfg.sources)) or "none defined"
            add(
                ("alarms", "process_state", k, "source"),
                f"no source named {ps.source!r} (sources: {known})",
            )
    ids = {c.id for c in cfg.characteristics} | {c.path for c in cfg.characteristics}
    for key in cfg.alarms.clear_overrides:
        if key not in ids:
            add(("alarms", "clear_overrides", key), f"no characteristic {key!r}")
    return problems


def parse_config(
    text: str, file: str | Path = "<string>"
) -> tuple[GatewayConfig, dict[str, BaseModel]]:
    """Validate configuration text; returns the config and each connector's validated model.

    Raises :class:`ConfigError` listing every problem with file, line and dotted key.
    """
    try:
        doc = load_yaml(text, file)
    except YamlError as exc:
        raise ConfigError([Problem(exc.file, exc.line, "", exc.message)]) from None
    if not isinstance(doc.data, dict):
        raise ConfigError(
            [Problem(doc.file, 1, "", "the file must be a mapping with `version: 1` at the top")]
        )
    try:
        cfg = GatewayConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc, doc)) from None
    problems = _semantic_problems(cfg, doc)
    connectors: dict[str, BaseModel] = {}
    for role, sections in (("source", cfg.sources), ("sink", cfg.sinks)):
        for name, section in sections.items():
            prefix = (f"{role}s", name)
            if not SEGMENT.match(name):
                problems.append(
                    Problem(
                        doc.file,
                        doc.line_of(prefix),
                        dotted(prefix),
                        "a connector name may only contain letters, digits, '_' and '-'",
                    )
                )
            model = _connector_model(section.kind, role)
            if model is None:
                problems.append(
                    Problem(
                        doc.file,
                        doc.line_of((*prefix, "kind")),
                        dotted((*prefix, "kind")),
                        f"no {role} connector of kind {section.kind!r}",
                    )
                )
                continue
            body = {k: v for k, v in doc.data[f"{role}s"][name].items() if k != "kind"}
            try:
                connectors[name] = model.model_validate(body)
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, doc, prefix))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))
    return cfg, connectors


def load_config(path: str | Path) -> tuple[GatewayConfig, dict[str, BaseModel]]:
    """Read and validate a configuration file (see :func:`parse_config`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(p), 0, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(p), 0, "", f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, p)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file, connector sections included, for editors.

    ``sources.*`` and ``sinks.*`` become a ``oneOf`` over the installed
    connectors' own models, each with its ``kind`` as a constant.
    """
    import pkgutil

    import connectors

    schema = GatewayConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for role in ("source", "sink"):
        choices = []
        for mod in sorted(m.name for m in pkgutil.iter_modules(connectors.__path__) if m.ispkg):
            model = _connector_model(mod, role)
            if model is None:
                continue
            # connectors may reuse model names (TriggerConfig): keep their definitions apart
            sub = model.model_json_schema(ref_template=f"#/$defs/{mod}.{{model}}")
            defs.update({f"{mod}.{k}": v for k, v in sub.pop("$defs", {}).items()})
            sub.setdefault("properties", {})["kind"] = {
                "const": mod,
                "description": f"the {mod} {role} connector",
            }
            sub["required"] = ["kind", *sub.get("required", [])]
            name = f"{model.__name__}Section"
            defs[name] = sub
            choices.append({"$ref": f"#/$defs/{name}"})
        schema["properties"][f"{role}s"] = {
            "type": "object",
            "description": f"named {role} connectors",
            "additionalProperties": {"oneOf": choices},
        }
    defs.pop("ConnectorSection", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "shopspc gateway configuration (version 1)"
    return schema
