/* Tensors and logging through the C ABI: tensors are created, read and freed; one node pushes a
 * tensor to another whose callback receives it (plain and top-k compressed); a refusing callback, a
 * missing handler and misuse (wrong sizes, NULLs, freed handles, error feedback on integers) give
 * error codes; log lines reach a log callback.
 * Prints one line per check and a final "N passed, N failed" line. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "kwaai.h"

#define TIMEOUT_MS 20000

/* What the receiving callback saw; written on a library thread, read after the push returned. */
struct inbox {
    pthread_mutex_t lock;
    int count;
    bool accept;
    char name[64];
    char peer[64];
    kwaai_tensor *tensor;
};

static bool on_tensor(void *user_data, const char *peer_id, const char *name, kwaai_tensor *tensor) {
    struct inbox *inbox = user_data;
    pthread_mutex_lock(&inbox->lock);
    inbox->count++;
    snprintf(inbox->name, sizeof inbox->name, "%s", name);
    snprintf(inbox->peer, sizeof inbox->peer, "%s", peer_id);
    bool accept = inbox->accept;
    if (accept && inbox->tensor == NULL) {
        inbox->tensor = tensor; /* kept: freed by main */
    } else {
        kwaai_tensor_free(tensor);
    }
    pthread_mutex_unlock(&inbox->lock);
    return accept;
}

static int log_lines = 0;
static void on_log(void *user_data, kwaai_log_level level, const char *target, const char *message) {
    (void)user_data;
    if (level >= KWAAI_LOG_LEVEL_ERROR && level <= KWAAI_LOG_LEVEL_TRACE && target && message) {
        __atomic_fetch_add(&log_lines, 1, __ATOMIC_SEQ_CST);
    }
}

static kwaai_node *start(void) {
    kwaai_config *config = NULL;
    kwaai_node *node = NULL;
    kwaai_config_new(&config);
    kwaai_config_add_listen_addr(config, "/ip4/127.0.0.1/tcp/0");
    check(kwaai_node_start(config, &node) == KWAAI_STATUS_OK, "node starts");
    kwaai_config_free(config);
    return node;
}

