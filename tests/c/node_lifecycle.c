/* The node lifecycle through the C ABI, and misuse that must give error codes, not crashes.
 * Prints one line per check and a final "N passed, N failed" line; exits non-zero on failure. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "kwaai.h"

static int last_error_mentions(const char *needle) {
    const char *msg = kwaai_last_error_message();
    return msg != NULL && strstr(msg, needle) != NULL;
}

static void lifecycle(void) {
    kwaai_config *config = NULL;
    check(kwaai_config_new(&config) == KWAAI_STATUS_OK && config != NULL, "config_new");
    check(kwaai_config_add_listen_addr(config, "/ip4/127.0.0.1/tcp/0") == KWAAI_STATUS_OK, "add_listen_addr");

    kwaai_node *node = NULL;
    check(kwaai_node_start(config, &node) == KWAAI_STATUS_OK && node != NULL, "node_start");
    kwaai_config_free(config);

    char *peer_id = NULL;
    check(kwaai_node_peer_id(node, &peer_id) == KWAAI_STATUS_OK && peer_id != NULL, "peer_id");
    check(peer_id != NULL && strncmp(peer_id, "12D3KooW", 8) == 0, "peer_id is an Ed25519 peer ID");

    size_t count = 0;
    check(kwaai_node_listen_addr_count(node, &count) == KWAAI_STATUS_OK && count == 1, "one listen addr");
    char *addr = NULL;
    check(kwaai_node_listen_addr(node, 0, &addr) == KWAAI_STATUS_OK && addr != NULL, "listen_addr 0");
    if (addr != NULL && peer_id != NULL) {
        printf("# node %s listens on %s\n", peer_id, addr);
        check(strncmp(addr, "/ip4/127.0.0.1/tcp/", 19) == 0, "listens on loopback");
        check(strstr(addr, peer_id) != NULL, "listen addr ends in /p2p/<peer id>");
    }
    char *unused = NULL;
    check(kwaai_node_listen_addr(node, count, &unused) == KWAAI_STATUS_INVALID_ARGUMENT && unused == NULL,
          "index past the end is invalid_argument and leaves out untouched");
    kwaai_string_free(addr);
    kwaai_string_free(peer_id);

    check(kwaai_node_shutdown(node) == KWAAI_STATUS_OK, "shutdown");
    check(kwaai_node_shutdown(node) == KWAAI_STATUS_OK, "second shutdown is a no-op");
    check(kwaai_node_listen_addr_count(node, &count) == KWAAI_STATUS_OK && count == 0, "no addrs after shutdown");
    kwaai_node_free(node);
}

static void misuse(void) {
    char *out = NULL;
    size_t count = 0;
    check(kwaai_node_peer_id(NULL, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL node handle");
    check(last_error_mentions("NULL"), "message says NULL");
    check(kwaai_node_listen_addr_count(NULL, &count) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL node for count");
    check(kwaai_node_shutdown(NULL) == KWAAI_STATUS_INVALID_ARGUMENT, "shutdown of NULL");
    kwaai_node_free(NULL);
    kwaai_config_free(NULL);
    kwaai_string_free(NULL);
    check(1, "free of NULL is ignored");

    kwaai_config *config = NULL;
    check(kwaai_config_new(NULL) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL out-parameter");
    kwaai_config_new(&config);
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 'x', 0};
    check(kwaai_config_add_listen_addr(config, bad_utf8) == KWAAI_STATUS_INVALID_ARGUMENT, "invalid UTF-8");
    check(last_error_mentions("UTF-8"), "message says UTF-8");
    check(kwaai_config_set_identity_path(config, bad_utf8) == KWAAI_STATUS_INVALID_ARGUMENT, "invalid UTF-8 path");
    check(kwaai_config_add_listen_addr(config, NULL) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL string");
    check(kwaai_config_add_listen_addr(NULL, "/ip4/127.0.0.1/tcp/0") == KWAAI_STATUS_INVALID_ARGUMENT, "NULL config");

    check(kwaai_config_add_listen_addr(config, "not a multiaddr") == KWAAI_STATUS_OK, "addr is checked at start");
    kwaai_node *node = NULL;
    check(kwaai_node_start(config, &node) == KWAAI_STATUS_INVALID_ARGUMENT && node == NULL, "bad multiaddr");
    check(last_error_mentions("not a multiaddr"), "message names the bad address");
    kwaai_config_free(config);
    check(kwaai_config_add_listen_addr(config, "/ip4/127.0.0.1/tcp/0") == KWAAI_STATUS_INVALID_ARGUMENT,
          "freed config handle");
    kwaai_config_free(config); /* double free is ignored */

    kwaai_config_new(&config);
    check(kwaai_config_set_identity_path(config, "/nonexistent-dir/kwaai/id.key") == KWAAI_STATUS_OK, "identity path");
    kwaai_status s = kwaai_node_start(config, &node);
    check(s == KWAAI_STATUS_IO && node == NULL, "unwritable identity path is an io error");
    kwaai_config_free(config);

    check(kwaai_node_peer_id((kwaai_node *)&count, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "foreign handle");
    check(strcmp(kwaai_status_name(KWAAI_STATUS_TIMEOUT), "timeout") == 0, "status names");
}

int main(void) {
    check(kwaai_abi_version() == KWAAI_ABI_VERSION, "ABI version matches the header");
    check(strcmp(kwaai_version(), KWAAI_VERSION) == 0, "library version matches the header");
    lifecycle();
    misuse();
    lifecycle(); /* a second node in the same process after the first is gone */
    return report();
}
