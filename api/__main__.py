"""python -m api --host 127.0.0.1 --port 8080 (configuration from RYLA_* environment variables, see settings.py).

One process per app group: the group's queue and concurrency bound live in this process, so do not run several
workers behind one port.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .protocol import IMPLEMENTATIONS, protocol_class
from .settings import Settings

# Seconds an idle keep-alive connection stays open after an answer, beyond Retry-After: a client that waits what a
# 429 or 503 told it comes back on a connection still open (closing at exactly Retry-After raced its retry, which
# then failed with a reset: perf/soak.py saw 1 in 300).
KEEP_ALIVE_MARGIN_S = 5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--http", default="auto", choices=["auto", *IMPLEMENTATIONS], help="uvicorn's HTTP/1.1 parser")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()  # fails here, before binding the port, on a bad RYLA_* value
    logging.getLogger("api").info(
        "serving groups %s against Triton %s", settings.served_groups, settings.triton_grpc_url
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        # uvicorn's HTTP/1.1 protocol, with the error envelope for the requests it refuses and a header deadline.
        http=protocol_class(args.http, settings.header_timeout_s),
        timeout_keep_alive=settings.retry_after_s + KEEP_ALIVE_MARGIN_S,
    )


if __name__ == "__main__":
    main()
