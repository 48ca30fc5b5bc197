"""A node keeps a batch until a gateway confirms its export; with no gateway that confirms (one older than
confirmations), it falls back to the broker's PUBACK after `uplink.confirm_timeout`, says so, and returns to
confirmations as soon as one arrives. Real Mosquitto; the "older gateway" is a plain MQTT subscriber."""
from __future__ import annotations

import aiomqtt

from bench._workload import realistic_spans
from edge.demo.broker import Mosquitto
from edge.demo.otlp_peer import OtlpPeer

from ._helpers import as_sent, gateway_config, running_client, running_gateway, until, uplink_config


async def test_no_confirming_gateway_falls_back_to_the_puback_then_back(mosquitto: Mosquitto,
                                                                         otlp_peer: OtlpPeer) -> None:
    old, new, more = realistic_spans(2, seed=81), realistic_spans(1, seed=82)[:5], realistic_spans(2, seed=83)
    cfg = uplink_config(mosquitto, batch_max_spans=11, confirm_timeout=1.0)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as older_gateway, running_client(cfg, "n-f") as client:
        await older_gateway.subscribe("helix/uplink/+", qos=1)
        client.submit(old)
        # The broker takes them (a subscriber exists) but nobody confirms: they stay spooled, awaiting.
        await until(lambda: client.stats.batches_sent == 2, timeout=10, what="batches taken by the broker")
        assert client.stats.awaiting_batches == 2 and client.stats.spooled_batches == 2
        await until(lambda: client.stats.confirm_fallback == 1 and client.stats.spooled_batches == 0, timeout=10,
                    what="the fallback to the broker's PUBACK")
        assert client.stats.released_unconfirmed_spans == len(old) and client.stats.spans_confirmed == 0
        async with running_gateway(gateway_config(mosquitto, otlp_peer.grpc_endpoint)):
            client.submit(new)  # one batch, still let go on the PUBACK; the gateway's confirmation ends the fallback
            await until(lambda: client.stats.confirm_fallback == 0, timeout=10, what="a confirmation")
            client.submit(more)  # kept until confirmed again
            st = client.stats
            await until(lambda: st.spans_confirmed + st.released_unconfirmed_spans == len(old + new + more)
                        and st.spooled_batches == 0, timeout=10, what="confirmations again")
            # `new` may have been confirmed before the PUBACK released it; `more` never goes on the PUBACK alone.
            assert st.spans_confirmed >= len(more) and st.released_unconfirmed_spans >= len(old)
    assert as_sent(otlp_peer.spans()) == {s.span_id: s for s in new + more}
