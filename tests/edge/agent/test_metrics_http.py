"""The /metrics endpoint of a running agent, scraped with a real HTTP client and parsed by the Prometheus client."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench._workload import realistic_spans
from edge.agent import Agent
from edge.agent.metrics_http import CONTENT_TYPE, render_prometheus
from edge.model import HISTOGRAM, SUM, HistogramPoint, Metric, ResourceMetrics, SumPoint
from edge.config import parse_config
from edge.demo.broker import Mosquitto, free_port
from edge.model import Resource, Scope, Source, SpanKind, StatusCode


async def _until(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_running_agent_serves_prometheus_metrics(mosquitto: Mosquitto) -> None:
    port = free_port()
    cfg = parse_config({
        "node": {"id": "prom-node"},
        "sources": {"mqtt": {"enabled": False}, "otlp": {"grpc_listen": "", "http_listen": ""},
                    "ebpf": {"enabled": False}},
        "uplink": {"broker": mosquitto.url, "spool_dir": ""},
        "sampler": {"ratio": 0.5, "new_route_traces": 0, "decision_wait": "60s"},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    })
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        spans = realistic_spans(100, seed=9)
        assert agent.submit(spans, Source.SDK_OTLP) == len(spans)
        await _until(lambda: agent.aggregator.stats.spans + agent.aggregator.stats.ignored == len(spans))
        await asyncio.sleep(0.6)  # one governor check
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == CONTENT_TYPE
                text = await resp.text()
        st = agent.status()["sampler"]  # as at the scrape (the pipeline is idle: nothing new arrives)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    accepted = families["helix_agent_spans_accepted"]
    assert accepted.type == "counter" and accepted.documentation
    assert {s.labels["source"]: s.value for s in accepted.samples if s.name.endswith("_total")}["sdk-otlp"] == len(spans)

    served = [s for s in spans if s.kind in (SpanKind.SERVER, SpanKind.CLIENT)]
    requests = families["helix_red_requests"]
    assert requests.type == "counter"
    assert sum(s.value for s in requests.samples if s.name.endswith("_total")) == len(served)
    errors = sum(s.value for s in families["helix_red_errors"].samples if s.name.endswith("_total"))
    assert errors == sum(1 for s in served if s.status_code == StatusCode.ERROR
                         or s.attributes.get("http.response.status_code", 0) >= 500)

    duration = families["helix_red_duration_seconds"]
    assert duration.type == "histogram"
    counts = [s for s in duration.samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == len(served)
    for c in counts:  # buckets cumulative, ending in +Inf == count
        key = {k: v for k, v in c.labels.items()}
        buckets = [s for s in duration.samples if s.name.endswith("_bucket")
                   and {k: v for k, v in s.labels.items() if k != "le"} == key]
        values = [b.value for b in buckets]
        assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf" and values[-1] == c.value

    sampled = {s.labels["decision"]: s.value for s in families["helix_agent_spans_sampled"].samples
               if s.name.endswith("_total")}
    assert 0 < sampled["kept_head"] == st["kept_head"] and sampled["dropped"] == st["dropped"]
    assert families["helix_agent_memory_rss_bytes"].type == "gauge"
    assert families["helix_agent_memory_rss_bytes"].samples[0].value > 1 << 20
    assert families["helix_agent_memory_limit_bytes"].samples[0].value == cfg.memory.limit
    queue = {s.labels["queue"] for s in families["helix_agent_queue_bytes"].samples}
    assert {"inbox", "tail", "uplink", "assembler", "stitch_state"} <= queue
    # Where the memory above the idle agent is, and the keep-probability the governor leaves: why sampling moved.
    where = {s.labels["where"] for s in families["helix_agent_memory_above_idle_bytes"].samples}
    assert where == {"span_buffers", "state", "elsewhere"}
    assert families["helix_agent_sampling_keep_probability"].samples[0].value == cfg.sampler.ratio
    steps = {s.labels["step"] for s in families["helix_agent_memory_actions"].samples if s.name.endswith("_total")}
    assert "floor_held" in steps
    assert families["helix_agent_kernel_lost_events"].type == "counter"
    assert "helix_agent_spans_dropped" in families


def test_exposition_escapes_labels_and_help() -> None:
    m = Metric("odd.name-1", SUM, "{x}", 'says "hi"\nand \\ more', True,
               [SumPoint({"path": 'a"b\\c\nd', "1bad.key": True}, 3)])
    h = Metric("lat", HISTOGRAM, "s", "latency", points=[HistogramPoint({}, 3, 0.5, (0.1, 1.0), [1, 2, 0])])
    text = render_prometheus([ResourceMetrics(Resource.of({"service.name": "svc"}), Scope("t"), [m, h])])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    sample = fams["odd_name_1"].samples[0]
    assert sample.labels == {"service_name": "svc", "path": 'a"b\\c\nd', "_1bad_key": "true"} and sample.value == 3
    assert fams["odd_name_1"].documentation == 'says "hi"\nand \\ more'
    buckets = {s.labels["le"]: s.value for s in fams["lat_seconds"].samples if s.name == "lat_seconds_bucket"}
    assert buckets == {"0.1": 1, "1.0": 3, "+Inf": 3}


@pytest.mark.parametrize("listen", [""])
def test_endpoint_can_be_disabled(listen: str) -> None:
    cfg = parse_config({"metrics": {"listen": listen}, "sources": {"ebpf": {"enabled": False}}})
    assert Agent(cfg).metrics_http is None


def test_the_grpc_receivers_backpressure_is_exported() -> None:
    from edge.agent.metrics_http import health_metrics

    cfg = parse_config({"node": {"id": "g"}, "sources": {"mqtt": {"enabled": False}, "ebpf": {"enabled": False},
                                                         "otlp": {"grpc_listen": "127.0.0.1:0", "http_listen": ""}},
                        "metrics": {"listen": ""}, "uplink": {"transport": "http", "spool_dir": ""}})
    agent = Agent(cfg)
    agent.grpc.server.stats.waited = 7
    agent.grpc.server.stats.protocol_errors = 2
    [family] = [m for m in health_metrics(agent).metrics if m.name == "helix.agent.otlp.grpc.events"]
    got = {p.attributes["event"]: p.value for p in family.points}
    assert got == {"waited": 7, "refused_busy": 0, "protocol_errors": 2, "stalled_streams": 0,
                   "refused_connections": 0, "reclaimed_connections": 0}


async def test_device_messages_lost_before_the_agent_show_in_metrics_and_status(mosquitto: Mosquitto) -> None:
    import paho.mqtt.client as mqtt

    from edge.codec.sdk_cbor import encode_payload
    from edge.model import Span, new_span_id, new_trace_id

    port = free_port()
    cfg = parse_config({
        "node": {"id": "seq-node"},
        "sources": {"mqtt": {"broker": mosquitto.url}, "otlp": {"grpc_listen": "", "http_listen": ""},
                    "ebpf": {"enabled": False}},
        "uplink": {"broker": mosquitto.url, "spool_dir": ""},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    })
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="seq-dev", protocol=mqtt.MQTTv5)
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        await asyncio.wait_for(agent.mqtt.ready.wait(), 10)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        # A device's messages 0, 1, 4 arrive (2 and 3 lost on the way); then it restarts and sends 0.
        for seq in (0, 1, 4, 0):
            payload = encode_payload([Span(new_trace_id(), new_span_id(), "tick", 1, 2)], {}, seq=seq)
            pub.publish("helix/sdk/meter-9/spans", payload, qos=1).wait_for_publish(5)
        await _until(lambda: agent.status()["mqtt"]["messages"] == 4)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        st = agent.status()["mqtt"]
    finally:
        pub.loop_stop()
        stop.set()
        await asyncio.wait_for(task, 20)
    assert st["missing_messages"] == 2 and st["device_restarts"] == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    missing = families["helix_agent_mqtt_messages_missing"]
    assert missing.type == "counter"
    assert [s.value for s in missing.samples if s.name.endswith("_total")] == [2]
