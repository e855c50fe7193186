"""The server's side of the model: admits API requests (tenant limits, queue bounds, context),
runs their choices as streams over the ModelService (the LLM in this process), keeps metrics,
times requests out, and drains on shutdown. HTTP and WebSocket handlers both go through it, so
every request shares one continuous-batching loop and one drain."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator

from ..scheduler import RequestOutput
from ..service import ModelService
from .config import ServerConfig, Tenant
from .errors import ApiError, bad_request
from .limits import Limiter, LimitExceeded, Ticket
from .metrics import Metrics
from .protocol import GenRequest, fit_context

log = logging.getLogger("realm_web.server")

RETRY_AFTER_BUSY = "1"  # seconds, for a full queue: slots free up at every step
RETRY_AFTER_SHUTDOWN = "5"


class Job:
    """One API request: its choices run on the model and feed one queue of (choice, delta).

    `status` is what the metrics and the request log say of it: "ok", "cancelled" (the client
    went away or cancelled it), "timeout" (it ran past request_timeout_s) or "error"."""

    def __init__(self, hub: "Hub", tenant: Tenant, req: GenRequest, endpoint: str, ticket: Ticket) -> None:
        self.hub, self.tenant, self.req, self.endpoint, self.ticket = hub, tenant, req, endpoint, ticket
        self.queue: asyncio.Queue[tuple[int, RequestOutput]] = asyncio.Queue()
        self.rids: list[int] = []
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        self.completion_tokens = 0
        self.finish: dict[int, str | None] = {}
        self.status = "ok"
        self.service: ModelService | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def timed_out(self) -> bool:
        return self.status == "timeout"

    def start(self, timeout_s: float) -> None:
        """Submit every choice (a ValueError here, such as a SchedulerError, means the request
        can never run) and arm the request timeout."""
        service = self.service = self.hub.model
        try:
            for index, ids, params in self.req.choices:
                self.rids.append(service.submit(ids, params, functools.partial(self._sink, index),
                                                priority=self.tenant.priority, adapter=self.req.adapter))
        except ValueError as e:
            self.status = "error"
            self.close()
            raise bad_request(str(e)) from None
        if timeout_s > 0:
            self.timer = asyncio.get_running_loop().call_later(timeout_s, self.expire)

    def _sink(self, index: int, out: RequestOutput) -> None:
        self.queue.put_nowait((index, out))

    async def events(self, coalesce: bool = False) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Deltas of every choice as they come; ends when all choices finished. Leaving early
        (or being cancelled: the client went away) aborts the unfinished choices. With
        `coalesce`, deltas of one choice that queued up while the consumer was busy come as one."""
        left = len(self.rids)
        try:
            while left:
                index, d = await self.queue.get()
                while coalesce and not d.finished and not self.queue.empty():
                    j, e = self.queue._queue[0]  # type: ignore[attr-defined]  # peek
                    if j != index:
                        break
                    self.queue.get_nowait()
                    d = d.merged(e)
                if d.token_ids:
                    if self.t_first is None:
                        self.t_first = time.perf_counter()
                    self.completion_tokens += len(d.token_ids)
                if d.finished:
                    left -= 1
                    self.finish[index] = d.finish_reason
                yield index, d
        except (asyncio.CancelledError, GeneratorExit):
            self.abandon()
            raise
        except BaseException:
            self.status = "error"
            raise
        finally:
            self.close()

    def cancel(self) -> None:
        """Abort every unfinished choice; each ends with finish_reason "abort"."""
        for rid in self.rids:
            assert self.service is not None  # set by start(), before any rid
            self.service.abort(rid)

    def abandon(self) -> None:
        """The client cancelled the request, or went away: it counts as cancelled."""
        if self.status == "ok" and not self._closed:
            self.status = "cancelled"
        self.cancel()

    def expire(self) -> None:
        """It ran past request_timeout_s: its choices end now."""
        if self.status == "ok" and not self._closed:
            self.status = "timeout"
            self.hub.metrics.refusals.labels("request_timeout").inc()
        self.cancel()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.cancel()
        self.hub._finished(self)


