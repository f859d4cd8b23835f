"""Compact JSON, as every answer, frame and report of the server is written."""

from __future__ import annotations

import json
from typing import Any


def encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
