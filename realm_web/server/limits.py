"""Per-tenant admission: requests and tokens per minute over a sliding 60 s window, and
concurrent requests. Sans-IO: the caller passes the clock, so tests need no sleeping."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .config import Tenant

WINDOW_S = 60.0


class LimitExceeded(Exception):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1.0, retry_after_s)


@dataclass
class Ticket:
    """One admitted request's charge: `tokens` at time `t`, counted while `live` (in the window)."""

    tenant: str
    t: float
    tokens: int
    live: bool = True


@dataclass
class _Usage:
    requests: collections.deque[float] = field(default_factory=collections.deque)
    tokens: collections.deque[Ticket] = field(default_factory=collections.deque)
    token_sum: int = 0
    active: int = 0


class Limiter:
    """Charges each admitted request 1 request and (prompt + max_tokens) tokens; `finish` refunds
    the tokens it did not use and frees its concurrency slot."""

    def __init__(self) -> None:
        self._usage: dict[str, _Usage] = collections.defaultdict(_Usage)

    def _trim(self, u: _Usage, now: float) -> None:
        while u.requests and u.requests[0] <= now - WINDOW_S:
            u.requests.popleft()
        while u.tokens and u.tokens[0].t <= now - WINDOW_S:
            old = u.tokens.popleft()
            old.live = False
            u.token_sum -= old.tokens

    def admit(self, tenant: Tenant, tokens: int, now: float) -> Ticket:
        """Raise LimitExceeded (with the seconds to wait) or record the request."""
        u = self._usage[tenant.name]
        self._trim(u, now)
        if tenant.max_concurrent and u.active >= tenant.max_concurrent:
            raise LimitExceeded(f"tenant {tenant.name!r} has {u.active} requests running, its limit", 1.0)
        if tenant.requests_per_minute and len(u.requests) >= tenant.requests_per_minute:
            raise LimitExceeded(f"tenant {tenant.name!r} is over {tenant.requests_per_minute} requests per minute",
                                u.requests[0] + WINDOW_S - now)
        if tenant.tokens_per_minute:
            if tokens > tenant.tokens_per_minute:
                raise LimitExceeded(f"this request needs {tokens} tokens, more than the tenant's "
                                    f"{tenant.tokens_per_minute} tokens per minute", WINDOW_S)
            if u.token_sum + tokens > tenant.tokens_per_minute:
                need, wait = u.token_sum + tokens - tenant.tokens_per_minute, WINDOW_S
                for old in u.tokens:  # when enough of the window's tokens will have expired
                    need -= old.tokens
                    if need <= 0:
                        wait = old.t + WINDOW_S - now
                        break
                raise LimitExceeded(f"tenant {tenant.name!r} is over {tenant.tokens_per_minute} tokens per minute", wait)
        ticket = Ticket(tenant.name, now, tokens)
        u.requests.append(now)
        u.tokens.append(ticket)
        u.token_sum += tokens
        u.active += 1
        return ticket

    def finish(self, ticket: Ticket, used: int) -> None:
        """The request ended having used `used` tokens: refund the rest of its charge."""
        u = self._usage[ticket.tenant]
        u.active = max(0, u.active - 1)
        if ticket.live and used < ticket.tokens:
            u.token_sum -= ticket.tokens - used
            ticket.tokens = used

    def active(self, tenant: str) -> int:
        return self._usage[tenant].active
