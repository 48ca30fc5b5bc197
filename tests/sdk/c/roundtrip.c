/* Drives the C SDK through every feature with deterministic clocks and ids, printing what it published (MSG hex)
 * and what each span was (SPAN ...), so the test can decode the messages with the agent's decoder and compare. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helix_trace.h"

static uint64_t mono = 5000;
static uint32_t rng = 12345;
static int fail_next;

static void rnd(void *u, uint8_t *out, size_t n) {
    (void)u;
    while (n--) rng = rng * 1103515245u + 12345u, *out++ = (uint8_t)(rng >> 16);
}
static uint64_t mono_ns(void *u) { (void)u; return mono += 1000; }
static uint64_t wall_ns(void *u) { (void)u; return 1700000000000000000ull + mono; }
static int publish(void *u, const uint8_t *m, size_t n) {
    size_t i;
    (void)u;
    if (fail_next) { fail_next = 0; printf("FAILED\n"); return -1; }
    printf("MSG ");
    for (i = 0; i < n; i++) printf("%02x", m[i]);
    printf("\n");
    return 0;
}

static void show(const hx_span *s) {
    int i;
    printf("SPAN %s ", s->name);
    for (i = 0; i < 16; i++) printf("%02x", s->trace_id[i]);
    printf(" ");
    for (i = 0; i < 8; i++) printf("%02x", s->span_id[i]);
    printf(" ");
    if (s->has_parent) for (i = 0; i < 8; i++) printf("%02x", s->parent_id[i]);
    else printf("-");
    printf(" %llu %llu\n", (unsigned long long)s->start_ns, (unsigned long long)s->end_ns);
}

static void end(hx_span *s) { hx_span_end(s); show(s); }

int main(int argc, char **argv) {
    static uint8_t buf[1024], small[400];
    hx_tracer t, ts;
    hx_hooks hooks = {rnd, mono_ns, wall_ns, publish, 0};
    hx_context remote, ctx;
    hx_span root, a, b, big;
    char tp[HX_TRACEPARENT_LEN + 1], key[16], longname[200];
    const char *in_tp = argc > 1 ? argv[1] : "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    int i;

    if (hx_tracer_init(&t, buf, sizeof buf, "pump-ctrl", "pump-7", &hooks) != 0) return 2;
    if (hx_tracer_init(&ts, small, 40, "x", "y", &hooks) != -1) return 3; /* too small: refused */

    /* 1: a command's context continued: root, two children, every attribute type, an event, statuses. */
    hx_context_clear(&remote);
    hx_extract_pair(&remote, "content-type", 12, "x", 1);
    hx_extract_pair(&remote, "TraceState", 10, "vendor=abc,ot=th:8", 18);
    hx_extract_pair(&remote, "TRACEPARENT", 11, in_tp, strlen(in_tp));
    hx_extract_pair(&remote, "traceparent", 11, "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01", 55);
    printf("REMOTE %d\n", remote.valid);
    hx_span_start(&t, &root, "handleCommand", HX_KIND_CONSUMER, 0, &remote);
    hx_span_set_str(&root, "command", "open-valve");
    hx_span_set_int(&root, "valve.id", 42);
    hx_span_set_int(&root, "offset", -9000000000ll);
    hx_span_set_double(&root, "temp", 21.4);
    hx_span_set_bool(&root, "manual", 1);
    hx_span_add_event(&root, "received");
    hx_span_start(&t, &a, "readSensor", HX_KIND_INTERNAL, &root, 0);
    hx_span_set_str(&a, "sensor.id", "pt100-\xc3\xa9");  /* é */
    hx_span_set_int(&a, "zero", 0);
    end(&a);
    hx_span_start(&t, &b, "actuateValve", HX_KIND_CLIENT, &root, 0);
    hx_span_set_status(&b, HX_STATUS_ERROR, "valve stuck");
    end(&b);
    hx_span_context(&b, &ctx);
    hx_inject(&ctx, tp);
    printf("INJECT %s %.*s\n", tp, ctx.state_len, ctx.state);
    hx_span_set_status(&root, HX_STATUS_OK, "ignored for ok");
    end(&root);
    hx_span_end(&root); /* twice: ignored */

    /* 2: a new trace, no parent. */
    hx_span_start(&t, &root, "selfTest", HX_KIND_SERVER, 0, 0);
    end(&root);

    /* 3: cuts: a long name, invalid and long text, too many attributes and events. */
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    hx_span_start(&t, &big, longname, HX_KIND_INTERNAL, 0, 0);
    hx_span_set_str(&big, "bad.utf8", "ok\xff\xfe");
    hx_span_set_str(&big, "long", "0123456789012345678901234567890123456789012345678901234567890\xe2\x82\xac\xe2\x82\xac");
    for (i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "k%d", i);
        hx_span_set_int(&big, key, i);
    }
    for (i = 0; i < 40; i++) hx_span_add_event(&big, "tick");
    end(&big);
    printf("ATTRS %d EVENTS %d\n", big.nattrs, big.nevents);

    /* 4: a small buffer: children spill into several messages before the root ends; one publish fails. */
    if (hx_tracer_init(&ts, small, sizeof small, "pump-ctrl", "pump-7", &hooks) != 0) return 4;
    hx_span_start(&ts, &root, "cycle", HX_KIND_INTERNAL, 0, 0);
    for (i = 0; i < 12; i++) {
        hx_span_start(&ts, &a, "step", HX_KIND_INTERNAL, &root, 0);
        hx_span_set_int(&a, "i", i);
        if (i == 5) fail_next = 1;
        end(&a);
    }
    end(&root);
    printf("SMALL seq=%u published=%u failures=%u\n", ts.seq, ts.published, ts.publish_failures);
    return 0;
}
