"""Loading a pipeline's multimodal processor where torchvision is missing (this CPU machine; never production).

In transformers 5.24 a vision-language processor that has a video processor cannot be constructed without
torchvision, and PyPI has no torchvision for the CPU torch 2.13 this machine runs. Edit pipelines only show the
text encoder images, so without torchvision the processor is built from the same files minus the video processor:
tokenizer and image processor (PIL backend), whose edit outputs matched the torchvision one to 1e-5. With
torchvision (the NGC image on Modal, the GPU machine) the stock `from_pretrained` runs unchanged.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


def load_processor(cls: type, path: Path, subfolder: str) -> Any:
    from transformers.utils import is_torchvision_available

    if is_torchvision_available() or "video_processor" not in getattr(cls, "get_attributes", lambda: [])():
        return cls.from_pretrained(path, subfolder=subfolder)
    return _without_video(cls).from_pretrained(Path(path) / subfolder)


@functools.cache
def _without_video(cls: type) -> type:
    class ProcessorWithoutVideo(cls):  # type: ignore[misc, valid-type]
        """ProcessorMixin takes its sub-processors from the __init__ signature: leaving video_processor out of it
        skips the video processor (and torchvision)."""

        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kw)

    ProcessorWithoutVideo.__name__ = cls.__name__
    return ProcessorWithoutVideo
