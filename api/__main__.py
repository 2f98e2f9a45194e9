"""python -m api --host 127.0.0.1 --port 8080 (configuration from RYLA_* environment variables, see settings.py).

One process per app group: the group's queue and concurrency bound live in this process, so do not run several
workers behind one port.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()  # fails here, before binding the port, on a bad RYLA_* value
    logging.getLogger("api").info(
        "serving groups %s against Triton %s", settings.served_groups, settings.triton_grpc_url
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
