from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from edge.demo.broker import Mosquitto
from edge.net.mqtt_client import Message, MqttClient, MqttError, Will


async def _next(client: MqttClient, timeout: float = 5.0) -> Message:
    async def first() -> Message:
        async for m in client.messages:
            return m
        raise AssertionError("no message")
    return await asyncio.wait_for(first(), timeout)


async def test_publish_subscribe_round_trip_with_user_properties(mosquitto: Mosquitto) -> None:
    async with MqttClient("127.0.0.1", mosquitto.port, "sub") as sub, MqttClient("127.0.0.1", mosquitto.port, "pub") as pub:
        assert await sub.subscribe("helix/sdk/+/spans", qos=1) == 1
        code = await pub.publish("helix/sdk/dev-7/spans", b"\x01" * 70_000, qos=1,
                                 user_properties=[("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")])
        assert code == 0
        m = await _next(sub)
        assert (m.topic, m.qos, len(m.payload)) == ("helix/sdk/dev-7/spans", 1, 70_000)
        assert m.user_properties[0][0] == "traceparent"
        assert await pub.publish("helix/sdk/dev-7/spans", b"q0", qos=0) == 0
        assert (await _next(sub)).payload == b"q0"


async def test_puback_reason_codes_reach_the_publisher(mosquitto: Mosquitto) -> None:
    async with MqttClient("127.0.0.1", mosquitto.port, "pub") as pub:
        assert await pub.publish("nobody/listens", b"x", qos=1) == 0x10  # no matching subscribers


async def test_manual_ack_holds_the_next_message_back_until_acknowledged(mosquitto: Mosquitto) -> None:
    async with MqttClient("127.0.0.1", mosquitto.port, "sub", receive_maximum=1, manual_ack=True) as sub, \
            MqttClient("127.0.0.1", mosquitto.port, "pub") as pub:
        await sub.subscribe("t", qos=1)
        for i in range(3):
            await pub.publish("t", str(i).encode(), qos=1)
        first = await _next(sub)
        assert first.payload == b"0"
        with pytest.raises(asyncio.TimeoutError):  # Receive Maximum 1: the broker waits for our PUBACK
            await _next(sub, timeout=0.5)
        sub.ack(first)
        assert (await _next(sub)).payload == b"1"


async def test_a_refused_connection_says_why(tmp_path: Path) -> None:
    conf = "user root\nper_listener_settings false\nallow_anonymous false\npassword_file " + str(tmp_path / "pw") + "\n"
    (tmp_path / "pw").write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "pw"), "helix", "secret"], check=True)
    with Mosquitto(workdir=tmp_path, extra_conf=conf) as broker:
        with pytest.raises(MqttError, match="refused the connection: (bad user name or password|not authorized)"):
            await MqttClient("127.0.0.1", broker.port, "x", username="helix", password="wrong").connect()
        async with MqttClient("127.0.0.1", broker.port, "x", username="helix", password="secret") as ok:
            assert await ok.publish("t", b"x", qos=1) == 0x10


async def test_an_unreachable_broker_is_a_clear_error() -> None:
    from edge.demo.broker import free_port

    with pytest.raises(MqttError, match="cannot connect to the MQTT broker at 127.0.0.1:"):
        await MqttClient("127.0.0.1", free_port(), "x", timeout=2).connect()


async def test_a_broker_that_goes_away_fails_waiters_and_ends_messages_after_what_arrived(mosquitto: Mosquitto) -> None:
    sub = MqttClient("127.0.0.1", mosquitto.port, "sub")
    await sub.connect()
    await sub.subscribe("t", qos=1)
    async with MqttClient("127.0.0.1", mosquitto.port, "pub") as pub:
        await pub.publish("t", b"before", qos=1)
    await asyncio.sleep(0.3)
    mosquitto.stop()
    got = []
    with pytest.raises(MqttError, match="closed the connection|broke"):
        async for m in sub.messages:
            got.append(m.payload)
    assert got == [b"before"]
    with pytest.raises(MqttError):
        await sub.publish("t", b"after", qos=1)
    await sub.disconnect()


