"""Demo workload: an order service instrumented with the OpenTelemetry Python SDK, exporting OTLP to the agent.

Each order is a `createOrder` server span with business attributes; it calls an uninstrumented inventory
service over HTTP (W3C traceparent header) and sends a command to a device over MQTT v5 with the trace
context in user properties, so the device's spans continue the same trace.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import time
import urllib.request

import paho.mqtt.client as mqtt
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_running = True


def _stop(*_: object) -> None:
    global _running
    _running = False


def main() -> None:
    """Place orders until stopped."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--otlp", required=True, help="agent OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317")
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--inventory", required=True, help="inventory service base URL")
    ap.add_argument("--device", default="sensor-gw-7")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--count", type=int, default=0, help="stop after this many orders (0: until SIGTERM)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    provider = TracerProvider(resource=Resource.create({"service.name": "order-service",
                                                        "service.version": "1.4.2", "deployment.environment": "demo"}))
    # The SDK as applications run it: the default batch delay (5 s); the demo shows each trace once it is complete.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=args.otlp, insecure=True)))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("demo.order-service", "1.4.2")

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"order-service-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", args.broker_port)
    client.loop_start()

    n = 0
    while _running and (args.count == 0 or n < args.count):
        n += 1
        order_id = f"ORD-{int(time.time())}-{n:04d}"
        with tracer.start_as_current_span("createOrder", kind=SpanKind.SERVER, attributes={
            "order.id": order_id, "user.tier": random.choice(["VIP", "standard"]),
            "order.amount": round(random.uniform(10, 2000), 2), "http.request.method": "POST",
            "url.path": "/orders", "http.response.status_code": 201,
        }) as order:
            with tracer.start_as_current_span("applyPromotion", attributes={"promotion.id": "WINTER24",
                                                                            "promotion.discount_rate": 0.1}):
                time.sleep(random.uniform(0.005, 0.02))
            with tracer.start_as_current_span("GET /stock", kind=SpanKind.CLIENT) as call:
                headers: dict[str, str] = {}
                propagate.inject(headers)
                url = f"{args.inventory}/stock?sku=valve-{n % 5}"
                call.set_attribute("http.request.method", "GET")
                call.set_attribute("url.full", url)
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
                        call.set_attribute("http.response.status_code", r.status)
                        r.read()
                except OSError as e:
                    call.set_status(Status(StatusCode.ERROR, str(e)))
            with tracer.start_as_current_span(f"publish devices/{args.device}/cmd", kind=SpanKind.PRODUCER,
                                              attributes={"messaging.system": "mqtt",
                                                          "messaging.destination.name": f"devices/{args.device}/cmd"}):
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = list(carrier.items())
                client.publish(f"devices/{args.device}/cmd", f"open-valve {order_id}".encode(), qos=1,
                               properties=props).wait_for_publish(2)
            order.set_status(Status(StatusCode.OK))
        time.sleep(args.interval)
    provider.shutdown()
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
