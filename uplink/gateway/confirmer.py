"""Publishing end-to-end confirmations to nodes: each settled MQTT batch, on its node's ack topic, soon after.

Confirmations wait here per node and leave in one message per node whenever the MQTT connection is up, so a burst of
batches costs a few messages, not one each. They are sent only for batches already settled and remembered as such
(uplink/gateway/dedup.py): a confirmation lost on the way (gateway killed, node offline) only makes the node send the
batch again, which the gateway then recognises and confirms again.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque

from edge.net.mqtt_client import MqttClient, MqttError
from edge.net.retry import Throttle

from ..confirm import MAX_CONFIRMS, Settled, encode_confirm

__all__ = ["Confirmer"]

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 0x10
# Confirmations held per node while they cannot be sent; older ones give way (the node resends those batches, and
# they are confirmed as duplicates).
_MAX_PENDING = 16 * MAX_CONFIRMS


class Confirmer:
    """Queues (node, seq, outcome) and publishes them on `ack_topic` (with `{node_id}`) over the current client."""

    def __init__(self, ack_topic: str) -> None:
        self.ack_topic = ack_topic
        self._pending: dict[str, deque[tuple[int, Settled]]] = {}
        self._wake = asyncio.Event()
        self._client: MqttClient | None = None
        self._throttle = Throttle()
        self.sent = 0  # confirmations delivered to the broker
        self.unheard = 0  # ... on a topic nobody listened to (a node older than confirmations, or offline)
        self.given_up = 0  # pushed out while they could not be sent

    @property
    def pending(self) -> int:
        """Confirmations waiting to be sent."""
        return sum(len(q) for q in self._pending.values())

    def add(self, node: str, seq: int, outcome: Settled) -> None:
        """Confirm batch `seq` of `node` (sent soon, in order)."""
        if not self.ack_topic:
            return
        q = self._pending.setdefault(node, deque())
        if len(q) >= _MAX_PENDING:
            q.popleft()
            self.given_up += 1
        q.append((seq, outcome))
        self._wake.set()

    def connected(self, client: MqttClient | None) -> None:
        """The client to publish with (None while the broker is unreachable)."""
        self._client = client
        if client is not None:
            self._wake.set()

    async def run(self) -> None:
        """Send what is pending whenever there is a connection; until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            client = self._client
            if client is None:
                continue
            for node in list(self._pending):
                q = self._pending[node]
                while q:
                    items = [q[i] for i in range(min(len(q), MAX_CONFIRMS))]
                    topic = self.ack_topic.replace("{node_id}", node)
                    try:
                        code = await client.publish(topic, encode_confirm(items), qos=1, timeout=10.0)
                    except MqttError as e:
                        if self._throttle.ready("confirm"):
                            log.warning("gateway could not confirm %d batches to node %s: %s; retrying after the "
                                        "broker link is back", len(items), node, e)
                        break
                    for _ in items:
                        q.popleft()
                    self.sent += len(items)
                    if code == _NO_MATCHING_SUBSCRIBERS:
                        self.unheard += len(items)
                    elif code >= 0x80 and self._throttle.ready("confirm-refused"):
                        log.warning("the broker refused confirmations on %s (reason 0x%02x): may this gateway "
                                    "publish there? (helix fleet acl writes the rule)", topic, code)
                if not q:
                    del self._pending[node]
                else:
                    break  # the connection failed: wait for the next one
