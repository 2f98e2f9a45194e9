"""Messages that cross the wire between the Triton pipeline models and api/.

A pipeline model that rejects a request for a reason only the model knows (a prompt over the text encoder's token
limit) answers with Triton's INVALID_ARG error code and a JSON message naming the field; api/ turns it into a 422
naming that field instead of a 500. The gRPC stream that carries a decoupled model's responses passes the message
only, so the message's exact shape is what api/ reads; the pipeline model wraps every other failure's text.
"""

from __future__ import annotations

import json


def invalid_request_message(field: str, message: str) -> str:
    return json.dumps({"field": field, "message": message})


def parse_invalid_request(text: str) -> tuple[str, str] | None:
    """(field, message) of a message written by invalid_request_message; None for any other text (Triton's own
    INVALID_ARG errors, about tensors our API sent, are not the client's fault)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != {"field", "message"}:
        return None
    field, message = value["field"], value["message"]
    return (field, message) if isinstance(field, str) and isinstance(message, str) and field else None


# Triton model config parameter under which a pipeline model names the source of each checkpoint it serves:
# `source.<checkpoint key>` = "hub:<id>@<revision>" or "local:<path>".
SOURCE_PARAMETER_PREFIX = "source."
