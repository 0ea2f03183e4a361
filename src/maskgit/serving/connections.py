"""uvicorn's HTTP/1.1 protocol with a deadline for request heads: a connection that has not sent a complete
request head ``header_timeout`` seconds after it opened, or after its last response, is closed (uvicorn itself
times out idle keep-alive connections only until their first byte, and never a head that arrives slowly).
A body's own deadline is ``BodyLimit``'s (schemas.py)."""

from __future__ import annotations

import logging

log = logging.getLogger("maskgit.serving.app")


def header_timeout_protocol(header_timeout: float):
    """A subclass of uvicorn's h11 protocol that closes connections slow to send their request head."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._head_overdue)

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served: its body has BodyLimit's deadline; the next head re-arms
            if not self.transport.is_closing():
                log.info("closed a connection that sent no complete request head within %g s", header_timeout)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return HeaderTimeoutProtocol
