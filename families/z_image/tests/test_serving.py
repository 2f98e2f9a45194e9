"""Z-Image through the whole stack (HTTP -> api/ -> a real Triton -> ONNX components), where Z-Image differs from
the other families: cfg above 1 is true CFG run as two items per step, a prompt's limit counts the chat template the
pipeline wraps it in, two routes share one model, and the face-identity routes are refused. (Served == diffusers at
each route's defaults: tests/contract/test_routes.py.)"""

from __future__ import annotations

import httpx

from families.z_image.reference import images, pipeline
from tests.images import MAX_PIXEL_DIFF, decode, max_diff

PROMPT = "a lighthouse on a cliff at dawn"


def test_cfg_above_one_is_true_cfg_against_the_negative_prompt(client: httpx.Client, stack_dirs) -> None:
    body = {"prompt": PROMPT, "negative_prompt": "fog", "cfg": 3.0, "seed": 12, "steps": 2, "width": 272, "height": 256}
    r = client.post("/z-image-simple", json=body)
    assert r.status_code == 200, r.text
    served = decode(r.content)
    assert served.shape == (256, 272, 3)
    (expected,) = images("/z-image-simple", body, stack_dirs.checkpoints)
    assert max_diff(served, expected) <= MAX_PIXEL_DIFF
    plain = client.post("/z-image-simple", json={**body, "cfg": 1.0})  # no guidance at cfg <= 1: another image
    assert max_diff(decode(plain.content), served) > 10


def test_the_chat_template_counts_against_the_token_limit(client: httpx.Client, stack_dirs) -> None:
    """A prompt of at most 512 tokens on its own but over 512 inside the template is refused (the pipeline would
    truncate it without a word), and one that fits with the template is served."""
    tokenizer = pipeline("z-image-turbo", stack_dirs.checkpoints).tokenizer

    def tokens(text: str) -> int:
        return len(tokenizer(text).input_ids)

    words = [f"w{i}" for i in range(2000)]
    fits = max(n for n in range(0, 600, 2) if tokens(" ".join(words[:n])) <= 512 - 20)
    over = next(n for n in range(fits, 2000) if tokens(" ".join(words[:n])) > 512 - 5)
    too_long = " ".join(words[:over])
    assert tokens(too_long) <= 512  # the API's own count would let it through
    r = client.post("/z-image-simple", json={"prompt": too_long, "seed": 1, "steps": 1, "width": 256, "height": 256})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "prompt" and "template" in r.json()["error"]["message"]
    ok = client.post(
        "/z-image-simple", json={"prompt": " ".join(words[:fits]), "seed": 1, "steps": 1, "width": 256, "height": 256}
    )
    assert ok.status_code == 200, ok.text


def test_the_danrisi_preset_shares_the_model(client: httpx.Client) -> None:
    rows = {row["path"]: row for row in client.get("/v1/models").json()["data"]}
    simple, danrisi = rows["/z-image-simple"], rows["/z-image-danrisi"]
    assert simple["shares_model_with"] == ["/z-image-danrisi", "/z-image-lora"]
    assert danrisi["shares_model_with"] == ["/z-image-simple", "/z-image-lora"]
    assert simple["triton_model"] == danrisi["triton_model"] == "z_image_pipeline"
    assert simple["checkpoint"] == danrisi["checkpoint"] == "z-image-turbo"
    assert rows["/flux"]["shares_model_with"] == []


def test_face_identity_routes_say_where_to_go(client: httpx.Client) -> None:
    for path in ("/z-image-instantid", "/z-image-pulid"):
        r = client.post(path, json={"prompt": "a portrait", "reference_image": "x"})
        assert r.status_code == 501
        message = r.json()["error"]["message"]
        assert "/sdxl-instantid" in message and "/flux-pulid" in message and "cross-attention" in message
