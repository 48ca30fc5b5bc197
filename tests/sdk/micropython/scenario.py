# Runs under MicroPython (WebAssembly port, in Node.js): drives helix_trace through every feature and prints what
# it published (MSG hex) and what each span was (SPAN ...), for the test to decode with the agent's decoder.
import helix_trace as ht

REMOTE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
sent = []
fail = [False]


def publish(topic, payload):
    if fail[0]:
        fail[0] = False
        raise OSError(104)
    sent.append(payload)
    print("MSG " + topic + " " + "".join("%02x" % b for b in payload))


def hexs(b):
    return "".join("%02x" % x for x in b) if b else "-"


def show(s):
    print("SPAN %s %s %s %s %d %d" % (s.name, hexs(s.trace_id), hexs(s.span_id), hexs(s.parent_id), s.start_ns,
                                       s.end_ns))


t = ht.Tracer(publish, "valve-3", resource={"device.model.identifier": "ESP32-S3"})
props = [("Content-Type", "x"), ("TraceState", "vendor=abc,ot=th:8"), ("TRACEPARENT", REMOTE),
         ("traceparent", "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01")]
remote = ht.extract(props)
print("REMOTE", remote is not None)
with t.span("handleCommand", kind=ht.CONSUMER, parent=remote,
            attributes={"command": "open", "valve.id": 3, "offset": -9000000000, "temp": 21.4, "manual": True,
                        "raw": b"\x00\x01", "tags": ["a", 1]}) as root:
    root.event("received", {"bytes": 12})
    with t.span("readSensor") as r:
        r.set("sensor.id", "pt100-\u00e9")
    show(r)
    a = t.span("actuateValve", kind=ht.CLIENT)
    a.set_status(False, "valve stuck")
    a.end()
    show(a)
    print("INJECT", ht.inject(a.context, [("x", "y"), ("traceparent", "old")]))
    root.set_status(True)
show(root)
root.end()  # twice: ignored

try:
    with t.span("selfTest", kind=ht.SERVER) as st:
        raise ValueError("sensor out of range")
except ValueError:
    pass
show(st)

with t.span("x" * 300) as big:
    big.set("long", "y" * 300)
    for i in range(40):
        big.set("k%d" % i, i)
    for i in range(20):
        big.event("tick")
show(big)

t2 = ht.Tracer(publish, "valve-3", max_batch=4)
with t2.span("cycle") as c:
    for i in range(9):
        if i == 5:
            fail[0] = True
        with t2.span("step") as s:
            s.set("i", i)
        show(s)
show(c)
print("SMALL seq=%d published=%d failures=%d" % (t2.seq, t2.published, t2.publish_failures))

BAD = ["00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
       "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
       "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", "", "0" * 100000, None, 7]
print("BAD", sum(ht.extract([("traceparent", v)]) is None for v in BAD), len(BAD))
print("ODD", ht.extract([("traceparent",), 5, None, ("tracestate", "a=\x01")]) is None)
later = ht.extract([("traceparent", "cc" + REMOTE[2:] + "-more"), ("tracestate", "z" * 600)])
print("LATER", hexs(later.span_id), later.trace_state == "")
