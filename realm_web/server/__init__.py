"""The realm-web server: OpenAI-compatible HTTP, a WebSocket protocol, tenants, metrics."""
from .app import create_app
from .config import ConfigError, ServerConfig, Tenant, load_config, parse_config
from .errors import ApiError

__all__ = ["create_app", "ConfigError", "ServerConfig", "Tenant", "load_config", "parse_config", "ApiError"]