class Hub:
    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.service: ModelService | None = None
        self.model_id = ""
        self.limiter = Limiter()
        self.jobs: set[Job] = set()
        self.draining = False
        self.load_error: str | None = None

    def attach(self, service: ModelService) -> None:
        self.service = service
        self.model_id = service.info.id
        self.metrics.watch(service.stats, service.adapters)

    @property
    def model(self) -> ModelService:
        """The served model; ApiError 503 while it loads, failed to load, or the server drains."""
        if self.draining:
            raise ApiError(503, "the server is shutting down", code="shutting_down",
                           headers={"Retry-After": RETRY_AFTER_SHUTDOWN})
        if self.service is None:
            msg = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise ApiError(503, msg, code="model_not_ready", headers={"Retry-After": "2"})
        return self.service

    def health(self) -> dict[str, Any]:
        """status: "ok", "loading", "error" (the model failed to load) or "draining"; the load."""
        out: dict[str, Any] = {"status": "ok", "model": self.model_id, "running": 0, "waiting": 0}
        if self.draining:
            out["status"] = "draining"
        elif self.service is None:
            out.update(status="error" if self.load_error else "loading", error=self.load_error)
        if self.service is not None:
            st = self.service.stats()
            out.update(running=st.running, waiting=st.waiting)
        return out

    def check_model(self, tenant: Tenant, model: str, adapter: str | None = None) -> str | None:
        """The adapter a request runs with: `model` is the base model, or a loaded adapter's name
        (as vLLM names them), or the base with realm-web's `adapter` field. A model or adapter the
        tenant may not use is as absent as one that does not exist (404, its existence unsaid)."""
        missing = ApiError(404, f"The model '{model}' does not exist or you do not have access to it.",
                           code="model_not_found", param="model")
        names = self.service.adapters() if self.service is not None else []
        if model != self.model_id:
            if adapter is not None or model not in names:
                raise missing
            adapter = model
        if not tenant.allows_model(self.model_id):
            raise missing
        if adapter is not None and (adapter not in names or not tenant.allows_adapter(adapter)):
            raise ApiError(404, f"The adapter '{adapter}' does not exist or you do not have access to it.",
                           code="model_not_found", param="adapter" if model == self.model_id else "model")
        return adapter

    def models_for(self, tenant: Tenant) -> list[str | None]:
        """What the tenant may name: the base model (None) and the adapters it may use."""
        if self.service is None or not tenant.allows_model(self.model_id):
            return []
        return [None, *(a for a in self.service.adapters() if tenant.allows_adapter(a))]

    def _check_queue(self, service: ModelService, tenant: Tenant) -> None:
        """Bounded waiting: beyond max_queue requests waiting for a slot (all tenants, then this
        tenant's own bound) a new request is refused at once instead of waiting for minutes."""
        cfg = self.config
        if cfg.max_queue and service.stats().waiting >= cfg.max_queue:
            raise ApiError(503, f"the server is at capacity: {cfg.max_queue} requests are waiting for a slot; "
                                "retry shortly", code="server_overloaded", headers={"Retry-After": RETRY_AFTER_BUSY})
        if tenant.max_queue:
            mine = [r for j in self.jobs if j.tenant.name == tenant.name for r in j.rids]
            if service.waiting(mine) >= tenant.max_queue:
                raise ApiError(429, f"tenant {tenant.name!r} has {tenant.max_queue} requests waiting for a slot, "
                                    "its limit", code="queue_full", headers={"Retry-After": RETRY_AFTER_BUSY})

    def submit(self, tenant: Tenant, req: GenRequest, endpoint: str) -> Job:
        """Admit and start a request, or raise ApiError (400 context, 404 model, 429 limits and
        the tenant's queue, 503 the server's queue or shutdown)."""
        service = self.model
        req.adapter = self.check_model(tenant, req.model, req.adapter)
        fit_context(req, service.info.max_length, tenant.max_tokens)
        self._check_queue(service, tenant)
        cost = req.prompt_tokens() * req.n + len(req.prompts) * req.n * req.params.max_tokens
        try:
            ticket = self.limiter.admit(tenant, cost, time.monotonic())
        except LimitExceeded as e:
            raise ApiError(429, str(e), code="rate_limit_exceeded",
                           headers={"Retry-After": str(int(e.retry_after_s + 0.999))}) from None
        job = Job(self, tenant, req, endpoint, ticket)
        self.jobs.add(job)
        job.start(self.config.request_timeout_s)  # on a ValueError it closes itself (refunding the ticket): 400
        return job

    def _finished(self, job: Job) -> None:
        self.jobs.discard(job)
        used = job.req.prompt_tokens() * job.req.n + job.completion_tokens
        self.limiter.finish(job.ticket, used)
        t1 = time.perf_counter()
        m = self.metrics
        m.prompt_tokens.inc(job.req.prompt_tokens() * job.req.n)
        m.generation_tokens.inc(job.completion_tokens)
        m.e2e.observe(t1 - job.t0)
        if job.t_first is not None:
            m.ttft.observe(job.t_first - job.t0)
            per_choice = job.completion_tokens / max(1, len(job.rids))
            if per_choice > 1:
                m.per_token.observe((t1 - job.t_first) / (per_choice - 1))
        m.requests.labels(job.endpoint, "200" if job.status == "ok" else job.status).inc()
        label = job.req.adapter or "(base)"
        m.adapter_requests.labels(label).inc()
        m.adapter_tokens.labels(label).inc(job.completion_tokens)
        log.info("request", extra={"fields": {
            "endpoint": job.endpoint, "tenant": job.tenant.name, "status": job.status, "adapter": job.req.adapter,
            "prompt_tokens": job.req.prompt_tokens(), "completion_tokens": job.completion_tokens,
            "choices": len(job.rids), "finish_reasons": sorted({str(r) for r in job.finish.values()}),
            "ttft_ms": round((job.t_first - job.t0) * 1e3, 1) if job.t_first else None,
            "duration_ms": round((t1 - job.t0) * 1e3, 1)}})

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (503 shutting_down) and let running ones finish for `grace_s`,
        then abort the rest: their streams, HTTP and WebSocket alike, end cleanly with
        finish_reason "abort" (and their final event or frame)."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for job in list(self.jobs):
            job.cancel()
        for _ in range(50):  # the consumers write their last chunk or frame
            if not self.jobs:
                break
            await asyncio.sleep(0.02)
