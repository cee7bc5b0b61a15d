/* The DHT through the C ABI: two nodes on loopback, a value stored on one is read on the other,
 * a subkey makes a dictionary, and bad msgpack is refused. Keys and values are msgpack bytes.
 * Prints one line per check and a final "N passed, N failed" line. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "kwaai.h"

static kwaai_node *start(const char *initial_peer) {
    kwaai_config *config = NULL;
    kwaai_node *node = NULL;
    kwaai_config_new(&config);
    if (initial_peer) kwaai_config_add_initial_peer(config, initial_peer);
    kwaai_status s = kwaai_node_start(config, &node);
    kwaai_config_free(config);
    check(s == KWAAI_STATUS_OK, initial_peer ? "second node joins through the first" : "first node starts");
    return node;
}

int main(void) {
    kwaai_node *a = start(NULL);
    char *addr = NULL;
    kwaai_node_listen_addr(a, 0, &addr);
    kwaai_node *b = start(addr);
    kwaai_string_free(addr);

    const unsigned char key[] = {0xa3, 'k', 'e', 'y'};           /* "key" */
    const unsigned char value[] = {0x92, 0x2a, 0xa2, 'h', 'i'};   /* [42, "hi"] */
    double expiration = (double)time(NULL) + 60.0;
    bool stored = false;
    check(kwaai_node_dht_store(a, key, sizeof key, NULL, 0, value, sizeof value, expiration, &stored) ==
              KWAAI_STATUS_OK && stored, "store on the first node");

    kwaai_dht_result result;
    check(kwaai_node_dht_get(b, key, sizeof key, true, &result) == KWAAI_STATUS_OK, "get on the second node");
    check(result.found && !result.is_dictionary, "found a regular value");
    check(result.value_len == sizeof value && memcmp(result.value, value, sizeof value) == 0, "same msgpack bytes");
    check(result.expiration == expiration, "same expiration");
    kwaai_dht_result_free(&result);
    check(result.value == NULL && !result.found, "result reset after free");
    kwaai_dht_result_free(&result); /* a second free is harmless */

    const unsigned char dict_key[] = {0xa6, 's', 'e', 'r', 'v', 'e', 'r'};
    const unsigned char subkey[] = {0xa1, 's'};
    const unsigned char one[] = {0x01};
    check(kwaai_node_dht_store(b, dict_key, sizeof dict_key, subkey, sizeof subkey, one, sizeof one, expiration, &stored) ==
              KWAAI_STATUS_OK && stored, "store a subkey");
    check(kwaai_node_dht_get(a, dict_key, sizeof dict_key, true, &result) == KWAAI_STATUS_OK && result.found &&
              result.is_dictionary, "get a dictionary");
    /* [[ "s", 1, expiration ]] */
    const unsigned char expected[] = {0x91, 0x93, 0xa1, 's', 0x01, 0xcb};
    check(result.value_len == sizeof expected + 8 && memcmp(result.value, expected, sizeof expected) == 0,
          "dictionary entries as msgpack");
    kwaai_dht_result_free(&result);

    const unsigned char absent[] = {0xa6, 'a', 'b', 's', 'e', 'n', 't'};
    check(kwaai_node_dht_get(b, absent, sizeof absent, false, &result) == KWAAI_STATUS_OK && !result.found,
          "absent key is not found");
    const unsigned char truncated[] = {0xa5, 'k'};
    check(kwaai_node_dht_get(b, truncated, sizeof truncated, false, &result) == KWAAI_STATUS_INVALID_ARGUMENT,
          "truncated msgpack key is invalid_argument");
    check(kwaai_node_dht_store(a, NULL, 4, NULL, 0, value, sizeof value, expiration, &stored) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "NULL key with a length is invalid_argument");
    check(kwaai_node_dht_store(a, key, sizeof key, NULL, 0, value, sizeof value, expiration, NULL) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "NULL out_stored is invalid_argument");
    check(kwaai_node_dht_get(NULL, key, sizeof key, false, &result) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL node");

    /* Batched: [["m0", nil, 0, exp], ["m1", nil, 1, exp]] stored on a, both read back on b. */
    unsigned char items[64];
    size_t n = 0;
    items[n++] = 0x92;
    for (int i = 0; i < 2; i++) {
        items[n++] = 0x94;
        items[n++] = 0xa2; items[n++] = 'm'; items[n++] = (unsigned char)('0' + i);
        items[n++] = 0xc0;
        items[n++] = (unsigned char)i;
        items[n++] = 0xcb;
        unsigned char be[8];
        memcpy(be, &expiration, 8);
        for (int j = 0; j < 8; j++) items[n++] = be[7 - j]; /* little-endian host to big-endian */
    }
    bool flags[2] = {false, false};
    check(kwaai_node_dht_store_many(a, items, n, flags, 2) == KWAAI_STATUS_OK && flags[0] && flags[1], "store_many");
    check(kwaai_node_dht_store_many(a, items, n, flags, 3) == KWAAI_STATUS_INVALID_ARGUMENT,
          "store_many with the wrong count is invalid_argument");
    const unsigned char keys[] = {0x93, 0xa2, 'm', '0', 0xa2, 'm', '1', 0xa2, 'm', '9'};
    kwaai_dht_result results[3];
    check(kwaai_node_dht_get_many(b, keys, sizeof keys, false, results, 3) == KWAAI_STATUS_OK, "get_many");
    check(results[0].found && results[0].value_len == 1 && results[0].value[0] == 0x00, "get_many: m0 = 0");
    check(results[1].found && results[1].value_len == 1 && results[1].value[0] == 0x01, "get_many: m1 = 1");
    check(!results[2].found, "get_many: m9 absent");
    for (int i = 0; i < 3; i++) kwaai_dht_result_free(&results[i]);

    kwaai_node_free(b);
    kwaai_node_free(a);
    return report();
}
