"""Configuration from the environment (prefix RYLA_)."""

from __future__ import annotations

from functools import cached_property

from pydantic_settings import BaseSettings, SettingsConfigDict

from registry import GROUPS

# US$ per second of a GPU held; the local stack runs on a CPU we do not bill for.
PRICE_PER_SECOND = {"H100": 0.001097, "cpu": 0.0}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RYLA_", frozen=True)

    triton_grpc_url: str = "127.0.0.1:8001"
    api_keys: str = ""  # comma-separated; empty turns auth off
    gpu_type: str = "cpu"
    price_per_second: float | None = None  # default: PRICE_PER_SECOND[gpu_type]
    max_body_bytes: int = 32 * 1024 * 1024
    groups: str = ""  # comma-separated app groups this API serves; empty = every group of the registry
    retry_after_s: int = 5

    @cached_property
    def keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())

    @cached_property
    def served_groups(self) -> tuple[str, ...]:
        names = tuple(g.strip() for g in self.groups.split(",") if g.strip()) or tuple(GROUPS)
        unknown = set(names) - set(GROUPS)
        if unknown:
            raise ValueError(f"RYLA_GROUPS names unknown app groups: {sorted(unknown)}")
        return names

    @cached_property
    def price(self) -> float:
        if self.price_per_second is not None:
            return self.price_per_second
        return PRICE_PER_SECOND.get(self.gpu_type, 0.0)
