"""The LoRA fields of a request (api.md) resolved to checked local files before the request queues: `lora_id` or
`lora_name` from the store, then each `loras` item from the store or fetched (loras/). What crosses to Triton is the
LoraSet: paths, content keys and scales (components/lora_set.py); the models never see a name or a URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.lora_set import LoraFile, LoraSet
from loras import Fetcher, FetchFailed, LoraNotFound, LoraStore, LoraTooLarge, UnsafeLora, UnsafeUrl, candidates
from registry import Route, family_of

from .errors import ApiError
from .settings import Settings


def _store_file(path: Path, scale: float, field: str) -> LoraFile:
    stat = path.stat()
    # Size and mtime: a file replaced under the same name is a new LoRA to the models' caches.
    key = f"file:{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
    return LoraFile(str(path), key, scale, label=path.stem, field=field)


def _fetched_file(path: Path, scale: float, field: str) -> LoraFile:
    digest = path.stem  # the fetch cache names each file by its sha256 (loras/fetch.py)
    return LoraFile(str(path), f"sha256:{digest}", scale, label=f"url:{digest[:12]}", field=field)


@dataclass
class LoraSources:
    store: LoraStore | None
    fetcher: Fetcher

    @classmethod
    def of(cls, settings: Settings) -> LoraSources:
        store = LoraStore(settings.lora_store) if settings.lora_store is not None else None
        fetcher = Fetcher(
            settings.lora_cache,
            allowed_hosts=settings.lora_hosts,
            max_bytes=settings.lora_max_bytes,
            timeout_s=settings.lora_fetch_timeout_s,
        )
        return cls(store, fetcher)

    def _from_store(self, names: tuple[str, ...], field: str) -> Path:
        if self.store is None:  # no store configured: nothing is in it
            raise LoraNotFound(field, names)
        return self.store.find(names, field)

    def resolve(self, route: Route, values: dict[str, Any]) -> LoraSet | None:
        """The request's LoRA set (None on a route without LoRAs); ApiError 422 / 404 / 413 naming the field.
        Blocking (file checks, fetches): run it off the event loop."""
        if not route.lora:
            return None
        try:
            return LoraSet(tuple(self._files(route, values)))
        except (UnsafeLora, UnsafeUrl, FetchFailed) as exc:
            raise ApiError(422, str(exc), field=exc.field) from None
        except LoraNotFound as exc:
            raise ApiError(404, f"{exc.field}: {exc}", field=exc.field) from None
        except LoraTooLarge as exc:
            raise ApiError(413, str(exc), field=exc.field) from None

    def _files(self, route: Route, values: dict[str, Any]) -> list[LoraFile]:
        strength = float(values["lora_strength"])
        if values.get("lora_id") is not None:
            names = candidates(values["lora_id"], family_of(route.checkpoint).lora_store_prefix)
            files = [_store_file(self._from_store(names, "lora_id"), strength, "lora_id")]
        else:
            files = [_store_file(self._from_store((values["lora_name"],), "lora_name"), strength, "lora_name")]
        for i, item in enumerate(values.get("loras") or ()):
            if item.name is not None:
                field = f"loras[{i}].name"
                files.append(_store_file(self._from_store((item.name,), field), item.scale, field))
            else:
                field = f"loras[{i}].url"
                files.append(_fetched_file(self.fetcher.fetch(item.url, field), item.scale, field))
        return files


def with_trigger_word(values: dict[str, Any], prompt_field: str) -> dict[str, Any]:
    """api.md `trigger_word`: prepended to the prompt (an edit's instruction)."""
    trigger = values.get("trigger_word")
    if not trigger:
        return values
    prompt = values.get(prompt_field) or ""
    return {**values, prompt_field: f"{trigger.strip()} {prompt}".strip()}
