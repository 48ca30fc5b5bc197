/* NOT ESP-IDF: a stub with only the declarations of the ESP-IDF esp-mqtt API that esp_idf_device.c uses, so
 * the example compiles (compile-only) without the ESP-IDF toolchain. Names and signatures follow ESP-IDF v5's
 * mqtt_client.h / mqtt5_client.h; build the example inside an ESP-IDF project to use the real ones. */
#ifndef HELIX_STUB_MQTT_CLIENT_H
#define HELIX_STUB_MQTT_CLIENT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int esp_err_t;
#define ESP_OK 0
typedef struct esp_mqtt_client *esp_mqtt_client_handle_t;
typedef struct mqtt5_user_property_list_t *mqtt5_user_property_handle_t;

typedef struct {
    const char *key;
    const char *value;
} esp_mqtt5_user_property_item_t;

typedef struct {
    bool payload_format_indicator;
    uint32_t message_expiry_interval;
    uint16_t topic_alias;
    const char *response_topic;
    const char *correlation_data;
    uint16_t correlation_data_len;
    const char *content_type;
    mqtt5_user_property_handle_t user_property;
} esp_mqtt5_publish_property_config_t;

typedef struct {
    mqtt5_user_property_handle_t user_property;
} esp_mqtt5_event_property_t;

typedef struct {
    int event_id;
    esp_mqtt_client_handle_t client;
    char *data;
    int data_len;
    char *topic;
    int topic_len;
    esp_mqtt5_event_property_t *property;
} esp_mqtt_event_t;
typedef esp_mqtt_event_t *esp_mqtt_event_handle_t;

int esp_mqtt_client_publish(esp_mqtt_client_handle_t client, const char *topic, const char *data, int len, int qos,
                            int retain);
esp_err_t esp_mqtt5_client_set_publish_property(esp_mqtt_client_handle_t client,
                                                const esp_mqtt5_publish_property_config_t *property);
esp_err_t esp_mqtt5_client_set_user_property(mqtt5_user_property_handle_t *user_property,
                                             esp_mqtt5_user_property_item_t item[], uint8_t item_num);
esp_err_t esp_mqtt5_client_get_user_property(mqtt5_user_property_handle_t user_property,
                                             esp_mqtt5_user_property_item_t *item, uint8_t *item_num);
uint8_t esp_mqtt5_client_get_user_property_count(mqtt5_user_property_handle_t user_property);
void esp_mqtt5_client_delete_user_property(mqtt5_user_property_handle_t user_property);
#endif
