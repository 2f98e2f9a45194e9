"""Per-request LoRAs (issue 15): where their files come from, checked before anything reads or fetches them.

`store.py`: the LoRA store (a Modal Volume in production, a folder here), looked up by the product's `lora_id` and
`lora_name` fields; `urls.py`: the rules an `https` LoRA URL must pass before any connection is made; `fetch.py`:
the fetch itself, every hop checked, capped in bytes and time, cached by content hash. None imports torch or
Triton: the API runs them before a request takes its place in the queue.
"""

from .fetch import Fetcher, FetchFailed, LoraTooLarge
from .store import LoraNotFound, LoraStore, UnsafeLora, candidates
from .urls import UnsafeUrl, check_address, check_url, resolve_public

__all__ = [
    "FetchFailed",
    "Fetcher",
    "LoraTooLarge",
    "LoraNotFound",
    "LoraStore",
    "UnsafeLora",
    "UnsafeUrl",
    "candidates",
    "check_address",
    "check_url",
    "resolve_public",
]
