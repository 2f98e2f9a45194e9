"""Configuration from the environment (prefix RYLA_), e.g. RYLA_TRITON_GRPC_URL, RYLA_API_KEYS=key1,key2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from registry import GROUPS

# US$ per second of a GPU held; the local stack runs on a CPU we do not bill for.
PRICE_PER_SECOND = {"H100": 0.001097, "cpu": 0.0}

# NoDecode: these arrive as plain comma-separated strings, not JSON lists, so RYLA_API_KEYS=a,b works.
CommaList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RYLA_", frozen=True)

    triton_grpc_url: str = "127.0.0.1:8001"
    # Empty turns auth off. Kept out of repr so a logged Settings never shows a key.
    api_keys: CommaList = Field(default=(), repr=False)
    gpu_type: str = "cpu"
    # US$ per GPU-second; None takes PRICE_PER_SECOND[gpu_type] (0 for a GPU type the table does not know).
    price_per_second: float | None = Field(default=None, ge=0)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Seconds the whole body may take to arrive after the headers; then 408 and the connection is closed.
    body_timeout_s: float = Field(default=30.0, gt=0)
    # Of a body over max_body_bytes, read and drop up to this many bytes before the 413, so that a client that writes
    # its whole body before reading (urllib) reads the 413 instead of a reset; beyond it the 413 comes at once.
    # None: 4 x max_body_bytes.
    body_drain_bytes: int | None = Field(default=None, ge=0)
    # Seconds a connection may take to send a request's headers, from its opening or its last answer (uvicorn has
    # no such limit: a client that never finishes its headers would hold the connection forever).
    header_timeout_s: float = Field(default=30.0, gt=0)
    # The app groups this API serves (one per Modal container); empty = every group of the registry.
    groups: CommaList = ()
    # Overrides every route's Route.timeout_s when set (tests, or an operator tightening limits).
    generation_timeout_s: float | None = Field(default=None, gt=0)
    # Seconds from a request's arrival by which its generation must be done, queueing included; the route's limit
    # shrinks to fit. Set where a proxy cuts long requests short: Modal's web endpoints turn an answer later than
    # 150 s into a redirect to poll, which a client that reads raw bytes may not follow. None: the route's limit alone.
    # Jobs are not bound by it: their answers are read later, from the job.
    answer_deadline_s: float | None = Field(default=None, gt=0)
    # Bound on the readiness / model-config calls of /ready and /v1/models, so a hung Triton cannot hang them.
    probe_timeout_s: float = Field(default=2.0, gt=0)
    # What 429 and 503 answers tell clients to wait before retrying.
    retry_after_s: int = Field(default=5, ge=1)
    # The LoRA store of lora_id / lora_name (api.md): a folder (a Modal Volume in production); None: every name is
    # a 404. LoRA URLs are fetched only from these hosts (none by default), up to the size and time caps, into the
    # cache (by content hash).
    lora_store: Path | None = None
    lora_cache: Path = Path("/tmp/ryla-lora-cache")
    lora_hosts: CommaList = ()
    lora_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    lora_fetch_timeout_s: float = Field(default=120.0, gt=0)

    # Where jobs live (api/job_store.py): "local" (this process) or "modal-dict:<name>" (every container of a
    # group); how long an ended job stays readable, how many ended jobs stay at most, how often a running job looks
    # for a cancel made through another container.
    job_store: str = "local"
    job_retention_s: float = Field(default=3600.0, gt=0)
    job_max_stored: int = Field(default=256, gt=0)
    job_cancel_poll_s: float = Field(default=0.5, gt=0)

    @field_validator("api_keys", "groups", "lora_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _known_groups(self) -> Settings:
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"RYLA_GROUPS names unknown app groups {unknown}; the registry has {sorted(GROUPS)}")
        return self

    @property
    def served_groups(self) -> tuple[str, ...]:
        return self.groups or tuple(GROUPS)

    @property
    def price(self) -> float:
        if self.price_per_second is not None:
            return self.price_per_second
        return PRICE_PER_SECOND.get(self.gpu_type, 0.0)

    @property
    def drain_bytes(self) -> int:
        return 4 * self.max_body_bytes if self.body_drain_bytes is None else self.body_drain_bytes

    def timeout_of(self, route_timeout_s: float) -> float:
        return self.generation_timeout_s or route_timeout_s
