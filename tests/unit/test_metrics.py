"""``sidecar.metrics``: what /metrics renders for the computed certificate series."""

from __future__ import annotations

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
