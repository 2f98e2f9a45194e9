"""The bytes each route answers for one fixed request, compared with those recorded before a change of shape:

    python -m tests.served_bytes record   # on the commit before the change: writes tests/golden/served_bytes.json
    python -m tests.served_bytes check    # after it: the same requests must answer the same bytes

A change that should change nothing a user sees (moving code, renaming, reshaping packages) is checked with it: it
builds the test stack (tiny checkpoints, exports, the model repository), starts a real Triton and the API on free
local ports, asks every recorded route its request and compares sha256 and content type. The bodies are literal
here, not derived from the registry, so a change in how defaults are derived shows up as a different answer. Not
part of `make test`: a change that legitimately moves the numbers (a new export, a kernel) re-records instead.
ONNX Runtime picks its kernels by the CPU's instruction set: bytes compare on a CPU like the recording one.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import platform
import subprocess
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from stack.build import BuildDirs, build
from stack.triton_server import Ports, TritonServer
from tests.fixtures import STACK_DIR
from tests.stack_fixtures import free_port, running_api

GOLDEN = Path(__file__).parent / "golden" / "served_bytes.json"


def _png(mode: str, width: int, height: int) -> str:
    y, x = np.mgrid[0:height, 0:width]
    if mode == "L":  # a white square in the middle: the area to repaint
        pixels = ((abs(x - width / 2) < width / 4) & (abs(y - height / 2) < height / 4)).astype(np.uint8) * 255
    else:
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SOURCE, OTHER, MASK = _png("RGB", 96, 64), _png("RGB", 64, 80), _png("L", 96, 64)
BODIES: dict[str, dict[str, object]] = {
    "/flux": {"prompt": "a red fox in the snow", "seed": 7, "steps": 2, "width": 256, "height": 256},
    "/flux-dev": {"prompt": "a red fox in the snow", "seed": 7, "steps": 2, "width": 256, "height": 384},
    "/qwen-image-2512": {"prompt": "a lighthouse at dawn", "seed": 7, "steps": 2, "width": 256, "height": 256},
    "/qwen-image-2512-fast": {"prompt": "a lighthouse at dawn", "seed": 7, "width": 384, "height": 256},
    "/qwen-image-edit-2511": {
        "instruction": "make it night",
        "source_image": SOURCE,
        "reference_images": [OTHER],
        "seed": 7,
        "steps": 2,
        "denoise": 0.6,
    },
    "/qwen-image-inpaint-2511": {
        "prompt": "a red door",
        "source_image": SOURCE,
        "mask_image": MASK,
        "seed": 7,
        "steps": 2,
    },
}


def _isa() -> dict[str, object]:
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "amx_tile")})
    return {"arch": platform.machine(), "isa": flags}


def _answers(paths: list[str]) -> dict[str, dict[str, str]]:
    """Each route's answer to its body, through a freshly built stack."""
    dirs = BuildDirs.under(STACK_DIR)
    build(dirs)
    triton = TritonServer(
        dirs.repository, dirs.backends, Ports(free_port(), free_port(), free_port()), STACK_DIR / "served-bytes.log"
    ).start()
    try:
        triton.wait_ready(timeout_s=300)
        with running_api(triton.grpc_url) as url, httpx.Client(base_url=url, timeout=600) as client:
            out = {}
            for path in paths:
                r = client.post(path, json=BODIES[path])
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:500]}")
                out[path] = {"sha256": hashlib.sha256(r.content).hexdigest(), "content_type": r.headers["content-type"]}
                print(f"[served_bytes] {path}: {out[path]['sha256'][:16]} {out[path]['content_type']}", flush=True)
            return out
    finally:
        triton.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("record", "check"))
    args = parser.parse_args(argv)
    if args.mode == "record":
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        record = {"commit": commit, "machine": _isa(), "routes": _answers(list(BODIES))}
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
        print(f"[served_bytes] recorded {GOLDEN}")
        return 0
    recorded = json.loads(GOLDEN.read_text())
    if recorded["machine"] != _isa():
        print(f"[served_bytes] recorded on {recorded['machine']}, this CPU is {_isa()}: bytes need not match")
        return 2
    answers = _answers(sorted(recorded["routes"]))
    differ = [p for p, a in answers.items() if a != recorded["routes"][p]]
    for path in sorted(answers):
        print(f"[served_bytes] {path}: {'DIFFERENT' if path in differ else 'same bytes'}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
