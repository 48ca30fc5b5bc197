/* A Linux device traced with the Helix C SDK over libmosquitto (MQTT v5 user properties).
 *
 *   mosquitto_device HOST PORT DEVICE_ID --traces N     record N traces (a root, 4 attributes, 2 children)
 *   mosquitto_device HOST PORT DEVICE_ID --commands N   answer N commands on devices/<id>/cmd, continuing the
 *                                                       sender's trace, replying on devices/<id>/reply
 *
 * Spans go to helix/sdk/<id>/spans (QoS 1), one message per trace. Build:
 *   cc -O2 -I sdk/c sdk/c/helix_trace.c sdk/c/examples/mosquitto_device.c -lmosquitto -o mosquitto_device
 */
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "helix_trace.h"

static struct mosquitto *mosq;
static hx_tracer tracer;
static char spans_topic[128], cmd_topic[128], reply_topic[128];
static int subscribed, handled, sent, acked, failed;

static void random_bytes(void *user, uint8_t *out, size_t n) {
    (void)user;
    if (getrandom(out, n, 0) != (ssize_t)n) abort();
}

static uint64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static uint64_t mono_ns(void *user) { (void)user; return clock_ns(CLOCK_MONOTONIC); }
static uint64_t wall_ns(void *user) { (void)user; return clock_ns(CLOCK_REALTIME); }

/* Adds the span's context to a message's properties as the W3C MQTT format asks. */
static void add_context(mosquitto_property **props, const hx_span *span) {
    hx_context ctx;
    char tp[HX_TRACEPARENT_LEN + 1], ts[HX_TRACESTATE_MAX + 1];
    hx_span_context(span, &ctx);
    hx_inject(&ctx, tp);
    mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, "traceparent", tp);
    if (ctx.state_len) {
        memcpy(ts, ctx.state, ctx.state_len);
        ts[ctx.state_len] = 0;
        mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, "tracestate", ts);
    }
}

static int publish_spans(void *user, const uint8_t *msg, size_t len) {
    mosquitto_property *props = NULL;
    int rc;
    (void)user;
    mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, "application/cbor");
    rc = mosquitto_publish_v5(mosq, NULL, spans_topic, (int)len, msg, 1, false, props);
    mosquitto_property_free_all(&props);
    if (rc == MOSQ_ERR_SUCCESS) sent++;
    return rc;
}

static void one_trace(const hx_context *remote, int n) {
    hx_span root, read, act;
    hx_span_start(&tracer, &root, remote ? "handleCommand" : "controlCycle",
                  remote ? HX_KIND_CONSUMER : HX_KIND_INTERNAL, NULL, remote);
    hx_span_set_str(&root, "device.mode", "auto");
    hx_span_set_int(&root, "cycle", n);
    hx_span_set_double(&root, "setpoint", 21.5);
    hx_span_set_bool(&root, "manual", 0);
    hx_span_start(&tracer, &read, "readSensor", HX_KIND_INTERNAL, &root, NULL);
    hx_span_set_double(&read, "sensor.value", 20.25);
    hx_span_end(&read);
    hx_span_start(&tracer, &act, "actuateValve", HX_KIND_INTERNAL, &root, NULL);
    hx_span_add_event(&act, "valve.opened");
    hx_span_end(&act);
    if (remote) {
        hx_span reply;
        mosquitto_property *props = NULL;
        hx_span_start(&tracer, &reply, "publish reply", HX_KIND_PRODUCER, &root, NULL);
        add_context(&props, &reply);
        mosquitto_publish_v5(mosq, NULL, reply_topic, 2, "ok", 1, false, props);
        mosquitto_property_free_all(&props);
        sent++;
        hx_span_end(&reply);
    }
    hx_span_set_status(&root, HX_STATUS_OK, NULL);
    hx_span_end(&root); /* a local root: the trace's spans are published now */
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
    const mosquitto_property *p;
    hx_context remote;
    char *key = NULL, *value = NULL;
    (void)m, (void)obj, (void)msg;
    hx_context_clear(&remote);
    for (p = mosquitto_property_read_string_pair(props, MQTT_PROP_USER_PROPERTY, &key, &value, false); p;
         p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &key, &value, true)) {
        hx_extract_pair(&remote, key, strlen(key), value, strlen(value));
        free(key), free(value);
        key = value = NULL;
    }
    one_trace(&remote, ++handled);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *qos, const mosquitto_property *p) {
    (void)m, (void)obj, (void)mid, (void)n, (void)qos, (void)p;
    subscribed = 1;
    printf("READY\n");
    fflush(stdout);
}

static void on_publish(struct mosquitto *m, void *obj, int mid, int reason, const mosquitto_property *p) {
    (void)m, (void)obj, (void)mid, (void)p;
    if (reason < 128) acked++;
    else failed++;
}

int main(int argc, char **argv) {
    static uint8_t buf[1024];
    hx_hooks hooks = {random_bytes, mono_ns, wall_ns, publish_spans, NULL};
    int traces = 0, commands = 0, i, waited = 0;
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT DEVICE_ID --traces N | --commands N\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[4], "--traces")) traces = atoi(argv[5]);
    else commands = atoi(argv[5]);
    snprintf(spans_topic, sizeof spans_topic, "helix/sdk/%s/spans", argv[3]);
    snprintf(cmd_topic, sizeof cmd_topic, "devices/%s/cmd", argv[3]);
    snprintf(reply_topic, sizeof reply_topic, "devices/%s/reply", argv[3]);
    if (hx_tracer_init(&tracer, buf, sizeof buf, argv[3], argv[3], &hooks) != 0) return 1;

    mosquitto_lib_init();
    mosq = mosquitto_new(argv[3], true, NULL);
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_message_v5_callback_set(mosq, on_message);
    mosquitto_subscribe_v5_callback_set(mosq, on_subscribe);
    mosquitto_publish_v5_callback_set(mosq, on_publish);
    if (mosquitto_connect_bind_v5(mosq, argv[1], atoi(argv[2]), 30, NULL, NULL) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "cannot connect to %s:%s\n", argv[1], argv[2]);
        return 1;
    }
    if (commands) mosquitto_subscribe_v5(mosq, NULL, cmd_topic, 1, 0, NULL);
    for (i = 0; i < traces; i++) one_trace(NULL, i);
    /* Until every command is answered and every publish acknowledged (or 30 s pass). */
    while ((handled < commands || acked + failed < sent) && waited < 300) {
        if (mosquitto_loop(mosq, 100, 1) != MOSQ_ERR_SUCCESS) mosquitto_reconnect(mosq);
        waited += !subscribed || handled >= commands;
    }
    printf("DONE traces=%d commands=%d messages=%u acked=%d failed=%d\n", traces, handled, tracer.published, acked,
           failed);
    mosquitto_disconnect_v5(mosq, 0, NULL);
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    return acked == sent && handled == commands ? 0 : 1;
}
