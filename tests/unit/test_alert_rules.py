"""deploy/prometheus/alerts.yaml names only metrics (and labels) the sidecar exports, so
a renamed metric cannot silently turn an alert off."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from sidecar.metrics import Metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",)}


def _exported() -> dict[str, set[str]]:
    """Every sample name the sidecar can export, with its label names: the metrics'
    families, labelled from the metric objects (a family with no sample yet has none)."""
    metrics = Metrics()
    labels = {m._name: set(m._labelnames) for m in vars(metrics).values()  # noqa: SLF001
              if isinstance(m, MetricWrapperBase)}
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        family_labels = labels.get(family.name, set(getattr(family, "_labelnames", ())))
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family_labels
    return names


def _rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_rule_is_complete() -> None:
    rules = _rules()
    assert rules
    for rule in rules:
        assert rule["alert"] and rule["expr"], rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule  # type: ignore[index]
        assert rule["annotations"]["summary"], rule  # type: ignore[index]


def test_every_metric_in_the_rules_is_exported() -> None:
    exported = _exported()
    for rule in _rules():
        expr = str(rule["expr"])
        used = set(re.findall(r"\bsidecar_[a-z_]+", expr))
        assert used, rule["alert"]
        for name in used:
            assert name in exported, f"{rule['alert']}: {name} is not a sidecar metric"
        for name, matchers in re.findall(r"\b(sidecar_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*=~?", matchers):
                assert label in exported[name], f"{rule['alert']}: {name} has no {label}"
