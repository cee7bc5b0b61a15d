/* Start a node, print its peer ID and multiaddrs, stop it.
 * Build: gcc -Iinclude examples/c/start_node.c -Ltarget/debug -lkwaai -Wl,-rpath,$PWD/target/debug */
#include <stdio.h>

#include "kwaai.h"

static int fail(const char *what) {
    fprintf(stderr, "%s failed: %s\n", what, kwaai_last_error_message());
    return 1;
}

int main(void) {
    kwaai_config *config = NULL;
    kwaai_node *node = NULL;
    if (kwaai_config_new(&config) != KWAAI_STATUS_OK) return fail("kwaai_config_new");
    if (kwaai_config_add_listen_addr(config, "/ip4/127.0.0.1/tcp/0") != KWAAI_STATUS_OK) return fail("listen addr");
    kwaai_status status = kwaai_node_start(config, &node);
    kwaai_config_free(config);
    if (status != KWAAI_STATUS_OK) return fail("kwaai_node_start");

    char *peer_id = NULL;
    size_t count = 0;
    if (kwaai_node_peer_id(node, &peer_id) == KWAAI_STATUS_OK) {
        printf("peer id: %s\n", peer_id);
        kwaai_string_free(peer_id);
    }
    kwaai_node_listen_addr_count(node, &count);
    for (size_t i = 0; i < count; i++) {
        char *addr = NULL;
        if (kwaai_node_listen_addr(node, i, &addr) == KWAAI_STATUS_OK) {
            printf("listening on: %s\n", addr);
            kwaai_string_free(addr);
        }
    }
    kwaai_node_free(node); /* shuts the node down */
    return 0;
}
