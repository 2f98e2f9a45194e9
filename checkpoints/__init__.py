"""Where checkpoints come from: pinned hub revisions in production, tiny random-weight folders here."""

from .source import MODES, ResolvedCheckpoint, ResolvedLora, UnpinnedRevisionError, check_pinned, resolve, resolve_lora
from .tiny import BUILDER_VERSION, DEFAULT_ROOT, build_tiny, builder_of

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_ROOT",
    "MODES",
    "ResolvedCheckpoint",
    "ResolvedLora",
    "UnpinnedRevisionError",
    "build_tiny",
    "builder_of",
    "check_pinned",
    "resolve",
    "resolve_lora",
]
