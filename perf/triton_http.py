"""A minimal KServe-v2 HTTP client with Triton's binary-data extension, for machines without tritonclient (the
GPU benchmark machine): JSON header + raw tensor bytes, so a 1024² image is not shipped as JSON numbers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

_NP = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "BF16": np.uint16}


def infer(url: str, model: str, inputs: dict[str, tuple[str, Any]], timeout_s: float = 900) -> dict[str, Any]:
    """inputs: name -> (Triton dtype, scalar, or bytes for a UTF-8 text in a UINT8 tensor). Returns name -> numpy
    array (BYTES -> list of bytes)."""
    body = {
        "inputs": [
            {"name": n, "datatype": dt, "shape": [len(v)], "data": list(v)}
            if isinstance(v, bytes)
            else {"name": n, "datatype": dt, "shape": [1], "data": [v]}
            for n, (dt, v) in inputs.items()
        ],
        "parameters": {"binary_data_output": True},
    }
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            header_len = int(response.headers.get("Inference-Header-Content-Length", len(raw)))
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{model}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from None
    header = json.loads(raw[:header_len])
    out: dict[str, Any] = {}
    offset = header_len
    for o in header["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = o["data"]
            continue
        blob = raw[offset : offset + size]
        offset += size
        if o["datatype"] == "BYTES":
            items, i = [], 0
            while i < len(blob):
                n = int.from_bytes(blob[i : i + 4], "little")
                items.append(blob[i + 4 : i + 4 + n])
                i += 4 + n
            out[o["name"]] = items
        else:
            out[o["name"]] = np.frombuffer(blob, dtype=_NP[o["datatype"]]).reshape(o["shape"])
    return out
