from __future__ import annotations

import asyncio
import subprocess

import cbor2
import pytest

from edge.codec.sdk_cbor import Key, encode_payload
from edge.config import BrokerAddress, MqttSourceConfig
from edge.demo.broker import Mosquitto
from edge.model import Source, Span, new_span_id, new_trace_id
from edge.sources.mqtt_sdk import MqttSdkSource, device_id_from_topic


def _pub(port: int, topic: str, payload: bytes, *props: str) -> None:
    args = ["mosquitto_pub", "-p", str(port), "-V", "mqttv5", "-q", "1", "-t", topic, "-s"]
    for p in props:
        args += ["-D", "PUBLISH", "user-property", *p.split(" ", 1)]
    subprocess.run(args, input=payload, check=True, timeout=10)


async def _wait(pred, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def source(mosquitto: Mosquitto):
    got: list[tuple[list[Span], Source]] = []

    def sink(spans: list[Span], src: Source) -> int:
        got.append((spans, src))
        return len(spans)

    cfg = MqttSourceConfig(broker=BrokerAddress("127.0.0.1", mosquitto.port), max_payload=4096)
    src = MqttSdkSource(cfg, "node-t", sink)
    task = asyncio.create_task(src.run())
    await asyncio.wait_for(src.ready.wait(), 10)
    yield src, got
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_bad_messages_are_counted_and_good_ones_still_flow(source, mosquitto: Mosquitto) -> None:
    src, got = source
    tid, sid = new_trace_id(), new_span_id()
    minimal = cbor2.dumps([{Key.SPAN_ID: b"\x07" * 8, Key.NAME: "blink", Key.START: 100, Key.DURATION: 5}])
    pub = lambda *a: asyncio.to_thread(_pub, mosquitto.port, *a)  # noqa: E731
    await pub("helix/sdk/led-1/spans", b"\xff\x00garbage")
    await pub("helix/sdk/led-1/spans", b"x" * 5000)
    await pub("helix/sdk/led-1/spans", cbor2.dumps({"wrong": "shape"}))
    await pub("helix/sdk/led-1/spans", minimal, "traceparent 00-nothex-01")
    await pub("helix/sdk/led-1/spans", cbor2.dumps([{Key.SPAN_ID: b"\x01" * 8}]))
    await pub("helix/sdk/led-1/spans", minimal, f"traceparent 00-{tid.hex()}-{sid.hex()}-01")
    await _wait(lambda: src.stats.messages == 6)
    assert src.stats.dropped["not_cbor"] == 2
    assert src.stats.dropped["oversize"] == 1
    assert src.stats.dropped["bad_traceparent"] == 1
    assert src.stats.dropped["bad_span"] == 2  # the span with the bad traceparent, and the incomplete span
    assert len(got) == 1
    (span,), kind = got[0]
    assert kind is Source.SDK_MQTT
    assert span.trace_id == tid and span.parent_span_id == sid and span.name == "blink"
    assert span.resource.as_dict()["service.name"] == "led-1"
    assert span.resource.as_dict()["device.id"] == "led-1"


async def test_reconnects_after_broker_restart(source, mosquitto: Mosquitto) -> None:
    src, got = source
    await asyncio.to_thread(mosquitto.restart)
    await _wait(lambda: src.stats.reconnects >= 1, 10)
    await asyncio.wait_for(src.ready.wait(), 15)
    s = Span(new_trace_id(), new_span_id(), "after-restart", 1, 2)
    await asyncio.to_thread(_pub, mosquitto.port, "helix/sdk/d9/spans", encode_payload([s], {"service.name": "d9"}))
    await _wait(lambda: any(x.name == "after-restart" for spans, _ in got for x in spans), 10)


def test_device_id_from_topic() -> None:
    assert device_id_from_topic("helix/sdk/dev-4/spans", "helix/sdk/+/spans") == "dev-4"
    assert device_id_from_topic("a/b", "a/#") == ""


async def test_a_full_inbox_holds_messages_at_the_broker_and_loses_none(mosquitto: Mosquitto) -> None:
    from edge.sources.mqtt_sdk import RECEIVE_MAXIMUM

    got: list[Span] = []
    room = {"open": False}

    def sink(spans: list[Span], src: Source) -> int:
        got.extend(spans)
        return len(spans)

    cfg = MqttSourceConfig(broker=BrokerAddress("127.0.0.1", mosquitto.port), max_payload=4096)
    waits: list[float] = []

    async def room_changed(timeout: float) -> None:
        waits.append(timeout)  # the source waits on the inbox's signal, not on a poll of its own
        await asyncio.sleep(0.02)

    src = MqttSdkSource(cfg, "node-bp", sink, has_room=lambda n: room["open"], room_changed=room_changed)
    task = asyncio.create_task(src.run())
    await asyncio.wait_for(src.ready.wait(), 10)
    try:
        n = 3 * RECEIVE_MAXIMUM
        payloads = [encode_payload([Span(new_trace_id(), new_span_id(), f"m{i}", 1, 2)], {"service.name": "d"})
                    for i in range(n)]
        for p in payloads:
            await asyncio.to_thread(_pub, mosquitto.port, "helix/sdk/dev-bp/spans", p)
        await asyncio.sleep(1.0)
        # Held, not dropped: while the inbox has no room nothing is offered to it, and nothing is acknowledged.
        assert src.stats.messages <= RECEIVE_MAXIMUM + 1 and got == []
        room["open"] = True
        await _wait(lambda: len(got) == n, timeout=20)
        assert sorted(s.name for s in got) == sorted(f"m{i}" for i in range(n))
        assert src.stats.dropped["inbox_full"] == 0 and src.stats.waited_for_room >= 1 and waits
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_sequence_gaps_follow_the_documented_rule() -> None:
    from edge.sources.mqtt_sdk import MqttSourceStats, SequenceGaps

    stats = MqttSourceStats()
    gaps = SequenceGaps(stats, max_devices=3)
    assert [gaps.observe("a", n) for n in (5, 6, 7)] == [0, 0, 0]  # first heard mid-run: no gap
    assert gaps.observe("a", 7) == 0  # a QoS 1 redelivery
    assert gaps.observe("a", 10) == 2  # 8 and 9 never came
    assert gaps.observe("a", 0) == 0 and stats.device_restarts == 1  # restarted: not a gap
    assert gaps.observe("a", 3) == 2  # 1 and 2 of the new run lost
    assert gaps.observe("a", 1) == 1 and stats.device_restarts == 2  # restarted again, its 0 lost
    assert gaps.observe("b", 2**32 - 1) == 0 and gaps.observe("b", 0) == 0  # wraps, no restart
    assert gaps.observe("b", 2) == 1
    assert stats.missing_messages == 6 and stats.device_restarts == 2
    gaps.observe("c", 0)
    gaps.observe("a", 2)  # heard: "b" is now the least recently heard
    gaps.observe("d", 0)
    assert len(gaps) == 3 and stats.seq_devices_forgotten == 1
    assert gaps.observe("b", 9) == 0  # forgotten: starts again without a gap
    assert gaps.observe("a", 4) == 1  # remembered through the evictions


def test_run_ids_tell_a_restart_from_a_late_or_redelivered_message() -> None:
    from edge.sources.mqtt_sdk import MqttSourceStats, SequenceGaps

    stats = MqttSourceStats()
    gaps = SequenceGaps(stats)
    assert [gaps.observe("a", n, run=77) for n in (0, 1, 2, 3)] == [0, 0, 0, 0]
    # After a reconnect the broker redelivers 1..3 that were handled but not acknowledged: no restart, no gap.
    assert [gaps.observe("a", n, run=77) for n in (1, 2, 3, 4)] == [0, 0, 0, 0]
    assert stats.device_restarts == 0 and stats.missing_messages == 0
    assert gaps.observe("a", 7, run=77) == 2  # 5 and 6 never came
    assert gaps.observe("a", 6, run=77) == 0  # overtaken, not missing twice
    assert gaps.observe("a", 1, run=91) == 1 and stats.device_restarts == 1  # restarted; its 0 lost
    assert gaps.observe("a", 8, run=77) == 0 and stats.device_restarts == 1  # a late message of the old run
    assert gaps.observe("a", 2, run=91) == 0
    assert stats.missing_messages == 3


async def test_missing_messages_are_counted_per_device(source, mosquitto: Mosquitto) -> None:
    src, got = source

    def msg(seq: int, name: str) -> bytes:
        env = cbor2.loads(encode_payload([Span(new_trace_id(), new_span_id(), name, 1, 2)], {}))
        env[4] = seq
        return cbor2.dumps(env)

    for topic, seq in [("helix/sdk/s1/spans", 0), ("helix/sdk/s2/spans", 7), ("helix/sdk/s1/spans", 1),
                       ("helix/sdk/s1/spans", 4), ("helix/sdk/s2/spans", 8), ("helix/sdk/s1/spans", 0)]:
        await asyncio.to_thread(_pub, mosquitto.port, topic, msg(seq, f"{topic}:{seq}"))
    await _wait(lambda: src.stats.messages == 6)
    assert src.stats.missing_messages == 2 and src.stats.device_restarts == 1
    assert sum(len(spans) for spans, _ in got) == 6  # counting gaps drops nothing


def _huge_start() -> bytes:
    # One ~5 KB device span whose start time is a 5,000-digit integer: repr() of it raises past Python's
    # int-string limit, which once stopped the agent from an error message.
    return cbor2.dumps({0: 1, 3: [{Key.TRACE_ID: b"\x01" * 16, Key.SPAN_ID: b"\x02" * 8, Key.NAME: "x",
                                   Key.START: 10**5000, Key.DURATION: 1}]})


async def test_a_span_with_a_5000_digit_time_is_refused_and_counted(source, mosquitto: Mosquitto) -> None:
    src, got = source
    await asyncio.to_thread(_pub, mosquitto.port, "helix/sdk/led-1/spans", _huge_start())
    await _wait(lambda: src.stats.messages == 1)
    assert src.stats.dropped["bad_span"] == 1 and got == []


async def test_messages_that_break_the_source_are_acknowledged_counted_and_named(
        source, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # More poison messages than the source's Receive Maximum: were they not acknowledged, the broker would stop
    # delivering and the good message after them would never arrive.
    from edge.sources import mqtt_sdk

    src, got = source
    real = mqtt_sdk.decode_payload

    def breaks(data: bytes, *a, **k):
        if data == b"poison":
            raise RuntimeError("a decoder bug")
        return real(data, *a, **k)

    monkeypatch.setattr(mqtt_sdk, "decode_payload", breaks)
    n = mqtt_sdk.RECEIVE_MAXIMUM + 8
    good = encode_payload([Span(new_trace_id(), new_span_id(), "after", 1, 2)], {"service.name": "d"})
    script = "".join(f"mosquitto_pub -p {mosquitto.port} -V mqttv5 -q 1 -t helix/sdk/bad-{i}/spans -m poison; "
                     for i in range(n))
    with caplog.at_level("WARNING", "edge.sources.mqtt_sdk"):
        await asyncio.to_thread(subprocess.run, ["sh", "-c", script], check=True, timeout=60)
        await asyncio.to_thread(_pub, mosquitto.port, "helix/sdk/ok/spans", good)
        await _wait(lambda: any(s.name == "after" for spans, _ in got for s in spans), timeout=20)
    assert src.stats.dropped["poison"] == n
    lines = [r.getMessage() for r in caplog.records if "could not be handled" in r.getMessage()]
    assert len(lines) == 1 and "on helix/sdk/bad-0/spans" in lines[0]  # named, and rate-limited