async def test_the_will_is_published_when_a_client_vanishes(mosquitto: Mosquitto) -> None:
    async with MqttClient("127.0.0.1", mosquitto.port, "watcher") as watcher:
        await watcher.subscribe("helix/status/n1", qos=1)
        node = MqttClient("127.0.0.1", mosquitto.port, "n1", will=Will("helix/status/n1", b"offline", 1, True))
        await node.connect()
        node._writer.transport.abort()  # type: ignore[union-attr]  # the node's link drops without DISCONNECT
        m = await _next(watcher)
        assert (m.topic, m.payload) == ("helix/status/n1", b"offline")
        await node.disconnect()


async def _fake_broker(reply: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(10)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_garbage_from_the_broker_is_a_clear_error_not_a_crash() -> None:
    server, port = await _fake_broker(b"\x20\x03\x00\x00\x00" + b"\xff\xff\xff\xff\xff")  # CONNACK, then junk
    async with server:
        client = MqttClient("127.0.0.1", port, "x", keepalive=0)
        await client.connect()
        with pytest.raises(MqttError, match="malformed packet"):
            await _next(client)
        await client.disconnect()


async def test_a_silent_broker_is_noticed_by_the_keepalive() -> None:
    server, port = await _fake_broker(b"\x20\x03\x00\x00\x00")  # CONNACK, then nothing: no PINGRESP
    async with server:
        client = MqttClient("127.0.0.1", port, "x", keepalive=1)
        await client.connect()
        with pytest.raises(MqttError, match="keepalive"):
            await _next(client, timeout=5)
        await client.disconnect()


async def test_a_broker_that_never_answers_connect_times_out() -> None:
    server, port = await _fake_broker(b"")
    async with server:
        with pytest.raises(MqttError, match="did not answer CONNECT"):
            await MqttClient("127.0.0.1", port, "x", timeout=0.5).connect()


async def test_the_declared_maximum_packet_size_keeps_huge_messages_out(mosquitto: Mosquitto) -> None:
    async with MqttClient("127.0.0.1", mosquitto.port, "small", max_packet_size=10_000) as sub, \
            MqttClient("127.0.0.1", mosquitto.port, "pub") as pub:
        await sub.subscribe("t", qos=1)
        await pub.publish("t", b"x" * 50_000, qos=1)  # the broker drops it for `sub`
        await pub.publish("t", b"fits", qos=1)
        assert (await _next(sub)).payload == b"fits"


async def test_a_packet_over_the_declared_size_ends_the_connection_unread() -> None:
    server, port = await _fake_broker(b"\x20\x03\x00\x00\x00" + b"\x30\xff\xff\xff\x7f")  # PUBLISH of 256 MiB
    async with server:
        client = MqttClient("127.0.0.1", port, "x", keepalive=0, max_packet_size=1 << 20)
        await client.connect()
        with pytest.raises(MqttError, match="over the 1048576 this client declared"):
            await _next(client)
        await client.disconnect()


@pytest.mark.parametrize("packet", [
    b"\x32\x08\x00\x01t\x00\x01\x05\x26\xff",  # PUBLISH QoS 1, properties declared longer than the packet
    b"\x30\x06\x00\x01t\x03\x26\x00",  # a user property cut in its length
    b"\x30\x05\x00\x01t\x01\x01",  # a property without its value
    b"\x34\x04\x00\x01t\x00",  # QoS 2: never subscribed at
    b"\x90\x03\x00\x01\xff",  # a SUBACK for nothing asked
    b"\xe0\x02\x8e\x00",  # DISCONNECT: session taken over
    b"\x30\x80\x80\x80\x80\x01",  # a remaining length of five bytes
    b"\x00\x00",  # packet type 0
])
async def test_a_hostile_packet_from_the_broker_ends_the_connection_with_mqtt_error(packet: bytes) -> None:
    server, port = await _fake_broker(b"\x20\x03\x00\x00\x00" + packet)
    async with server:
        client = MqttClient("127.0.0.1", port, "x", keepalive=0)
        await client.connect()
        with pytest.raises(MqttError):
            await _next(client, timeout=5)
        await client.disconnect()
