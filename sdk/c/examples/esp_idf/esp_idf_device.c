/* An ESP32 device traced with the Helix C SDK over ESP-IDF's esp-mqtt client (MQTT v5).
 *
 * Compile-only here: stub/ declares the few ESP-IDF functions used (it is not ESP-IDF). In an ESP-IDF project,
 * add helix_trace.c to a component, register mqtt_event_handler for MQTT_EVENT_DATA and call
 * device_handle_command from it; drop the stub directory from the include path.
 */
#include <stdbool.h>
#include <string.h>
#include <sys/time.h>

#include "esp_random.h"
#include "esp_timer.h"
#include "mqtt_client.h"

#include "helix_trace.h"

#define DEVICE_ID "esp32-valve-3"

static esp_mqtt_client_handle_t client;
static hx_tracer tracer;
static uint8_t span_buffer[768];

static void random_bytes(void *user, uint8_t *out, size_t n) { (void)user; esp_fill_random(out, n); }
static uint64_t mono_ns(void *user) { (void)user; return (uint64_t)esp_timer_get_time() * 1000u; }
static uint64_t wall_ns(void *user) { /* SNTP-set time; before that, time since boot (flagged by its size) */
    struct timeval tv;
    (void)user;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000000u + (uint64_t)tv.tv_usec * 1000u;
}

static int publish_spans(void *user, const uint8_t *msg, size_t len) {
    (void)user;
    return esp_mqtt_client_publish(client, "helix/sdk/" DEVICE_ID "/spans", (const char *)msg, (int)len, 1, 0) < 0;
}

void device_tracing_init(esp_mqtt_client_handle_t mqtt) {
    static const hx_hooks hooks = {random_bytes, mono_ns, wall_ns, publish_spans, NULL};
    client = mqtt;
    hx_tracer_init(&tracer, span_buffer, sizeof span_buffer, "valve-controller", DEVICE_ID, &hooks);
}

/* MQTT_EVENT_DATA on the command topic: continue the sender's trace, act, and reply with our context. */
void device_handle_command(esp_mqtt_event_handle_t event) {
    esp_mqtt5_user_property_item_t items[8];
    uint8_t count = sizeof items / sizeof items[0], i;
    hx_context remote, ctx;
    hx_span root, act, reply;
    char tp[HX_TRACEPARENT_LEN + 1];
    esp_mqtt5_user_property_item_t out[1];
    esp_mqtt5_publish_property_config_t props;

    hx_context_clear(&remote);
    if (event->property && esp_mqtt5_client_get_user_property(event->property->user_property, items, &count) == ESP_OK)
        for (i = 0; i < count; i++)
            hx_extract_pair(&remote, items[i].key, strlen(items[i].key), items[i].value, strlen(items[i].value));

    hx_span_start(&tracer, &root, "handleCommand", HX_KIND_CONSUMER, NULL, &remote);
    hx_span_set_int(&root, "command.bytes", event->data_len);
    hx_span_start(&tracer, &act, "actuateValve", HX_KIND_INTERNAL, &root, NULL);
    hx_span_set_bool(&act, "valve.open", 1);
    hx_span_end(&act);

    hx_span_start(&tracer, &reply, "publish reply", HX_KIND_PRODUCER, &root, NULL);
    hx_span_context(&reply, &ctx);
    hx_inject(&ctx, tp);
    out[0].key = "traceparent", out[0].value = tp;
    memset(&props, 0, sizeof props);
    esp_mqtt5_client_set_user_property(&props.user_property, out, 1);
    esp_mqtt5_client_set_publish_property(client, &props);
    if (esp_mqtt_client_publish(client, "devices/" DEVICE_ID "/reply", "ok", 2, 1, 0) < 0)
        hx_span_set_status(&reply, HX_STATUS_ERROR, "reply not queued");
    esp_mqtt5_client_delete_user_property(props.user_property);
    hx_span_end(&reply);
    hx_span_end(&root);
}
