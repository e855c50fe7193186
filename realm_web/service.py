"""The service interface between a front end (the HTTP/WebSocket server) and a model.

`realm_web.LLM` implements it in this process; a deployment that serves the model from
elsewhere (Ray Serve replicas) implements the same one, so the server does not change.
Standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from .sampling import SamplingParams
from .scheduler import RequestOutput


@dataclass(frozen=True)
class ModelInfo:
    """What clients may be told about the served model."""

    id: str
    max_length: int
    vocab_size: int
    dtype: str
    device: str
    created: int = 0  # unix time the export was made
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceStats:
    """The load right now: requests holding a slot, requests queued, KV tokens in use."""

    running: int
    waiting: int
    kv_used: int
    kv_capacity: int
    speculative_method: str | None = None  # speculative decoding in force, if any
    speculative: dict[str, int] | None = None  # its counters: verify_steps, draft/accepted/emitted_tokens
    prefix_cache: dict[str, int] | None = None  # with prefix caching: hits, cached_tokens, prompt_tokens


Sink = Callable[[RequestOutput], None]


class ModelService(Protocol):
    """A model that streams completions to many callers at once."""

    @property
    def info(self) -> ModelInfo: ...

    def encode_prompt(self, prompt: Any, *, system: str | None = None, raw: bool = False,
                      tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids of a prompt (text, chat messages, or ids; chat messages with the functions
        `tools` offers); ValueError when it is unusable."""
        ...

    def check_format(self, fmt: Any) -> None:
        """Compile a structured-output format (realm_web.structured.OutputFormat) now; a
        StructuredError if it cannot be served."""
        ...

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's text (its bytes decoded alone, undecodable bytes replaced)."""
        ...

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """Each token's bytes."""
        ...

    def tokenize(self, prompt: Any, *, add_special_tokens: bool = False, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a text (as is) or of chat messages (through the chat template); ValueError
        when it is unusable. With the defaults, the ids the completion and chat paths use."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a sequence of token ids (special tokens included)."""
        ...

    def tokenizer_info(self) -> dict[str, Any]:
        """What a client may learn of the tokenizer: vocabulary size, special and end tokens,
        the chat template."""
        ...

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Sink, *, priority: int = 0,
               adapter: str | None = None) -> int:
        """Start a request; `sink` gets its deltas (the last has `finished`). Returns its id.
        Raises SchedulerError (or another ValueError) at once for one that can never run."""
        ...

    def abort(self, request_id: int) -> None:
        """Stop a request; its sink gets a last delta with finish_reason "abort"."""
        ...

    def stats(self) -> ServiceStats: ...

    def adapters(self) -> list[str]:
        """The LoRA adapters requests may name."""
        ...

    def adapter_files(self, name: str) -> dict[str, str]:
        """A loaded adapter's files, for a browser tab to load it too: download name -> path
        (adapter_config.json + adapter_model.safetensors, or adapter.gguf); AdapterNotFound."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Load (or replace) an adapter; AdapterError for one it cannot serve or while in use."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Forget an adapter; AdapterError if unknown or in use."""
        ...

    def waiting(self, request_ids: Sequence[int]) -> int:
        """How many of these requests are still waiting for a slot."""
        ...

    def close(self) -> None: ...
