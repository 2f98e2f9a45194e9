"""Where checkpoints come from: pinned hub revisions in production, tiny random-weight folders here."""

from .source import MODES, ResolvedCheckpoint, resolve
from .tiny import BUILDERS, build_tiny

__all__ = ["BUILDERS", "MODES", "ResolvedCheckpoint", "build_tiny", "resolve"]
