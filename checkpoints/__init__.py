"""Where checkpoints come from: pinned hub revisions in production, tiny random-weight folders here."""

from .source import MODES, ResolvedCheckpoint, ResolvedLora, UnpinnedRevisionError, check_pinned, resolve, resolve_lora
from .tiny import BUILDER_VERSION, BUILDERS, DEFAULT_ROOT, build_tiny

__all__ = [
    "BUILDERS",
    "BUILDER_VERSION",
    "DEFAULT_ROOT",
    "MODES",
    "ResolvedCheckpoint",
    "ResolvedLora",
    "UnpinnedRevisionError",
    "build_tiny",
    "check_pinned",
    "resolve",
    "resolve_lora",
]
