"""Image encoding on this machine's CPU: the API's PNG writer (api/encoding.py) against Pillow's PNG encoder at the
levels people use, with JPEG and WebP beside them, per size; and four images encoded one after another against
four at once in threads (a request for num_images=4); a Wan clip (81 frames, 832x480) as animated WebP and MP4.

    python -m perf.encode --out perf/results/cpu

The images are photo-like (a 1/f spectrum with a little sensor noise, as generated images have): a tiny random
model's output is noise, which no encoder compresses, and would flatter none of them. Writes <out>/encode.csv and
<out>/encode.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from api import video_encoding
from api.encoding import encode_image, encode_png
from api.video_encoding import encode_video

SIZES = (256, 1024, 1328)


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """size x size x 3 uint8: octaves of smooth noise weighted 1/f, plus Gaussian noise of 2 levels."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float32)
    for octave in range(1, 8):
        cells = rng.standard_normal((2**octave, 2**octave, 3)).astype(np.float32)
        cells = ((cells - cells.min()) / np.ptp(cells) * 255).astype(np.uint8)
        image += np.asarray(Image.fromarray(cells).resize((size, size), Image.BICUBIC), np.float32) / octave
    image = (image - image.min()) / np.ptp(image) * 255 + rng.normal(0, 2, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def pillow(fmt: str, **options: object) -> Callable[[np.ndarray], bytes]:
    def encode(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "ours png (numpy Sub + ISA-L)": encode_png,
    "pillow png level 1": pillow("PNG", compress_level=1),
    "pillow png level 3 (before)": pillow("PNG", compress_level=3),
    "pillow png level 6 (default)": pillow("PNG"),
    "pillow jpeg q95": pillow("JPEG", quality=95),
    "pillow webp q90": pillow("WEBP", quality=90),
}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    args = parser.parse_args(argv)
    rows = []
    for size in SIZES:
        pixels = photo_like(size)
        for name, encode in ENCODERS.items():
            data = encode(pixels)
            if "png" in name:  # lossless: the decoded file is the image
                assert (np.asarray(Image.open(io.BytesIO(data))) == pixels).all(), name
            ms = median_ms(lambda e=encode, p=pixels: e(p), args.repeats)
            rows.append({"size": size, "encoder": name, "ms": round(ms, 2), "kb": round(len(data) / 1000)})
            print(f"{size}² {name}: {ms:.1f} ms, {len(data) / 1000:.0f} KB", flush=True)
    batch = [photo_like(1024, seed) for seed in range(4)]
    one_by_one = median_ms(lambda: [encode_image(p, "png", 95) for p in batch], args.repeats)
    with ThreadPoolExecutor(len(batch)) as pool:
        threads = median_ms(lambda: list(pool.map(lambda p: encode_image(p, "png", 95), batch)), args.repeats)
    rows.append({"size": 1024, "encoder": "ours png, 4 images one by one", "ms": round(one_by_one, 2), "kb": ""})
    rows.append({"size": 1024, "encoder": "ours png, 4 images in 4 threads", "ms": round(threads, 2), "kb": ""})
    print(f"4 x 1024² PNG: {one_by_one:.1f} ms one by one, {threads:.1f} ms in threads", flush=True)

    # A Wan clip: 81 frames at 832x480, panning over one photo-like image.
    still = photo_like(832)[:480]
    clip = np.stack([np.roll(still, 3 * i, axis=1) for i in range(81)])
    frame_by_frame = median_ms(lambda: [video_encoding._webp_still(f, 90) for f in clip], 3)
    for fmt, label in (("webp", "animated webp q90, frames in threads"), ("mp4", "h264 mp4 q90 (x264 threads)")):
        data, _ = encode_video(clip, fmt, 90, 16)
        ms = median_ms(lambda f=fmt: encode_video(clip, f, 90, 16), 3)
        rows.append({"size": "832x480x81", "encoder": label, "ms": round(ms, 1), "kb": round(len(data) / 1000)})
    rows.append(
        {"size": "832x480x81", "encoder": "webp q90 frames one by one", "ms": round(frame_by_frame, 1), "kb": ""}
    )
    print(f"81 frames 832x480: {rows[-3:]}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "encode.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Image encoding on the CPU (`python -m perf.encode`), photo-like images, median of {args.repeats}",
        "",
        "| size | encoder | ms | KB |",
        "|---|---|---|---|",
        *(
            f"| {r['size']}{'²' if isinstance(r['size'], int) else ''} | {r['encoder']} | {r['ms']} | {r['kb']} |"
            for r in rows
        ),
    ]
    (args.out / "encode.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
