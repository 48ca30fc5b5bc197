/* NOT ESP-IDF: stub declaration of esp_fill_random (esp_random.h), for the compile-only example. */
#ifndef HELIX_STUB_ESP_RANDOM_H
#define HELIX_STUB_ESP_RANDOM_H
#include <stddef.h>
void esp_fill_random(void *buf, size_t len);
#endif
