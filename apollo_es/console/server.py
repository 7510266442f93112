"""Serving the console with uvicorn."""

from __future__ import annotations

import socket

import uvicorn
from starlette.types import ASGIApp

__all__ = ["Server"]


class Server(uvicorn.Server):
    """uvicorn, ending the live event streams first when it shuts down.

    A page's event stream never ends on its own, so plain uvicorn would wait out its grace
    period on every open page and then cancel them with a traceback.
    """

    def __init__(self, app: ASGIApp, *, log_level: str = "warning", grace: float = 2.0) -> None:
        super().__init__(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=grace))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.app.state.hub.close()
        await super().shutdown(sockets)
