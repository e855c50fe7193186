"""realm-web: one pure-Python core that runs a language model on a server GPU, a laptop CPU,
a browser tab and Node.js. The core (this package's top level) uses the standard library only."""
from __future__ import annotations

from .chat import ChatTemplate, load_chat_template
from .engine import LLM, Completion, UnsupportedError
from .lora import AdapterError, AdapterInUse, AdapterNotFound
from .manifest import Manifest, ModelDirError, load_manifest
from .sampling import SamplingError, SamplingParams
from .scheduler import RequestOutput, Scheduler, SchedulerError
from .tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"
__all__ = [
    "LLM", "Completion", "ChatTemplate", "load_chat_template", "Manifest", "ModelDirError", "load_manifest",
    "SamplingParams", "SamplingError", "RequestOutput", "Scheduler", "SchedulerError", "Tokenizer",
    "load_tokenizer", "UnsupportedError", "AdapterError", "AdapterInUse", "AdapterNotFound", "__version__",
]
