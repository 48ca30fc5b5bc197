"""Wire formats at the edges of the agent: OTLP, the lightweight-SDK CBOR span schema."""
from __future__ import annotations

__all__: list[str] = []
