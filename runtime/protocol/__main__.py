"""`python -m runtime.protocol`: print the JSON Schema of every socket message and event, and the OpenAPI document."""
from __future__ import annotations

import sys

from runtime.protocol import openapi
from runtime.protocol.wire import encode_bytes, schemas

if __name__ == "__main__":
    sys.stdout.buffer.write(encode_bytes({"websocket": schemas(), "openapi": openapi()}) + b"\n")
