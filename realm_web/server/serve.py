"""`realm-web serve`: uvicorn around create_app, with JSON logs, a deadline for each request's
headers (slowloris), and a graceful drain on SIGINT/SIGTERM: new requests get 503 while the
running ones finish (HTTP and WebSocket alike) for at most the grace, and the process exits
within it."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from .app import create_app
from .config import ServerConfig, load_config

log = logging.getLogger("realm_web.server")
EXIT_MARGIN_S = 0.75  # of the grace, kept for ending the streams left and stopping the server


def guarded_http(header_timeout_s: float, on_timeout: Callable[[], None]) -> type:
    """uvicorn's httptools protocol with a deadline: a connection must send a request's headers
    within `header_timeout_s` of opening (or of the request's first byte, on a kept-alive
    connection), else it gets 408 and is closed. uvicorn has no such limit of its own."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttp(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            on_timeout()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                                 b"content-length: 28\r\nconnection: close\r\n\r\nthe request headers were late")
            self.transport.close()

    return GuardedHttp


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger("realm_web")
    root.handlers[:] = [h]
    root.setLevel(level.upper())
    root.propagate = False


def serve(*, host: str = "127.0.0.1", port: int = 8000, model: str | None = None, config: str | None = None,
          device: str = "cpu", dtype: str | None = None, threads: int | None = None, max_slots: int = 16,
          max_length: int | None = 2048, log_level: str = "warning", web: str | None = None,
          lora_modules: dict[str, str] | None = None, lora_root: str | None = None, max_loras: int = 8,
          speculative: Any = None, prefix_caching: bool = False) -> int:
    """Serve until SIGTERM/SIGINT. `lora_modules` (name -> path) are loaded with the model;
    `lora_root` allows admin tenants to load adapters under it at run time; `speculative` is
    LLM's option of that name."""
    import dataclasses

    import uvicorn

    setup_logging(log_level)
    cfg = load_config(config) if config else ServerConfig()
    if lora_root is not None:
        cfg = dataclasses.replace(cfg, lora_root=lora_root)
    if cfg.open and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"realm-web: refusing to serve without API keys on {host}: give --config with tenants, "
              "or serve on 127.0.0.1", file=sys.stderr)
        return 2
    model_dir = Path(model) if model else None

    def load() -> Any:
        from ..engine import LLM

        llm = LLM(model_dir, device=device, dtype=dtype, threads=threads, max_slots=max_slots,
                  max_length=max_length, max_loras=max_loras, speculative=speculative, prefix_caching=prefix_caching)
        for name, path in (lora_modules or {}).items():
            llm.load_adapter(name, path)
            log.info("adapter loaded", extra={"fields": {"adapter": name, "path": path}})
        return llm

    from ..paths import default_model_dir
    from .web import default_web_dir

    web_dir = Path(web) if web else default_web_dir()
    app = create_app(load, cfg, web_dir=web_dir, model_dir=model_dir or default_model_dir())
    hub = app.state.hub
    metrics = app.state.metrics
    http = guarded_http(cfg.header_timeout_s, lambda: metrics.refused("(headers)", 408, "header_timeout"))
    # Frames over max_body_bytes get an error frame from the app, the socket stays open; only a
    # frame beyond 16x that (at least 16 MiB) makes the WebSocket layer close the connection.
    ucfg = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=http,
                          ws_max_size=max(16 * cfg.max_body_bytes, 16 << 20), timeout_graceful_shutdown=2,
                          lifespan="on")

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            """First signal: drain (the listener stays open and answers 503), then stop. A
            second signal stops at once."""
            if hub.draining or self.should_exit:
                super().handle_exit(sig, frame)
                return
            self._captured_signals.append(sig)
            log.info("draining", extra={"fields": {"grace_s": cfg.shutdown_grace_s, "running": len(hub.jobs)}})
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(self.drain()))

        async def drain(self) -> None:
            await hub.drain(max(0.0, cfg.shutdown_grace_s - EXIT_MARGIN_S))
            self.should_exit = True

    mode = "open: no API keys, loopback only" if cfg.open else f"{len(cfg.tenants)} tenants with API keys"
    print(f"realm-web: serving on http://{host}:{port} ({mode}); the model loads in the background, "
          f"GET /health says when it is ready"
          + (f"; the chat page is at http://{host}:{port}/" if web_dir else "; no web page (run `make web`)"),
          file=sys.stderr, flush=True)
    # uvicorn re-raises the signal that stopped it once it has shut down; after a clean drain,
    # SIGTERM means a normal exit (status 0). SIGINT keeps its KeyboardInterrupt (status 130).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Server(ucfg).run(sockets=[listen_socket(host, port)])
    return 0


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket, with TCP_NODELAY (accepted connections inherit it): a stream writes
    many small chunks, and Nagle's algorithm would hold one back until the client's delayed ACK,
    some 40 ms (not every event loop sets it on its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
