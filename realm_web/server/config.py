"""Server configuration: tenants with API keys and limits, read from a TOML or JSON file.

    [server]                      # all optional
    max_body_bytes = 1048576
    metrics_api_key = "..."       # if set, /metrics wants this key
    shutdown_grace_s = 10         # on SIGTERM: running requests get this long, then end with "abort"
    header_timeout_s = 10         # a connection must send a request's headers within this
    body_timeout_s = 30           # ... and its body within this, once the headers are in
    request_timeout_s = 600       # a request running longer ends (0: no limit)
    max_queue = 256               # requests waiting for a slot, all tenants together (0: no limit)

    [[tenants]]
    name = "acme"
    api_keys = ["sk-acme-1"]
    requests_per_minute = 60      # 0 or absent: no limit
    tokens_per_minute = 20000     # prompt + completion tokens
    max_concurrent = 4
    max_tokens = 512              # per request
    max_queue = 16                # this tenant's requests waiting for a slot (0: only the global bound)
    models = ["smollm2-135m-instruct"]   # absent: every model
    adapters = ["sql"]            # LoRA adapters it may use (absent: every loaded one; []: none)
    admin = false                 # may load and unload adapters at run time (/v1/load_lora_adapter)
    priority = 0                  # scheduler priority of this tenant's requests
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard


class ConfigError(ValueError):
    """The server config file is malformed."""


@dataclass(frozen=True)
class Tenant:
    name: str
    api_keys: tuple[str, ...] = ()
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0
    max_tokens: int = 0
    models: tuple[str, ...] | None = None
    adapters: tuple[str, ...] | None = None  # None: every loaded adapter
    priority: int = 0
    max_queue: int = 0
    admin: bool = False

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def allows_adapter(self, name: str) -> bool:
        return self.adapters is None or name in self.adapters


OPEN_TENANT = Tenant(name="default", admin=True)  # an open server listens on loopback only


@dataclass(frozen=True)
class ServerConfig:
    tenants: tuple[Tenant, ...] = ()
    max_body_bytes: int = 1 << 20
    metrics_api_key: str | None = None
    shutdown_grace_s: float = 10.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    request_timeout_s: float = 600.0
    max_queue: int = 256
    lora_root: str | None = None  # adapters loaded at run time must lie under it (None: no run-time loading)
    _by_key: dict[str, Tenant] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for t in self.tenants:
            for k in t.api_keys:
                if k in self._by_key:
                    raise ConfigError(f"API key given to two tenants ({self._by_key[k].name}, {t.name})")
                self._by_key[k] = t

    @property
    def open(self) -> bool:
        """No tenants configured: every request is served as the one open tenant."""
        return not self.tenants

    def tenant_for_key(self, key: str | None) -> Tenant | None:
        if self.open:
            return OPEN_TENANT
        return self._by_key.get(key or "")


_TENANT_KEYS = {"name", "api_keys", "requests_per_minute", "tokens_per_minute", "max_concurrent", "max_tokens",
                "models", "adapters", "priority", "max_queue", "admin"}
_SERVER_SECONDS = {"shutdown_grace_s": 10.0, "header_timeout_s": 10.0, "body_timeout_s": 30.0,
                   "request_timeout_s": 600.0}
_SERVER_KEYS = {"max_body_bytes", "metrics_api_key", "max_queue", *_SERVER_SECONDS}


def _name(v: Any) -> TypeGuard[str]:
    """A name or key in the config: text with no control characters and no lone surrogates."""
    if not isinstance(v, str) or not v or any(c < " " or "\x7f" <= c < "\xa0" for c in v):
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_config(path: str | Path) -> ServerConfig:
    """Read a .toml or .json config; raises ConfigError with the reason if it is malformed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        raw: Any = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply") from None
    except (ValueError, tomllib.TOMLDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"{p}: {e}") from None
    return parse_config(raw, str(p))


def parse_config(raw: Any, where: str = "config") -> ServerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table at the top")
    unknown = set(raw) - {"server", "tenants"}
    if unknown:
        raise ConfigError(f"{where}: unknown sections {sorted(unknown)}")
    server = raw.get("server", {})
    if not isinstance(server, dict) or set(server) - _SERVER_KEYS:
        raise ConfigError(f"{where}: [server] takes only {sorted(_SERVER_KEYS)}")
    tenants = []
    names: set[str] = set()
    for i, t in enumerate(raw.get("tenants", [])):
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: tenants[{i}] must be a table")
        bad = set(t) - _TENANT_KEYS
        if bad:
            raise ConfigError(f"{where}: tenants[{i}] has unknown keys {sorted(bad)}")
        name = t.get("name")
        if not _name(name) or name in names:
            raise ConfigError(f"{where}: tenants[{i}] needs a unique non-empty name (printable text)")
        names.add(name)
        keys = t.get("api_keys", [])
        if not isinstance(keys, list) or not keys or not all(_name(k) and len(k) >= 8 for k in keys):
            raise ConfigError(f"{where}: tenant {name!r} needs api_keys, a list of strings of 8+ printable characters")
        ints = {}
        for k in ("requests_per_minute", "tokens_per_minute", "max_concurrent", "max_tokens", "priority", "max_queue"):
            v = t.get(k, 0)
            if not isinstance(v, int) or isinstance(v, bool) or (v < 0 and k != "priority"):
                raise ConfigError(f"{where}: tenant {name!r}: {k} must be a non-negative integer")
            ints[k] = v
        models = t.get("models")
        if models is not None and not (isinstance(models, list) and all(_name(m) for m in models)):
            raise ConfigError(f"{where}: tenant {name!r}: models must be a list of names")
        adapters = t.get("adapters")
        if adapters is not None and not (isinstance(adapters, list) and all(_name(a) for a in adapters)):
            raise ConfigError(f"{where}: tenant {name!r}: adapters must be a list of names")
        admin = t.get("admin", False)
        if not isinstance(admin, bool):
            raise ConfigError(f"{where}: tenant {name!r}: admin must be true or false")
        tenants.append(Tenant(name=name, api_keys=tuple(keys), models=tuple(models) if models is not None else None,
                              adapters=tuple(adapters) if adapters is not None else None, admin=admin, **ints))
    mb = server.get("max_body_bytes", 1 << 20)
    if not isinstance(mb, int) or mb < 1024:
        raise ConfigError(f"{where}: max_body_bytes must be an integer >= 1024")
    mk = server.get("metrics_api_key")
    if mk is not None and not _name(mk):
        raise ConfigError(f"{where}: metrics_api_key must be a string of printable characters")
    seconds = {}
    for k, default in _SERVER_SECONDS.items():
        v = server.get(k, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 86400:
            raise ConfigError(f"{where}: {k} must be a number of seconds in [0, 86400]")
        seconds[k] = float(v)
    for k in ("header_timeout_s", "body_timeout_s"):
        if seconds[k] <= 0:
            raise ConfigError(f"{where}: {k} must be > 0")
    mq = server.get("max_queue", 256)
    if not isinstance(mq, int) or isinstance(mq, bool) or mq < 0:
        raise ConfigError(f"{where}: max_queue must be a non-negative integer")
    return ServerConfig(tenants=tuple(tenants), max_body_bytes=mb, metrics_api_key=mk, max_queue=mq,
                        shutdown_grace_s=seconds["shutdown_grace_s"], header_timeout_s=seconds["header_timeout_s"],
                        body_timeout_s=seconds["body_timeout_s"], request_timeout_s=seconds["request_timeout_s"])
