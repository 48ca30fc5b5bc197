"""Demo workload: an MQTT device that continues the app's trace with the Helix lightweight SDK.

It takes commands on `devices/<id>/cmd`, reads the W3C trace context from the MQTT v5 user properties, and
records its own spans (handling, sensor read, actuation) which the SDK publishes as CBOR to
`helix/sdk/<id>/spans`.
"""
from __future__ import annotations

import argparse
import random
import signal
import threading
import time

import paho.mqtt.client as mqtt

from edge.model import SpanKind
from edge.sdk import Tracer, extract

_stop = threading.Event()


def main() -> None:
    """Serve commands until stopped."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--device", default="sensor-gw-7")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: _stop.set())
    signal.signal(signal.SIGINT, lambda *_: _stop.set())

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{args.device}", protocol=mqtt.MQTTv5)
    tracer = Tracer(client, args.device, resource={"device.model.identifier": "RPi4-B", "device.manufacturer": "demo"})
    ready = threading.Event()

    def on_connect(c: mqtt.Client, userdata: object, flags: object, rc: object, props: object = None) -> None:
        c.subscribe(f"devices/{args.device}/cmd", qos=1)
        ready.set()

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parent = extract(msg.properties)
        with tracer.span("handleCommand", kind=SpanKind.CONSUMER, parent=parent, attributes={
                "messaging.system": "mqtt", "messaging.destination.name": msg.topic,
                "messaging.operation.type": "process", "command": msg.payload.decode(errors="replace")}) as span:
            with tracer.span("readSensor", attributes={"sensor.id": "pt100-1", "sensor.unit": "Cel"}) as read:
                time.sleep(random.uniform(0.002, 0.01))
                read.set_attribute("sensor.value", round(random.uniform(18, 24), 2))
            with tracer.span("actuateValve", attributes={"valve.id": "v-3"}) as act:
                time.sleep(random.uniform(0.01, 0.03))
                act.add_event("valve.opened", {"valve.position": 100})
            span.set_status(True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", args.broker_port)
    client.loop_start()
    ready.wait(10)
    print("device ready", flush=True)
    _stop.wait()
    tracer.flush()
    time.sleep(0.3)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
