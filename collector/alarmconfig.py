"""The ``alarms:`` section of the gateway configuration: lifecycle, suppression, flood, causes.

Every field has a default, so an empty ``alarms: {}`` (or no section) works:
alarms clear after 5 in-control points, idle/changeover/setup suppress
nothing until a ``process_state`` binding is configured, more than 10 alarms
a minute on one line become one flood alarm, and a 5M1E list of assignable
causes and corrective actions (English and Chinese) is ready for acks.

Severity is resolved per alarm in this order (first hit wins):

1. the characteristic's own ``severity`` map, key = the rule code
   (``CUSUM`` for both CUSUM sides);
2. this section's ``severity[<class>]`` map for the characteristic's class, same key;
3. the characteristic's own ``default``;
4. the class map's ``default``;
5. the built-in :data:`BUILTIN_SEVERITY`: ``major`` for a point beyond the
   limits (N1, WE1) and the EWMA/CUSUM signals, ``minor`` for the run rules.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BUILTIN_SEVERITY",
    "CATEGORIES",
    "DEFAULT_ACTIONS",
    "DEFAULT_CAUSES",
    "AlarmsConfig",
    "Category",
    "CauseItem",
    "FloodConfig",
    "ProcessStateBinding",
    "Severity",
    "resolve_severity",
]

Severity = Literal["critical", "major", "minor"]
Category = Literal["operator", "machine", "material", "method", "environment", "measurement"]
CATEGORIES: tuple[str, ...] = (
    "operator",
    "machine",
    "material",
    "method",
    "environment",
    "measurement",
)
_CODE = re.compile(r"^[A-Za-z0-9_-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_SEVERITY_KEYS = (
    *(f"N{i}" for i in range(1, 9)),
    *(f"WE{i}" for i in range(1, 5)),
    "EWMA",
    "CUSUM",
    "FLOOD",
    "default",
)

#: Severity when neither the characteristic nor its class names one (see the module text).
BUILTIN_SEVERITY: dict[str, Severity] = {
    "N1": "major",
    "WE1": "major",
    "EWMA": "major",
    "CUSUM": "major",
    "default": "minor",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CauseItem(_Model):
    """One entry of a pick list (assignable cause or corrective action)."""

    code: str = Field(description="stable code stored with the ack (letters, digits, '_', '-')")
    text: str = Field(description="wording shown to the operator (English)")
    text_zh: str | None = Field(None, description="wording in Chinese, when given")

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not _CODE.match(v):
            raise ValueError(f"code {v!r} may only contain letters, digits, '_' and '-'")
        return v


def _items(*rows: tuple[str, str, str]) -> list[CauseItem]:
    return [CauseItem(code=c, text=t, text_zh=z) for c, t, z in rows]


#: Assignable causes offered when the configuration names none, grouped by 5M1E (人机料法环测).
DEFAULT_CAUSES: dict[Category, list[CauseItem]] = {
    "operator": _items(
        ("OP-ERROR", "Operator error", "操作失误"),
        ("OP-TRAINING", "Operator not trained for this job", "操作员培训不足"),
    ),
    "machine": _items(
        ("MC-TOOL-WEAR", "Tool wear", "刀具磨损"),
        ("MC-FAULT", "Machine fault", "设备故障"),
        ("MC-SETTING", "Wrong machine setting", "设备参数设置错误"),
    ),
    "material": _items(
        ("MT-LOT", "Material lot variation", "材料批次差异"),
        ("MT-DEFECT", "Defective incoming material", "来料不良"),
    ),
    "method": _items(
        ("MD-PROGRAM", "Wrong program or recipe", "程序或配方错误"),
        ("MD-PROCEDURE", "Work instruction not followed", "未按作业指导书操作"),
    ),
    "environment": _items(
        ("EN-TEMPERATURE", "Temperature change", "温度变化"),
        ("EN-VIBRATION", "Vibration", "振动"),
    ),
    "measurement": _items(
        ("MS-GAUGE", "Gauge error or calibration overdue", "量具误差或校准过期"),
        ("MS-METHOD", "Measuring method", "测量方法问题"),
        ("MS-FALSE-ALARM", "False alarm (measurement glitch)", "误报（测量异常）"),
    ),
}

#: Corrective actions offered when the configuration names none.
DEFAULT_ACTIONS: list[CauseItem] = _items(
    ("ADJUST", "Adjusted the process", "调整工艺参数"),
    ("TOOL-CHANGE", "Changed the tool", "更换刀具"),
    ("MAINTENANCE", "Machine maintenance", "设备维修"),
    ("RECALIBRATE", "Recalibrated the gauge", "重新校准量具"),
    ("CONTAIN", "Contained suspect parts", "隔离可疑品"),
    ("RETRAIN", "Retrained the operator", "重新培训操作员"),
    ("NONE", "No action needed", "无需措施"),
)


class FloodConfig(_Model):
    """Flood protection per line: beyond this rate, alarms are summarised into one flood alarm."""

    max_alarms: int = Field(
        10, ge=1, description="more raises than this on one line within window_s start a flood"
    )
    window_s: float = Field(60.0, gt=0, description="length of the sliding rate window, seconds")
    severity: Severity = Field("major", description="severity of the flood alarm itself")


class ProcessStateBinding(_Model):
    """A process-state tag for a line or station whose states suppress alarms.

    The scope matches every characteristic whose given fields (``site``,
    ``area``, ``line``, ``station``) are equal; at least ``line`` or
    ``station`` is required. The gateway reads the tag through ``source`` +
    ``binding`` and passes each new value to ``AlarmManager.set_process_state``
    under :attr:`key`.
    """

    site: str | None = Field(None, description="site id (optional narrowing)")
    area: str | None = Field(None, description="area id (optional narrowing)")
    line: str | None = Field(None, description="line id")
    station: str | None = Field(None, description="station id")
    source: str = Field(description="name of a connector under `sources`")
    binding: str = Field(description="binding id inside that connector")
    map: dict[str, str] = Field(
        default_factory=dict,
        description="raw value (as text; integral numbers without '.0') → state name "
        "(running, idle, changeover, setup or any); unmapped values are used as the state name",
    )
    suppress: list[str] = Field(
        default_factory=lambda: ["idle", "changeover", "setup"],
        description="states in which alarms are not raised",
    )

    @model_validator(mode="after")
    def _scope(self) -> ProcessStateBinding:
        if self.line is None and self.station is None:
            raise ValueError("a process_state binding needs a line or a station")
        for name in ("site", "area", "line", "station"):
            value = getattr(self, name)
            if value is not None and not _SEGMENT.match(value):
                raise ValueError(f"{name} {value!r} may only contain letters, digits, '_' and '-'")
        return self

    @property
    def key(self) -> str:
        """The scope key, e.g. ``line=L1`` or ``site=S1/line=L1/station=ST2``."""
        return "/".join(
            f"{name}={getattr(self, name)}"
            for name in ("site", "area", "line", "station")
            if getattr(self, name) is not None
        )

    def matches(self, site: str, area: str, line: str, station: str) -> bool:
        """Whether a characteristic at this place is in the scope."""
        here = {"site": site, "area": area, "line": line, "station": station}
        return all(
            getattr(self, name) is None or getattr(self, name) == here[name] for name in here
        )


class AlarmsConfig(_Model):
    """The alarm lifecycle: clearing, severity, suppression, flood protection, causes, storage."""

    clear_after: int = Field(
        5,
        ge=1,
        description="consecutive points of the chart without the rule's violation that clear "
        "an active alarm",
    )
    clear_overrides: dict[str, int] = Field(
        default_factory=dict, description="clear_after per characteristic id"
    )
    severity: dict[str, dict[str, Severity]] = Field(
        default_factory=dict,
        description="per characteristic class: rule code (N1…N8, WE1…WE4, EWMA, CUSUM) or "
        "'default' → critical/major/minor",
    )
    process_state: list[ProcessStateBinding] = Field(
        default_factory=list, description="process-state tags that suppress alarms"
    )
    flood: FloodConfig = Field(default_factory=FloodConfig, description="flood protection per line")
    causes: dict[Category, list[CauseItem]] = Field(
        default_factory=lambda: dict(DEFAULT_CAUSES),
        description="assignable causes by 5M1E category, offered when acknowledging",
    )
    actions: list[CauseItem] = Field(
        default_factory=lambda: list(DEFAULT_ACTIONS),
        description="corrective actions offered when acknowledging",
    )
    durability: Literal["full", "normal"] = Field(
        "full",
        description="SQLite synchronous level of alarm transactions: full survives power loss, "
        "normal only a crash of the process",
    )
    retention_days: int = Field(
        90, ge=1, description="days closed alarms and journal rows are kept"
    )
    prefix: str = Field("shopspc/v1", description="MQTT topic prefix")

    @field_validator("clear_overrides")
    @classmethod
    def _overrides(cls, v: dict[str, int]) -> dict[str, int]:
        for key, n in v.items():
            if n < 1:
                raise ValueError(f"clear_overrides[{key!r}] must be at least 1, not {n}")
        return v

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for klass, rules in v.items():
            for key in rules:
                if key not in _SEVERITY_KEYS:
                    raise ValueError(
                        f"unknown rule {key!r} in severity[{klass!r}] "
                        "(default, N1…N8, WE1…WE4, EWMA, CUSUM)"
                    )
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"prefix {v!r} must be non-empty without a leading or trailing '/'")
        if any(c in v for c in "+#\0"):
            raise ValueError(f"prefix {v!r} must not contain MQTT wildcards ('+', '#') or NUL")
        if "//" in v:
            raise ValueError(f"prefix {v!r} has an empty topic level ('//')")
        return v

    @model_validator(mode="after")
    def _unique_codes(self) -> AlarmsConfig:
        seen: dict[str, str] = {}
        for category, items in self.causes.items():
            for item in items:
                if item.code in seen:
                    raise ValueError(
                        f"cause code {item.code!r} appears in {seen[item.code]!r} and "
                        f"{category!r}; codes must be unique across categories"
                    )
                seen[item.code] = category
        actions = [a.code for a in self.actions]
        dup = {c for c in actions if actions.count(c) > 1}
        if dup:
            raise ValueError(f"action codes must be unique: {sorted(dup)}")
        keys = [b.key for b in self.process_state]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"two process_state bindings for the same scope: {sorted(dup)}")
        return self


def resolve_severity(
    rule: str,
    own: dict[str, str] | None,
    klass: str | None,
    config: AlarmsConfig,
) -> Severity:
    """The severity of ``rule`` for a characteristic (order in the module text).

    ``own`` is the characteristic's own map; ``CUSUM_UPPER``/``CUSUM_LOWER`` look up ``CUSUM``.
    """
    key = "CUSUM" if rule.startswith("CUSUM") else rule
    own = own or {}
    cls = config.severity.get(klass, {}) if klass is not None else {}
    for found in (own.get(key), cls.get(key), own.get("default"), cls.get("default")):
        if found is not None:
            return found  # type: ignore[return-value]
    return BUILTIN_SEVERITY.get(key, BUILTIN_SEVERITY["default"])


def picklists(config: AlarmsConfig) -> dict[str, list[dict[str, str | None]]]:
    """The 5M1E assignable causes and the corrective actions, as the CLI and the API list them."""
    return {
        "causes": [
            {"category": cat, "code": i.code, "text": i.text, "text_zh": i.text_zh}
            for cat, items in config.causes.items()
            for i in items
        ],
        "actions": [{"code": i.code, "text": i.text, "text_zh": i.text_zh} for i in config.actions],
    }
