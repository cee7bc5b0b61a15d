/* Cost per call of C ABI functions, measured from C (the Rust side of the comparison is
 * benches/calls.rs). Prints one "name ns/call" line per function: the best of 5 runs of N calls.
 * Build and run: make bench-ffi */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>

#include "kwaai.h"

#define N 1000000
#define RUNS 5

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

#define MEASURE(name, call)                                   \
    do {                                                      \
        double best = 1e30;                                   \
        for (int run = 0; run < RUNS; run++) {                \
            double start = now_ns();                          \
            for (int i = 0; i < N; i++) {                     \
                call;                                         \
            }                                                 \
            double per_call = (now_ns() - start) / N;         \
            if (per_call < best) best = per_call;             \
        }                                                     \
        printf("%-30s %8.1f ns/call\n", name, best);          \
    } while (0)

int main(void) {
    kwaai_config *config = NULL;
    kwaai_node *node = NULL;
    if (kwaai_config_new(&config) || kwaai_node_start(config, &node)) {
        fprintf(stderr, "start failed: %s\n", kwaai_last_error_message());
        return 1;
    }
    kwaai_config_free(config);
    const float values[4] = {1, 2, 3, 4};
    const size_t shape[1] = {4};
    kwaai_tensor *tensor = NULL;
    kwaai_tensor_new(KWAAI_DTYPE_F32, shape, 1, values, sizeof values, &tensor);

    volatile unsigned sink = 0;
    size_t count = 0;
    MEASURE("kwaai_abi_version", sink += kwaai_abi_version());
    MEASURE("kwaai_tensor_ndim", sink += kwaai_tensor_ndim(tensor, &count));
    MEASURE("kwaai_node_listen_addr_count", sink += kwaai_node_listen_addr_count(node, &count));
    MEASURE("NULL handle (error path)", sink += kwaai_tensor_ndim(NULL, &count));

    kwaai_tensor_free(tensor);
    kwaai_node_free(node);
    return 0;
}
