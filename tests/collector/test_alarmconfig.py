"""The ``alarms:`` configuration section: defaults, validation, severity resolution."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from collector.alarmconfig import (
    DEFAULT_CAUSES,
    AlarmsConfig,
    ProcessStateBinding,
    resolve_severity,
)


def test_empty_section_has_working_defaults() -> None:
    """An empty section validates and offers causes in every 5M1E category and actions."""
    cfg = AlarmsConfig.model_validate({})
    assert cfg.clear_after == 5
    assert cfg.flood.max_alarms == 10 and cfg.flood.window_s == 60.0
    assert cfg.prefix == "shopspc/v1"
    assert set(cfg.causes) == {
        "operator",
        "machine",
        "material",
        "method",
        "environment",
        "measurement",
    }
    assert all(item.text_zh for items in cfg.causes.values() for item in items)
    assert cfg.actions and cfg.durability == "full" and cfg.retention_days == 90


def test_unknown_keys_are_refused_and_models_frozen() -> None:
    """extra="forbid" and frozen, like every config model."""
    with pytest.raises(ValidationError, match="extra"):
        AlarmsConfig.model_validate({"clear_afterr": 3})
    cfg = AlarmsConfig()
    with pytest.raises(ValidationError):
        cfg.clear_after = 3  # type: ignore[misc]


@pytest.mark.parametrize("prefix", ["", "/a", "a/", "a/+/b", "a/#", "a//b"])
def test_prefix_validation(prefix: str) -> None:
    """No wildcards, no empty levels, no leading/trailing slash."""
    with pytest.raises(ValidationError, match="prefix"):
        AlarmsConfig(prefix=prefix)


def test_cause_codes_unique_across_categories() -> None:
    """A bare code must identify one cause, so codes may not repeat across categories."""
    item = {"code": "X1", "text": "x"}
    with pytest.raises(ValidationError, match="unique across categories"):
        AlarmsConfig.model_validate({"causes": {"operator": [item], "machine": [item]}})
    with pytest.raises(ValidationError, match="letters, digits"):
        AlarmsConfig.model_validate({"causes": {"operator": [{"code": "a b", "text": "x"}]}})
    with pytest.raises(ValidationError):
        AlarmsConfig.model_validate({"causes": {"people": [item]}})


def test_severity_keys_and_resolution() -> None:
    """Own rule → class rule → own default → class default → built-in."""
    with pytest.raises(ValidationError, match="unknown rule"):
        AlarmsConfig.model_validate({"severity": {"critical-dims": {"N9": "major"}}})
    cfg = AlarmsConfig.model_validate(
        {"severity": {"safety": {"N2": "critical", "default": "major"}}}
    )
    assert resolve_severity("N2", {"N2": "minor"}, "safety", cfg) == "minor"
    assert resolve_severity("N2", {}, "safety", cfg) == "critical"
    assert resolve_severity("N3", {"default": "minor"}, "safety", cfg) == "minor"
    assert resolve_severity("N3", {}, "safety", cfg) == "major"
    assert resolve_severity("N1", {}, None, cfg) == "major"
    assert resolve_severity("N3", {}, None, cfg) == "minor"
    assert resolve_severity("CUSUM_UPPER", {"CUSUM": "critical"}, None, cfg) == "critical"
    assert resolve_severity("EWMA", None, "unknown-class", cfg) == "major"


def test_process_state_binding_scope() -> None:
    """A binding needs a line or station; its key and matching follow the given fields."""
    with pytest.raises(ValidationError, match="line or a station"):
        ProcessStateBinding(source="plc", binding="state")
    b = ProcessStateBinding(line="L1", source="plc", binding="state", map={"0": "idle"})
    assert b.key == "line=L1"
    assert b.suppress == ["idle", "changeover", "setup"]
    assert b.matches("S", "A", "L1", "ST1") and not b.matches("S", "A", "L2", "ST1")
    with pytest.raises(ValidationError, match="same scope"):
        AlarmsConfig(process_state=[b, b])


def test_default_causes_are_shared_safely() -> None:
    """Each config gets its own default lists (the module constant is not mutated)."""
    cfg = AlarmsConfig()
    assert cfg.causes == DEFAULT_CAUSES
    assert cfg.causes is not DEFAULT_CAUSES