int main(void) {
    check(kwaai_set_log_level("not a [valid filter") == KWAAI_STATUS_INVALID_ARGUMENT, "bad log filter refused");
    check(kwaai_set_log_callback(on_log, NULL) == KWAAI_STATUS_OK, "log callback set");
    check(kwaai_set_log_level("debug") == KWAAI_STATUS_OK, "log level set");

    const float values[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 7.0f};
    const size_t shape[2] = {2, 3};
    kwaai_tensor *tensor = NULL;
    check(kwaai_tensor_new(KWAAI_DTYPE_F32, shape, 2, values, sizeof values - 4, &tensor) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "size mismatch refused");
    check(kwaai_tensor_new(KWAAI_DTYPE_F32, NULL, 2, values, sizeof values, &tensor) == KWAAI_STATUS_INVALID_ARGUMENT,
          "NULL shape refused");
    check(kwaai_tensor_new(KWAAI_DTYPE_F32, shape, 2, values, sizeof values, &tensor) == KWAAI_STATUS_OK, "tensor made");

    kwaai_node *a = start(), *b = start();
    char *b_addr = NULL, *b_id = NULL, *a_id = NULL;
    kwaai_node_listen_addr(b, 0, &b_addr);
    kwaai_node_peer_id(b, &b_id);
    kwaai_node_peer_id(a, &a_id);

    check(kwaai_node_connect(a, "/ip4/127.0.0.1/tcp/1/p2p/not-a-peer", TIMEOUT_MS) == KWAAI_STATUS_INVALID_ARGUMENT,
          "bad multiaddr refused");
    check(kwaai_node_connect(a, b_addr, TIMEOUT_MS) == KWAAI_STATUS_OK, "nodes connect");
    check(kwaai_node_push_tensor(a, b_id, "w", tensor, TIMEOUT_MS) == KWAAI_STATUS_PROTOCOL,
          "push to a node without a handler fails");

    struct inbox inbox = {.lock = PTHREAD_MUTEX_INITIALIZER, .accept = true};
    check(kwaai_node_set_tensor_handler(b, NULL, &inbox) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL callback refused");
    check(kwaai_node_set_tensor_handler(b, on_tensor, &inbox) == KWAAI_STATUS_OK, "handler set");
    check(kwaai_node_push_tensor(a, b_id, "layer.0", tensor, TIMEOUT_MS) == KWAAI_STATUS_OK, "tensor pushed");

    pthread_mutex_lock(&inbox.lock);
    check(inbox.count == 1 && strcmp(inbox.name, "layer.0") == 0 && strcmp(inbox.peer, a_id) == 0,
          "callback saw the name and the sender");
    kwaai_tensor *got = inbox.tensor;
    inbox.tensor = NULL;
    inbox.accept = false;
    pthread_mutex_unlock(&inbox.lock);

    kwaai_dtype dtype;
    size_t ndim = 0, d0 = 0, d1 = 0, len = 0;
    const void *data = NULL;
    check(kwaai_tensor_dtype(got, &dtype) == KWAAI_STATUS_OK && dtype == KWAAI_DTYPE_F32, "received dtype");
    check(kwaai_tensor_ndim(got, &ndim) == KWAAI_STATUS_OK && ndim == 2, "received rank");
    check(kwaai_tensor_dim(got, 0, &d0) == KWAAI_STATUS_OK && kwaai_tensor_dim(got, 1, &d1) == KWAAI_STATUS_OK &&
              d0 == 2 && d1 == 3, "received shape");
    check(kwaai_tensor_dim(got, 2, &d0) == KWAAI_STATUS_INVALID_ARGUMENT, "dimension past the rank refused");
    check(kwaai_tensor_data(got, &data, &len) == KWAAI_STATUS_OK && len == sizeof values &&
              memcmp(data, values, len) == 0, "received bytes");
    check(kwaai_tensor_free(got) == KWAAI_STATUS_OK, "received tensor freed");
    check(kwaai_tensor_free(got) == KWAAI_STATUS_INVALID_ARGUMENT, "double free refused");
    check(kwaai_tensor_ndim(got, &ndim) == KWAAI_STATUS_INVALID_ARGUMENT, "freed tensor refused");

    pthread_mutex_lock(&inbox.lock);
    inbox.accept = true;
    pthread_mutex_unlock(&inbox.lock);
    check(kwaai_node_push_tensor_compressed(a, b_id, "sparse", tensor, KWAAI_COMPRESSION_TOP_K, 2, TIMEOUT_MS) ==
              KWAAI_STATUS_OK, "top-k push");
    pthread_mutex_lock(&inbox.lock);
    got = inbox.tensor;
    inbox.tensor = NULL;
    inbox.accept = false;
    pthread_mutex_unlock(&inbox.lock);
    const float sparse[6] = {0.0f, 0.0f, 3.25f, 0.0f, 0.0f, 7.0f};
    check(got != NULL && kwaai_tensor_data(got, &data, &len) == KWAAI_STATUS_OK && len == sizeof sparse &&
              memcmp(data, sparse, len) == 0, "top-k push arrives as the two largest entries");
    kwaai_tensor_free(got);
    const int64_t ints[2] = {1, 2};
    const size_t int_shape[1] = {2};
    kwaai_tensor *int_tensor = NULL;
    check(kwaai_tensor_new(KWAAI_DTYPE_I64, int_shape, 1, ints, sizeof ints, &int_tensor) == KWAAI_STATUS_OK,
          "int tensor made");
    check(kwaai_node_push_tensor_compressed(a, b_id, "i", int_tensor, KWAAI_COMPRESSION_TOP_K, 1, TIMEOUT_MS) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "error feedback on integers refused");
    kwaai_tensor_free(int_tensor);

    check(kwaai_node_push_tensor(a, b_id, "no", tensor, TIMEOUT_MS) == KWAAI_STATUS_PROTOCOL,
          "a refusing callback fails the push");
    check(strstr(kwaai_last_error_message(), "refused") != NULL, "the sender hears why");
    check(kwaai_node_push_tensor(a, "not-a-peer", "x", tensor, TIMEOUT_MS) == KWAAI_STATUS_INVALID_ARGUMENT,
          "bad peer ID refused");
    check(kwaai_node_push_tensor(a, b_id, "", tensor, TIMEOUT_MS) == KWAAI_STATUS_INVALID_ARGUMENT,
          "empty name refused");
    check(kwaai_node_push_tensor(a, b_id, "x", NULL, TIMEOUT_MS) == KWAAI_STATUS_INVALID_ARGUMENT,
          "NULL tensor refused");

    check(kwaai_node_clear_tensor_handler(b) == KWAAI_STATUS_OK, "handler cleared");
    pthread_mutex_lock(&inbox.lock);
    int before = inbox.count;
    pthread_mutex_unlock(&inbox.lock);
    check(kwaai_node_push_tensor(a, b_id, "late", tensor, TIMEOUT_MS) == KWAAI_STATUS_PROTOCOL, "push after clearing fails");
    pthread_mutex_lock(&inbox.lock);
    check(inbox.count == before, "no callback after clearing");
    pthread_mutex_unlock(&inbox.lock);

    kwaai_node_free(a);
    kwaai_node_free(b);
    check(kwaai_node_push_tensor(a, b_id, "x", tensor, TIMEOUT_MS) == KWAAI_STATUS_INVALID_ARGUMENT,
          "freed node refused");
    kwaai_string_free(b_addr);
    kwaai_string_free(b_id);
    kwaai_string_free(a_id);
    kwaai_tensor_free(tensor);

    check(__atomic_load_n(&log_lines, __ATOMIC_SEQ_CST) > 0, "log lines reached the callback");
    check(kwaai_set_log_callback(NULL, NULL) == KWAAI_STATUS_OK && kwaai_set_log_level("off") == KWAAI_STATUS_OK,
          "logging back to stderr, then off");
    return report();
}
