"""Messages that cross the wire between the Triton pipeline models and api/.

A pipeline model that rejects a request for a reason only the model knows (a prompt over the text encoder's token
limit) raises a Triton error whose message starts with `invalid_request field=<field>:`; api/ turns it into a 422
naming that field instead of a 500.
"""

from __future__ import annotations

import re

_INVALID = re.compile(r"invalid_request field=(?P<field>[A-Za-z0-9_]+): (?P<message>.*)", re.DOTALL)


def invalid_request_message(field: str, message: str) -> str:
    return f"invalid_request field={field}: {message}"


def parse_invalid_request(text: str) -> tuple[str, str] | None:
    """(field, message) when `text` carries an invalid_request error, wherever Triton put it in its message."""
    m = _INVALID.search(text)
    return (m["field"], m["message"].strip()) if m else None


# Triton model config parameter under which a pipeline model names the source of each checkpoint it serves:
# `source.<checkpoint key>` = "hub:<id>@<revision>" or "local:<path>".
SOURCE_PARAMETER_PREFIX = "source."
