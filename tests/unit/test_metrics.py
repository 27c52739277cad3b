"""``sidecar.metrics``: what /metrics renders for the computed certificate series."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import Metrics


def _expiry(metrics: Metrics) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value)
            for family in text_string_to_metric_families(metrics.render().decode())
            if family.name == "sidecar_certificate_expiry_seconds"
            for s in family.samples]


def test_certificate_series_follow_what_is_loaded_at_each_scrape() -> None:
    loaded = [("server", "CN=old", "certs/server.pem", 100.0)]
    metrics = Metrics()
    metrics.watch_certificates(lambda: loaded)
    assert _expiry(metrics) == [
        ({"role": "server", "subject": "CN=old", "file": "certs/server.pem"}, 100.0)]
    loaded = [("server", "CN=new", "certs/server.pem", 900.0)]
    assert _expiry(metrics) == [
        ({"role": "server", "subject": "CN=new", "file": "certs/server.pem"}, 900.0)]


def test_two_certificates_with_the_same_labels_give_one_series_the_sooner_one() -> None:
    # A renewed or cross-signed CA in one bundle keeps its subject: a duplicate series
    # would be invalid output, and the one that matters is the one expiring first.
    metrics = Metrics()
    metrics.watch_certificates(lambda: [("client_ca", "CN=CA", "ca.pem", 5000.0),
                                        ("client_ca", "CN=CA", "ca.pem", 50.0),
                                        ("client_ca", "CN=Other", "ca.pem", 70.0)])
    assert sorted(_expiry(metrics), key=lambda s: s[1]) == [
        ({"role": "client_ca", "subject": "CN=CA", "file": "ca.pem"}, 50.0),
        ({"role": "client_ca", "subject": "CN=Other", "file": "ca.pem"}, 70.0)]


_RENDER = """
import sys
from pathlib import Path
from sidecar.metrics import Metrics
folder = sys.argv[1]
metrics = Metrics(multiprocess_dir=Path(folder) if folder else None)
sys.stdout.write(metrics.render().decode())
"""


@pytest.mark.parametrize("multiprocess", [False, True])
def test_reload_counters_are_shown_at_zero_before_the_first_reload(
        tmp_path: Path, multiprocess: bool) -> None:
    # In a process of its own: multiprocess values are chosen once per process.
    text = subprocess.run([sys.executable, "-c", _RENDER, str(tmp_path) if multiprocess else ""],
                          capture_output=True, text=True, check=True, timeout=60).stdout
    for family in ("sidecar_tls_reloads_total", "sidecar_config_reloads_total"):
        for result in ("success", "failure"):
            assert f'{family}{{result="{result}"}} 0.0' in text, text


@pytest.mark.parametrize("multiprocess", [False, True])
def test_the_same_families_whatever_the_worker_count(tmp_path: Path, multiprocess: bool) -> None:
    text = subprocess.run([sys.executable, "-c", _RENDER, str(tmp_path) if multiprocess else ""],
                          capture_output=True, text=True, check=True, timeout=60).stdout
    assert "_created" not in text
