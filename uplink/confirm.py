"""End-to-end confirmations: the gateway tells a node which of its batches are settled, so the node may forget them.

A broker's PUBACK only says the broker holds a batch, and a broker that is killed loses what it held since its last
save. So over MQTT a node keeps each batch until a gateway confirms it on the node's ack topic
(`helix/uplink-ack/<node id>`, which the ACL lets only gateways write and only that node read). Over HTTP the
gateway's answer is the confirmation.

One message confirms one or more batches of one node: `HA`, version 1, then a CBOR array of `[seq, outcome]` pairs.
Sans-I/O; the format is specified in docs/uplink-format.md.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable

import cbor2

from edge.errors import DecodeError

__all__ = ["Settled", "encode_confirm", "decode_confirm", "CONFIRM_MAGIC", "MAX_CONFIRMS"]

CONFIRM_MAGIC = b"HA"
_VERSION = 1
MAX_CONFIRMS = 4096  # pairs per message; a gateway sends more as several messages
_MAX_MESSAGE = 16 + MAX_CONFIRMS * 12


class Settled(enum.IntEnum):
    """What became of a batch at the gateway: each means the node may forget it."""

    EXPORTED = 0
    DUPLICATE = 1  # exported before (this is a resend)
    REFUSED = 2  # can never be taken: speaks for another node, over the gateway's limits, malformed
    DROPPED = 3  # the OTLP backend refused it for good

    @property
    def delivered(self) -> bool:
        """True when the spans reached the backend (now or before)."""
        return self in (Settled.EXPORTED, Settled.DUPLICATE)


def encode_confirm(items: Iterable[tuple[int, Settled]]) -> bytes:
    """One confirmation message for (seq, outcome) pairs of one node."""
    pairs = [[seq, int(outcome)] for seq, outcome in items]
    if len(pairs) > MAX_CONFIRMS:
        raise ValueError(f"at most {MAX_CONFIRMS} confirmations per message")
    return CONFIRM_MAGIC + bytes([_VERSION]) + cbor2.dumps(pairs)


def decode_confirm(data: bytes) -> list[tuple[int, Settled]]:
    """The (seq, outcome) pairs of a confirmation message; DecodeError if it is not one."""
    if len(data) > _MAX_MESSAGE:
        raise DecodeError(f"confirmation of {len(data)} bytes is over the limit of {_MAX_MESSAGE}")
    if data[:2] != CONFIRM_MAGIC or len(data) < 4:
        raise DecodeError("not a Helix uplink confirmation")
    if data[2] != _VERSION:
        raise DecodeError(f"confirmation version {data[2]} is not supported (this node reads {_VERSION})")
    try:
        pairs = cbor2.loads(data[3:], max_depth=3)
    except Exception as e:  # noqa: BLE001 - the CBOR library raises several types on hostile input
        raise DecodeError(f"confirmation is not valid CBOR: {e}") from None
    if type(pairs) is not list or len(pairs) > MAX_CONFIRMS:
        raise DecodeError(f"confirmation must be an array of at most {MAX_CONFIRMS} [seq, outcome] pairs")
    out: list[tuple[int, Settled]] = []
    for p in pairs:
        if type(p) is not list or len(p) != 2 or type(p[0]) is not int or type(p[1]) is not int or p[0] < 0:
            # Not {p!r}: the repr of a huge integer raises ValueError.
            raise DecodeError(f"confirmation holds a {type(p).__name__}, not a [seq, outcome] pair")
        try:
            out.append((p[0], Settled(p[1])))
        except ValueError:
            raise DecodeError(f"confirmation outcome {p[1]} is unknown") from None
    return out
