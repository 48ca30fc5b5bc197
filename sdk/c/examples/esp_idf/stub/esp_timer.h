/* NOT ESP-IDF: stub declaration of esp_timer_get_time (esp_timer.h), for the compile-only example. */
#ifndef HELIX_STUB_ESP_TIMER_H
#define HELIX_STUB_ESP_TIMER_H
#include <stdint.h>
int64_t esp_timer_get_time(void); /* microseconds since boot */
#endif
