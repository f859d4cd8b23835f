"""GET /openapi.json: the API's OpenAPI 3.1 document (tidings/openapi.json), with this
server's own longest long-poll hold filled in."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from tidings.config import Settings


def document(settings: Settings) -> bytes:
    doc: dict[str, Any] = json.loads(resources.files("tidings").joinpath("openapi.json").read_text("utf-8"))
    for parameter in doc["paths"]["/sub/{channels}"]["get"]["parameters"]:
        if parameter.get("name") == "timeout":
            parameter["description"] += f" (this server: {settings.max_poll_timeout:g} s)"
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
