/* Start a node, join a swarm, stream a generation.
 * Usage: generate MODEL_DIR INITIAL_PEER  (a multiaddr ending in /p2p/<peer id> of a swarm serving MODEL_DIR;
 * examples/with_swarm.sh runs one on 127.0.0.1)
 * Build: gcc -Iinclude examples/c/generate.c -Ltarget/debug -lkwaai -Wl,-rpath,$PWD/target/debug */
#include <stdio.h>

#include "kwaai.h"

static int fail(const char *what) {
    fprintf(stderr, "%s failed: %s\n", what, kwaai_last_error_message());
    return 1;
}

/* Runs on the generation's own thread, once per token, then once with `finished`. */
static void print_token(void *user_data, uint32_t token, const char *text, bool finished) {
    (void)token;
    if (!finished) {
        fputs(text, stdout);
        fflush(stdout);
        ++*(int *)user_data;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR INITIAL_PEER\n", argv[0]);
        return 2;
    }
    kwaai_config *config = NULL;
    kwaai_node *node = NULL;
    kwaai_model *model = NULL;
    kwaai_generation_config *options = NULL;
    kwaai_generation *generation = NULL;
    int tokens = 0;

    if (kwaai_config_new(&config) != KWAAI_STATUS_OK) return fail("kwaai_config_new");
    kwaai_config_add_listen_addr(config, "/ip4/127.0.0.1/tcp/0");
    kwaai_config_add_initial_peer(config, argv[2]);
    kwaai_config_set_client_mode(config, true);
    kwaai_status status = kwaai_node_start(config, &node);
    kwaai_config_free(config);
    if (status != KWAAI_STATUS_OK) return fail("kwaai_node_start");

    /* The model's embeddings and head load here; its blocks are found on the swarm. */
    if (kwaai_model_load(node, argv[1], NULL, &model) != KWAAI_STATUS_OK) {
        kwaai_node_free(node);
        return fail("kwaai_model_load");
    }
    kwaai_generation_config_new(&options);
    kwaai_generation_config_set_max_new_tokens(options, 12);
    printf("the old river ");
    status = kwaai_model_generate_text(model, "the old river", options, print_token, &tokens, &generation);
    if (status == KWAAI_STATUS_OK) status = kwaai_generation_wait(generation);
    printf("\n");
    if (status != KWAAI_STATUS_OK) fail("generation");
    else printf("%d tokens streamed\n", tokens);

    kwaai_generation_free(generation);
    kwaai_generation_config_free(options);
    kwaai_model_free(model);
    kwaai_node_free(node);
    return status == KWAAI_STATUS_OK && tokens > 0 ? 0 : 1;
}
