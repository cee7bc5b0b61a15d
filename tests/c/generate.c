/* Serving and generation from C only, on a loopback swarm: a bootstrap node and two nodes serving
 * the halves of a tiny model (its directory is argv[1]). A generation streamed through the token
 * callback gives the ids of a blocking generation, of a text-prompt generation and of a greedy
 * loop the host drives itself through a step-by-step session; cancelling mid-stream (from the
 * host's thread and from the callback) stops the callbacks and frees the servers' sessions; misuse
 * gives error codes. Prints one line per check and a final "N passed, N failed" line. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "kwaai.h"

#define NEW_TOKENS 16
#define LONG_RUN 1000
#define MAX_IDS 64

/* What a generation's callback saw; written on the generation's thread. */
struct stream {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    uint32_t ids[MAX_IDS];
    size_t count;
    int finished;
    int after_finished;
    char text[4096];
    size_t cancel_at; /* the callback cancels its own generation after this many tokens (0: never) */
    kwaai_generation *self;
};

static void stream_init(struct stream *s) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->changed, NULL);
}

static void stream_destroy(struct stream *s) {
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->changed);
}

static void on_token(void *user_data, uint32_t token, const char *piece, bool finished) {
    struct stream *s = user_data;
    pthread_mutex_lock(&s->lock);
    if (s->finished) s->after_finished++;
    if (finished) {
        s->finished++;
        if (token != KWAAI_NO_TOKEN || piece == NULL || piece[0] != '\0') s->after_finished++;
    } else {
        if (s->count < MAX_IDS) s->ids[s->count] = token;
        s->count++;
        strncat(s->text, piece, sizeof s->text - strlen(s->text) - 1);
        if (s->cancel_at && s->count == s->cancel_at) kwaai_generation_cancel(s->self);
    }
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static kwaai_node *start_node(const char *peer) {
    kwaai_config *config = NULL;
    kwaai_node *node = NULL;
    kwaai_config_new(&config);
    kwaai_config_add_listen_addr(config, "/ip4/127.0.0.1/tcp/0");
    if (peer) kwaai_config_add_initial_peer(config, peer);
    check(kwaai_node_start(config, &node) == KWAAI_STATUS_OK, "node starts");
    kwaai_config_free(config);
    return node;
}

static kwaai_server *serve(kwaai_node *node, const char *dir, const char *prefix, uint32_t start, uint32_t end) {
    kwaai_server_config *config = NULL;
    kwaai_server *server = NULL;
    kwaai_server_config_new(&config);
    check(kwaai_server_config_set_model_dir(config, dir) == KWAAI_STATUS_OK &&
              kwaai_server_config_set_block_range(config, start, end) == KWAAI_STATUS_OK &&
              kwaai_server_config_set_dht_prefix(config, prefix) == KWAAI_STATUS_OK &&
              kwaai_server_config_set_throughput(config, 1.0) == KWAAI_STATUS_OK &&
              kwaai_server_config_set_torch_dtype(config, KWAAI_DTYPE_F32) == KWAAI_STATUS_OK &&
              kwaai_server_config_set_max_sessions(config, 8) == KWAAI_STATUS_OK,
          "server configured");
    check(kwaai_node_serve(node, config, &server) == KWAAI_STATUS_OK, "server starts");
    kwaai_server_config_free(config);
    return server;
}

static size_t active_sessions(kwaai_server *server) {
    size_t n = 0;
    if (kwaai_server_active_sessions(server, &n) != KWAAI_STATUS_OK) return (size_t)-1;
    return n;
}

/* Waits (bounded) until neither server holds a session; true when they got there. */
static bool sessions_drain(kwaai_server *a, kwaai_server *b) {
    for (int i = 0; i < 1200; i++) {
        if (active_sessions(a) == 0 && active_sessions(b) == 0) return true;
        sleep_ms(50);
    }
    return false;
}

/* The index of the largest of the last row of float logits [1, T, vocab]. */
static uint32_t argmax_last(kwaai_tensor *logits) {
    size_t tokens = 0, vocab = 0, len = 0;
    const void *data = NULL;
    kwaai_tensor_dim(logits, 1, &tokens);
    kwaai_tensor_dim(logits, 2, &vocab);
    kwaai_tensor_data(logits, &data, &len);
    const float *row = (const float *)data + (tokens - 1) * vocab;
    uint32_t best = 0;
    for (size_t i = 1; i < vocab; i++)
        if (row[i] > row[best]) best = (uint32_t)i;
    return best;
}

/* The DHT prefix a model loaded with a NULL prefix uses: the directory's name, '.' and ' ' as '-'. */
static void prefix_of(const char *dir, char *out, size_t size) {
    char copy[1024];
    snprintf(copy, sizeof copy, "%s", dir);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    const char *name = strrchr(copy, '/') ? strrchr(copy, '/') + 1 : copy;
    snprintf(out, size, "%s", name);
    for (char *c = out; *c; c++)
        if (*c == '.' || *c == ' ') *c = '-';
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s TINY_MODEL_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char prefix[256];
    prefix_of(dir, prefix, sizeof prefix);

    /* Server configuration misuse. */
    kwaai_server_config *bad = NULL;
    kwaai_server_config_new(&bad);
    check(kwaai_server_config_set_block_range(bad, 2, 2) == KWAAI_STATUS_INVALID_ARGUMENT, "empty block range refused");
    check(kwaai_server_config_set_throughput(bad, -1.0) == KWAAI_STATUS_INVALID_ARGUMENT, "negative throughput refused");
    check(kwaai_server_config_set_torch_dtype(bad, KWAAI_DTYPE_I64) == KWAAI_STATUS_INVALID_ARGUMENT,
          "integer torch dtype refused");
    check(kwaai_server_config_set_model_dir(bad, NULL) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL model dir refused");
    check(kwaai_server_config_set_dht_prefix(NULL, "x") == KWAAI_STATUS_INVALID_ARGUMENT, "NULL server config refused");

    kwaai_node *boot = start_node(NULL);
    char *boot_addr = NULL;
    kwaai_node_listen_addr(boot, 0, &boot_addr);
    kwaai_node *host_a = start_node(boot_addr), *host_b = start_node(boot_addr);

    kwaai_server *unused = NULL;
    check(kwaai_node_serve(host_a, bad, &unused) == KWAAI_STATUS_INVALID_ARGUMENT && unused == NULL,
          "serving without a model directory or prefix fails");
    kwaai_server_config_free(bad);

    kwaai_server *first = serve(host_a, dir, prefix, 0, 2);
    kwaai_server *second = serve(host_b, dir, prefix, 2, 4);
    uint32_t start = 9, end = 9;
    check(kwaai_server_span(second, &start, &end) == KWAAI_STATUS_OK && start == 2 && end == 4, "server span");
    char *served_prefix = NULL;
    check(kwaai_server_dht_prefix(first, &served_prefix) == KWAAI_STATUS_OK && strcmp(served_prefix, prefix) == 0,
          "server DHT prefix");
    kwaai_string_free(served_prefix);
    uint64_t cache_left = 0;
    check(kwaai_server_cache_tokens_left(first, &cache_left) == KWAAI_STATUS_OK && cache_left > 0, "cache tokens left");
    check(active_sessions(first) == 0 && active_sessions(second) == 0, "no sessions yet");

    kwaai_model *model = NULL;
    check(kwaai_model_load(boot, "/nonexistent/model", NULL, &model) != KWAAI_STATUS_OK && model == NULL,
          "a missing model directory fails");
    check(kwaai_model_load(boot, dir, NULL, &model) == KWAAI_STATUS_OK, "model loads with the derived prefix");
    size_t hidden_size = 0, vocab = 0;
    check(kwaai_model_hidden_size(model, &hidden_size) == KWAAI_STATUS_OK && hidden_size == 64, "hidden size");
    check(kwaai_model_vocab_size(model, &vocab) == KWAAI_STATUS_OK && vocab == 260, "vocabulary size");

    uint32_t *prompt = NULL;
    size_t prompt_len = 0;
    check(kwaai_model_encode(model, "kwaai says", &prompt, &prompt_len) == KWAAI_STATUS_OK && prompt_len == 11,
          "prompt encoded (<s> and one id per byte)");

    kwaai_generation_config *config = NULL;
    kwaai_generation_config_new(&config);
    check(kwaai_generation_config_set_max_new_tokens(config, 0) == KWAAI_STATUS_INVALID_ARGUMENT, "0 new tokens refused");
    check(kwaai_generation_config_set_temperature(config, 0.0f) == KWAAI_STATUS_INVALID_ARGUMENT, "temperature 0 refused");
    check(kwaai_generation_config_set_top_p(config, 1.5f) == KWAAI_STATUS_INVALID_ARGUMENT, "top_p 1.5 refused");
    check(kwaai_generation_config_set_repetition_penalty(config, -1.0f) == KWAAI_STATUS_INVALID_ARGUMENT,
          "negative repetition penalty refused");
    check(kwaai_generation_config_set_max_new_tokens(config, NEW_TOKENS) == KWAAI_STATUS_OK, "16 new tokens");

    /* A blocking generation. */
    uint32_t blocking[NEW_TOKENS];
    size_t blocking_len = 0;
    check(kwaai_model_generate_ids(model, prompt, prompt_len, config, blocking, NEW_TOKENS - 1, &blocking_len) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "an output array too small refused");
    check(kwaai_model_generate_ids(model, prompt, prompt_len, config, blocking, NEW_TOKENS, &blocking_len) ==
              KWAAI_STATUS_OK && blocking_len == NEW_TOKENS, "blocking generation gives 16 ids");

    /* The same generation streamed through the callback. */
    struct stream s;
    stream_init(&s);
    kwaai_generation *gen = NULL;
    check(kwaai_model_generate(model, prompt, prompt_len, config, on_token, &s, &gen) == KWAAI_STATUS_OK,
          "streaming generation starts");
    check(kwaai_generation_wait(gen) == KWAAI_STATUS_OK, "streaming generation ends OK");
    check(kwaai_generation_wait(gen) == KWAAI_STATUS_OK, "waiting again gives the same outcome");
    pthread_mutex_lock(&s.lock);
    check(s.count == NEW_TOKENS && memcmp(s.ids, blocking, sizeof blocking) == 0, "streamed ids equal the blocking ids");
    check(s.finished == 1 && s.after_finished == 0, "one last call with finished, nothing after it");
    char *decoded = NULL;
    kwaai_model_decode(model, s.ids, s.count, &decoded);
    check(decoded && strncmp(decoded, s.text, strlen(s.text)) == 0, "streamed text pieces add up to the decoded ids");
    kwaai_string_free(decoded);
    pthread_mutex_unlock(&s.lock);
    kwaai_generation_free(gen);
    check(kwaai_generation_wait(gen) == KWAAI_STATUS_INVALID_ARGUMENT, "a freed generation refused");
    stream_destroy(&s);

    /* The same from text. */
    stream_init(&s);
    check(kwaai_model_generate_text(model, "kwaai says", config, on_token, &s, &gen) == KWAAI_STATUS_OK &&
              kwaai_generation_wait(gen) == KWAAI_STATUS_OK, "text-prompt generation");
    check(s.count == NEW_TOKENS && memcmp(s.ids, blocking, sizeof blocking) == 0, "text prompt gives the same ids");
    kwaai_generation_free(gen);
    stream_destroy(&s);

    /* The host's own greedy loop: embed, step through the servers, logits, argmax. */
    kwaai_session *session = NULL;
    check(kwaai_model_inference_session(model, prompt_len + NEW_TOKENS, &session) == KWAAI_STATUS_OK, "session opens");
    uint32_t looped[NEW_TOKENS];
    kwaai_tensor *hidden = NULL, *out = NULL, *logits = NULL;
    bool steps_ok = kwaai_model_embed(model, prompt, prompt_len, &hidden) == KWAAI_STATUS_OK;
    for (int i = 0; i < NEW_TOKENS && steps_ok; i++) {
        steps_ok = kwaai_session_step(session, hidden, &out) == KWAAI_STATUS_OK &&
                   kwaai_model_logits(model, out, &logits) == KWAAI_STATUS_OK;
        kwaai_tensor_free(hidden);
        hidden = NULL;
        if (!steps_ok) break;
        looped[i] = argmax_last(logits);
        kwaai_tensor_free(out);
        kwaai_tensor_free(logits);
        if (i + 1 < NEW_TOKENS) steps_ok = kwaai_model_embed(model, &looped[i], 1, &hidden) == KWAAI_STATUS_OK;
    }
    check(steps_ok && memcmp(looped, blocking, sizeof blocking) == 0, "a greedy loop over session steps gives the same ids");
    size_t position = 0;
    check(kwaai_session_position(session, &position) == KWAAI_STATUS_OK && position == prompt_len + NEW_TOKENS - 1,
          "session position");
    check(active_sessions(first) == 1 && active_sessions(second) == 1, "each server holds the open session");

    const size_t good[3] = {1, 1, 64}, narrow[3] = {1, 1, 63}, flat[2] = {1, 64};
    float zeros[64] = {0};
    int64_t ints[64] = {0};
    kwaai_tensor *wrong = NULL;
    kwaai_tensor_new(KWAAI_DTYPE_I64, good, 3, ints, sizeof ints, &wrong);
    check(kwaai_session_step(session, wrong, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "integer hidden states refused");
    kwaai_tensor_free(wrong);
    kwaai_tensor_new(KWAAI_DTYPE_F32, narrow, 3, zeros, 63 * sizeof(float), &wrong);
    check(kwaai_session_step(session, wrong, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "wrong hidden size refused");
    check(kwaai_model_logits(model, wrong, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "logits of a wrong shape refused");
    kwaai_tensor_free(wrong);
    kwaai_tensor_new(KWAAI_DTYPE_F32, flat, 2, zeros, sizeof zeros, &wrong);
    check(kwaai_session_step(session, wrong, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "2-d hidden states refused");
    kwaai_tensor_free(wrong);
    kwaai_tensor_new(KWAAI_DTYPE_F32, good, 3, zeros, sizeof zeros, &wrong);
    check(kwaai_session_step(session, wrong, &out) == KWAAI_STATUS_OK, "the last step that fits");
    kwaai_tensor_free(out);
    check(kwaai_session_step(session, wrong, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "a step past max_length refused");
    check(kwaai_session_step(session, NULL, &out) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL hidden states refused");
    check(kwaai_session_close(session) == KWAAI_STATUS_OK, "session closes");
    check(kwaai_session_step(session, wrong, &out) == KWAAI_STATUS_CLOSED, "a closed session says closed");
    kwaai_tensor_free(wrong);
    kwaai_session_free(session);
    check(kwaai_session_close(session) == KWAAI_STATUS_INVALID_ARGUMENT, "a freed session refused");
    check(sessions_drain(first, second), "closing the session frees the servers' sessions");

    /* Cancelling from the host's thread mid-stream. */
    kwaai_generation_config_set_max_new_tokens(config, LONG_RUN);
    stream_init(&s);
    check(kwaai_model_generate(model, prompt, prompt_len, config, on_token, &s, &gen) == KWAAI_STATUS_OK,
          "a long generation starts");
    pthread_mutex_lock(&s.lock);
    while (s.count < 3 && s.finished == 0) pthread_cond_wait(&s.changed, &s.lock);
    pthread_mutex_unlock(&s.lock);
    check(active_sessions(first) == 1 && active_sessions(second) == 1, "servers hold the streaming session");
    check(kwaai_generation_cancel(gen) == KWAAI_STATUS_OK, "cancelled mid-stream");
    pthread_mutex_lock(&s.lock);
    size_t at_cancel = s.count;
    pthread_mutex_unlock(&s.lock);
    check(at_cancel >= 3 && at_cancel < LONG_RUN, "cancelled before the end");
    check(kwaai_generation_wait(gen) == KWAAI_STATUS_CLOSED, "a cancelled generation ends CLOSED");
    check(sessions_drain(first, second), "cancelling frees the servers' sessions");
    pthread_mutex_lock(&s.lock);
    check(s.count == at_cancel && s.finished == 0, "no callback after cancel returned");
    pthread_mutex_unlock(&s.lock);
    kwaai_generation_free(gen);
    stream_destroy(&s);

    /* Freeing a generation mid-stream cancels it. */
    stream_init(&s);
    check(kwaai_model_generate(model, prompt, prompt_len, config, on_token, &s, &gen) == KWAAI_STATUS_OK,
          "a generation to free mid-stream starts");
    pthread_mutex_lock(&s.lock);
    while (s.count < 3 && s.finished == 0) pthread_cond_wait(&s.changed, &s.lock);
    pthread_mutex_unlock(&s.lock);
    kwaai_generation_free(gen);
    pthread_mutex_lock(&s.lock);
    at_cancel = s.count;
    pthread_mutex_unlock(&s.lock);
    check(sessions_drain(first, second), "freeing mid-stream frees the servers' sessions");
    pthread_mutex_lock(&s.lock);
    check(at_cancel < LONG_RUN && s.count == at_cancel && s.finished == 0, "no callback after free returned");
    pthread_mutex_unlock(&s.lock);
    stream_destroy(&s);

    /* Cancelling from the callback itself. */
    stream_init(&s);
    s.cancel_at = 3;
    pthread_mutex_lock(&s.lock); /* the callback waits until s.self is set */
    check(kwaai_model_generate(model, prompt, prompt_len, config, on_token, &s, &gen) == KWAAI_STATUS_OK,
          "a generation that cancels itself starts");
    s.self = gen;
    pthread_mutex_unlock(&s.lock);
    check(kwaai_generation_wait(gen) == KWAAI_STATUS_CLOSED, "cancelled from its callback: CLOSED");
    check(s.count == 3 && s.finished == 0, "no callback after the one that cancelled");
    check(sessions_drain(first, second), "the servers' sessions are freed");
    kwaai_generation_free(gen);
    stream_destroy(&s);

    /* Misuse of generation. */
    check(kwaai_model_generate(NULL, prompt, prompt_len, NULL, on_token, &s, &gen) == KWAAI_STATUS_INVALID_ARGUMENT,
          "NULL model refused");
    check(kwaai_model_generate(model, prompt, prompt_len, NULL, NULL, &s, &gen) == KWAAI_STATUS_INVALID_ARGUMENT,
          "NULL callback refused");
    check(kwaai_model_generate(model, prompt, 0, NULL, on_token, &s, &gen) == KWAAI_STATUS_INVALID_ARGUMENT,
          "empty prompt refused");
    check(kwaai_model_generate(model, NULL, 3, NULL, on_token, &s, &gen) == KWAAI_STATUS_INVALID_ARGUMENT,
          "NULL ids refused");
    kwaai_generation_config *freed = NULL;
    kwaai_generation_config_new(&freed);
    kwaai_generation_config_free(freed);
    check(kwaai_model_generate(model, prompt, prompt_len, freed, on_token, &s, &gen) == KWAAI_STATUS_INVALID_ARGUMENT,
          "freed generation config refused");
    const uint32_t outside[1] = {100000};
    check(kwaai_model_embed(model, outside, 1, &hidden) == KWAAI_STATUS_INVALID_ARGUMENT, "id outside vocab refused");
    check(kwaai_generation_cancel(NULL) == KWAAI_STATUS_INVALID_ARGUMENT, "NULL generation refused");

    /* Use after stop. */
    check(kwaai_server_shutdown(first) == KWAAI_STATUS_OK && kwaai_server_shutdown(first) == KWAAI_STATUS_OK,
          "server shuts down (twice)");
    check(kwaai_server_span(first, &start, &end) == KWAAI_STATUS_CLOSED, "a stopped server says closed");
    kwaai_server_free(first);
    check(active_sessions(first) == (size_t)-1 && kwaai_server_shutdown(first) == KWAAI_STATUS_INVALID_ARGUMENT,
          "a freed server refused");
    kwaai_server_free(second);

    kwaai_generation_config_free(config);
    kwaai_token_ids_free(prompt, prompt_len);
    kwaai_model_free(model);
    check(kwaai_model_vocab_size(model, &vocab) == KWAAI_STATUS_INVALID_ARGUMENT, "a freed model refused");

    kwaai_node_shutdown(host_a);
    kwaai_server_config *late = NULL;
    kwaai_server_config_new(&late);
    check(kwaai_node_serve(host_a, late, &unused) == KWAAI_STATUS_CLOSED, "serving from a stopped node says closed");
    check(kwaai_model_load(host_a, dir, NULL, &model) == KWAAI_STATUS_CLOSED, "loading on a stopped node says closed");
    kwaai_server_config_free(late);

    kwaai_node_free(host_a);
    kwaai_node_free(host_b);
    kwaai_node_free(boot);
    kwaai_string_free(boot_addr);
    return report();
}
