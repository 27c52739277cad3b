"""One process's live configuration: the config, the TLS state and the request settings,
reloaded as one.

``LiveState.reload()`` re-reads the config file and the TLS files; on any error
everything old keeps serving (ghostunnel's rule: validate fully, then swap).  A process
reloads every ``tls.reload_interval_s`` and at once on SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar.app.public import RequestSettings
from sidecar.checks.signature import SignatureVerifier
from sidecar.clock import wait_for_event
from sidecar.config import Config, load_config
from sidecar.errors import SidecarError
from sidecar.logs import Throttle
from sidecar.metrics import Metrics
from sidecar.tls.holder import TLSHolder

__all__ = ["LiveState", "REFUSAL_LOG_INTERVAL_S"]

log = logging.getLogger("sidecar.server")

REFUSAL_LOG_INTERVAL_S = 10.0  # per reason; every refusal is counted in the metrics


class LiveState:
    def __init__(self, config: Config, metrics: Metrics, *, max_connections: int | None) -> None:
        self.config = config
        self.metrics = metrics
        self._refusals = Throttle(REFUSAL_LOG_INTERVAL_S)
        self.holder = TLSHolder(
            config.tls, max_connections=max_connections,
            on_connections=metrics.open_connections.set,
            handshake_timeout_s=config.limits.header_timeout_s,
            on_refused=self._refused)
        self._settings = _settings_from(config)
        self._warn_if_optional(config)

    def settings(self) -> RequestSettings:
        return self._settings

    def _refused(self, reason: str, facts: dict[str, object]) -> None:
        self.metrics.handshake_failures.labels(reason).inc()
        left_out = self._refusals.allow(reason)
        if left_out is not None:
            # A trusted certificate with a name not allowed is a config matter (or Meta
            # changed its name): say it louder than scanners and clients without one.
            level = logging.WARNING if reason == "name_not_allowed" else logging.INFO
            log.log(level, "tls.handshake_refused",
                    extra={"reason": reason, **facts, "similar_left_out": left_out})

    def reload(self) -> None:
        try:
            config = load_config(self.config.path)
        except Exception as exc:  # never let one odd file end reloading (or the server)
            self._reload_failed("config", exc)
            return
        try:
            swapped = self.holder.reload(config.tls)
        except Exception as exc:
            self._reload_failed("tls", exc)
            return
        self._settings = _settings_from(config)
        self.config = config
        self.metrics.config_reloads.labels("success").inc()
        if swapped:
            self.metrics.tls_reloads.labels("success").inc()
            log.info("tls.reloaded", extra={"generation": self.holder.state.generation})
        self._warn_if_optional(config)

    def _reload_failed(self, what: str, exc: Exception) -> None:
        counter = self.metrics.config_reloads if what == "config" else self.metrics.tls_reloads
        counter.labels("failure").inc()
        error = exc.message if isinstance(exc, SidecarError) else type(exc).__name__
        log.error(f"{what}.reload_failed", extra={"error": error})

    def _warn_if_optional(self, config: Config) -> None:
        optional = config.tls.client_auth == "optional"
        self.metrics.client_auth_optional.set(1 if optional else 0)
        if optional:
            log.warning("tls.client_auth_optional", extra={
                "detail": "clients without a certificate are admitted (onboarding mode); "
                          "switch tls.client_auth to required once mTLS is enabled for the app"})

    async def reloader(self, stop: asyncio.Event, now: asyncio.Event,
                       after_now: Callable[[], None] | None = None) -> None:
        """Reload every ``tls.reload_interval_s``, and at once when ``now`` is set (then
        ``after_now``).  Each wait takes the interval of the config in force, so a
        reload that changes it (SIGHUP included) applies it from the next wait."""
        while not stop.is_set():
            await wait_for_event(now, self.config.tls.reload_interval_s)
            if stop.is_set():
                return
            asked = now.is_set()
            now.clear()
            await asyncio.to_thread(self.reload)
            if asked and after_now is not None:
                after_now()


def _settings_from(config: Config) -> RequestSettings:
    meta = config.meta
    return RequestSettings(verifier=SignatureVerifier(meta.app_secrets),
                           verify_token=meta.verify_token, unknown_fields=meta.unknown_fields)
