"""POST normalized events to the internal upstream.

One shared connection pool per process (``sidecar.delivery.http1``: why not httpx is
explained there), behind the ``UpstreamTransport`` seam (``sidecar.delivery.transport``,
with a ``MockTransport`` beside it).  The
client signs (Standard Webhooks) and judges the answer.  Any 2xx is success; anything else, a timeout or a transport error
becomes ``UpstreamUnavailable`` (with the status and ``Retry-After`` when there are
some), which the caller turns into a retry (spool) or a 503 to Meta (direct).
The upstream's response body is never read into an error or a log.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.delivery.http1 import HTTP1Pool
from sidecar.delivery.retry import parse_retry_after
from sidecar.delivery.signing import Signer
from sidecar.delivery.transport import UpstreamTransport
from sidecar.errors import UpstreamUnavailable
from sidecar.events import Event, batch_id, encode_event, join_events
from sidecar.secret import Secret
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["UpstreamClient"]


class UpstreamClient:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        signing_secret: Secret | None,
        max_connections: int = 8,
        trust: UpstreamTrust | None = None,
        transport: UpstreamTransport | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.url = url
        self._signer = Signer(signing_secret) if signing_secret is not None else None
        self._clock = clock
        self._transport: UpstreamTransport = transport or HTTP1Pool(
            url, timeout_s=timeout_s, max_connections=max_connections,
            tls=trust.context if trust is not None else None)

    async def send(self, events: Sequence[Event], *, as_array: bool) -> None:
        """Deliver ``events`` in one request; raise ``UpstreamUnavailable`` unless 2xx."""
        await self.send_encoded([e.id for e in events], [encode_event(e) for e in events],
                                as_array=as_array)

    async def send_encoded(self, ids: Sequence[str], encoded: Sequence[bytes], *,
                           as_array: bool) -> None:
        """Like ``send``, for events already encoded (the spool keeps them encoded)."""
        body = join_events(list(encoded), as_array=as_array)
        headers = {"content-type": "application/json"}
        if self._signer is not None:
            msg_id = batch_id(list(ids)) if as_array else ids[0]
            headers.update(self._signer.headers(msg_id, int(self._clock.time()), body))
        response = await self._transport.post(body, headers)
        if not 200 <= response.status < 300:
            raise UpstreamUnavailable(
                f"upstream answered {response.status}",
                status=response.status,
                retry_after_s=parse_retry_after(response.headers.get("retry-after"),
                                                self._clock.time()),
            )

    async def aclose(self) -> None:
        await self._transport.aclose()
