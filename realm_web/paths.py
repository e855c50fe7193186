"""Where realm-web keeps models: $REALM_WEB_HOME (default ~/.cache/realm-web)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


def home() -> Path:
    return Path(os.environ.get("REALM_WEB_HOME") or Path.home() / ".cache" / "realm-web")


def default_model_dir() -> Path:
    return home() / "models" / DEFAULT_MODEL
