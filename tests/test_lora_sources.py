"""Where per-request LoRAs come from (loras/, issue 15), refused before anything is read or fetched: store names
that are not plain file names, files that escape the store or are not safetensors, and URLs that are not https, not
on the allowlist, or that point (as a literal or through DNS) at loopback, private, link-local or metadata ranges."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from loras import LoraNotFound, LoraStore, UnsafeLora, UnsafeUrl, candidates, check_url, resolve_public
from loras.urls import Target
from registry import FAMILIES

HOST = "loras.example.com"


def lora_file(path: Path) -> Path:
    save_file({"lora_unet_x.lora_down.weight": np.zeros((4, 8), np.float32)}, str(path))
    return path


@pytest.fixture()
def store(tmp_path: Path) -> LoraStore:
    root = tmp_path / "store"
    root.mkdir()
    lora_file(root / "qwen-character-ada.safetensors")
    lora_file(root / "character-ada.safetensors")
    lora_file(root / "character-bob.safetensors")
    lora_file(tmp_path / "outside.safetensors")
    (root / "escape.safetensors").symlink_to(tmp_path / "outside.safetensors")
    (root / "pickled.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle under the right name
    return LoraStore(root)


def test_lora_id_is_looked_up_under_the_familys_name_first(store: LoraStore) -> None:
    assert FAMILIES["qwen-image"].lora_store_prefix == "qwen"
    assert store.by_id("ada", "qwen").name == "qwen-character-ada.safetensors"
    assert store.by_id("bob", "qwen").name == "character-bob.safetensors"
    assert store.by_id("ada", None).name == "character-ada.safetensors"
    assert store.by_name("character-bob").name == "character-bob.safetensors"  # the suffix added


def test_a_missing_lora_says_which_names_were_tried(store: LoraStore) -> None:
    with pytest.raises(LoraNotFound) as info:
        store.by_id("eve", "qwen")
    assert (
        info.value.tried
        == candidates("eve", "qwen")
        == (
            "qwen-character-eve.safetensors",
            "character-eve.safetensors",
        )
    )
    assert "qwen-character-eve.safetensors or character-eve.safetensors" in str(info.value)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../outside", "must match"),
        ("/etc/passwd", "must match"),
        ("a/b", "must match"),
        ("..", "must match"),
        (".hidden", "must match"),
        ("x" * 200, "must match"),
        ("model.ckpt", "never pickled"),
        ("model.pt", "never pickled"),
        ("escape", "inside the LoRA store"),
        ("pickled", "not a valid safetensors"),
    ],
)
def test_unsafe_names_and_files_are_refused(store: LoraStore, name: str, says: str) -> None:
    with pytest.raises(UnsafeLora, match=says) as info:
        store.by_name(name)
    assert info.value.field == "lora_name"


@pytest.mark.parametrize("lora_id", ["../x", "a/b", "", "a b", "x" * 65])
def test_unsafe_ids_are_refused(store: LoraStore, lora_id: str) -> None:
    with pytest.raises(UnsafeLora) as info:
        store.by_id(lora_id, "qwen")
    assert info.value.field == "lora_id"


@pytest.mark.parametrize(
    ("url", "allowed", "says"),
    [
        (f"http://{HOST}/a.safetensors", [HOST], "only https"),
        (f"ftp://{HOST}/a.safetensors", [HOST], "only https"),
        (f"https://{HOST}/a.safetensors", [], "no LoRA hosts are configured"),
        ("https://other.example.org/a.safetensors", [HOST], "not on the LoRA host allowlist"),
        (f"https://user:pw@{HOST}/a.safetensors", [HOST], "credentials"),
        ("https://127.0.0.1/a.safetensors", ["127.0.0.1"], "not a public address"),
        ("https://10.1.2.3/a.safetensors", ["10.1.2.3"], "not a public address"),
        ("https://169.254.169.254/latest/meta-data", ["169.254.169.254"], "not a public address"),
        ("https://[::1]/a.safetensors", ["::1"], "not a public address"),
        ("https://[::ffff:192.168.0.1]/a", ["::ffff:192.168.0.1"], "not a public address"),
        ("https://[fd00:ec2::254]/a", ["fd00:ec2::254"], "not a public address"),
        (f"https://{HOST}:99999/a.safetensors", [HOST], "port"),
    ],
)
def test_unsafe_urls_are_refused_before_any_connection(url: str, allowed: list[str], says: str) -> None:
    with pytest.raises(UnsafeUrl, match=says):
        check_url(url, allowed, field="loras[0].url")


def fake_dns(*answers: str):
    """getaddrinfo's answer shape for these addresses: the resolver is an argument, so no query leaves the machine."""

    def resolve(host: str, port: int, type: int = 0) -> list[tuple]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in answers]

    return resolve


def test_a_name_is_fetched_only_if_every_address_it_resolves_to_is_public() -> None:
    target = check_url(f"https://{HOST}/x/a.safetensors?v=2", [HOST.upper()])
    assert target == Target(HOST, 443, "/x/a.safetensors?v=2")
    assert resolve_public(target, resolver=fake_dns("93.184.216.34")) == ["93.184.216.34"]
    for private in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "100.64.0.1", "224.0.0.1"):
        with pytest.raises(UnsafeUrl, match="not a public address"):
            resolve_public(target, resolver=fake_dns("93.184.216.34", private))
