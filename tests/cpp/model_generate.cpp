// Serving and generation through the C++ wrapper (include/kwaai.hpp), on a loopback swarm: a
// bootstrap node and two nodes serving the halves of a tiny model (its directory is argv[1]). A
// generation streamed to a std::function gives the ids of a blocking generation, of a text prompt
// and of a greedy loop over session steps; cancelling mid-stream stops the handler and frees the
// servers' sessions; misuse throws kwaai::Error with the right status.
// Prints one line per check and a final "N passed, N failed" line.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kwaai.hpp"

static int passed = 0, failed = 0;

static void check(bool ok, const char *what) {
    (ok ? passed : failed)++;
    std::printf("%s - %s\n", ok ? "ok" : "FAIL", what);
}

template <typename F>
static kwaai_status status_of(F f) {
    try {
        f();
    } catch (const kwaai::Error &e) {
        return e.status();
    }
    return KWAAI_STATUS_OK;
}

// What a generation's handler saw; written on the generation's thread.
struct Collected {
    std::mutex lock;
    std::condition_variable changed;
    std::vector<uint32_t> ids;
    std::string text;
    int finished = 0;

    kwaai::TokenHandler handler() {
        return [this](uint32_t token, const std::string &piece, bool done) {
            std::lock_guard<std::mutex> guard(lock);
            if (done) {
                finished++;
            } else {
                ids.push_back(token);
                text += piece;
            }
            changed.notify_all();
        };
    }
};

static bool drained(const kwaai::Server &a, const kwaai::Server &b) {
    for (int i = 0; i < 1200; i++) {
        if (a.active_sessions() == 0 && b.active_sessions() == 0) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
}

static std::string prefix_of(std::string dir) {
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    std::string name = dir.substr(dir.find_last_of('/') + 1);
    for (char &c : name)
        if (c == '.' || c == ' ') c = '-';
    return name;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s TINY_MODEL_DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const size_t new_tokens = 16;

    kwaai::Node boot = kwaai::Node::start({});
    kwaai::NodeOptions joining;
    joining.initial_peers = boot.listen_addrs();
    kwaai::Node host_a = kwaai::Node::start(joining), host_b = kwaai::Node::start(joining);

    kwaai::ServerOptions options;
    options.model_dir = dir;
    options.dht_prefix = prefix_of(dir);
    options.torch_dtype = KWAAI_DTYPE_F32;
    options.block_range = {0, 2};
    kwaai::Server first = kwaai::Server::start(host_a, options);
    options.block_range = {2, 4};
    kwaai::Server second = kwaai::Server::start(host_b, options);
    check(second.span() == std::make_pair(2u, 4u) && first.dht_prefix() == prefix_of(dir), "servers serve their halves");

    kwaai::Model model = kwaai::Model::load(boot, dir);
    check(model.hidden_size() == 64 && model.vocab_size() == 260, "model loads");
    const std::vector<uint32_t> prompt = model.encode("kwaai says");
    kwaai::GenerationOptions greedy;
    greedy.max_new_tokens = new_tokens;
    const std::vector<uint32_t> blocking = model.generate_ids(prompt, greedy);
    check(blocking.size() == new_tokens, "blocking generation gives 16 ids");

    {
        Collected seen;
        kwaai::Generation generation = model.generate(prompt, greedy, seen.handler());
        generation.wait();
        std::lock_guard<std::mutex> guard(seen.lock);
        check(seen.ids == blocking && seen.finished == 1, "streamed ids equal the blocking ids, then finished once");
        check(model.decode(seen.ids).compare(0, seen.text.size(), seen.text) == 0, "text pieces add up to the decoded ids");
    }
    {
        Collected seen;
        model.generate_text("kwaai says", greedy, seen.handler()).wait();
        check(seen.ids == blocking, "a text prompt gives the same ids");
    }
    {
        kwaai::Session session = model.inference_session(prompt.size() + new_tokens);
        std::vector<uint32_t> looped;
        kwaai::Tensor hidden = model.embed(prompt);
        for (size_t i = 0; i < new_tokens; i++) {
            std::vector<float> logits = model.logits(session.step(hidden)).floats();
            const float *row = logits.data() + logits.size() - 260;
            uint32_t best = 0;
            for (uint32_t v = 1; v < 260; v++)
                if (row[v] > row[best]) best = v;
            looped.push_back(best);
            hidden = model.embed({best});
        }
        check(looped == blocking, "a greedy loop over session steps gives the same ids");
        check(session.position() == prompt.size() + new_tokens - 1, "session position");
        auto ints = kwaai::Tensor(KWAAI_DTYPE_I64, {1, 1, 64}, std::vector<int64_t>(64).data(), 64 * 8);
        check(status_of([&] { session.step(ints); }) == KWAAI_STATUS_INVALID_ARGUMENT, "integer hidden states throw");
        session.close();
        check(status_of([&] { session.step(model.embed({5})); }) == KWAAI_STATUS_CLOSED, "a closed session throws CLOSED");
    }
    check(drained(first, second), "closed sessions leave the servers");

    {
        Collected seen;
        kwaai::GenerationOptions long_run;
        long_run.max_new_tokens = 1000;
        kwaai::Generation generation = model.generate(prompt, long_run, seen.handler());
        size_t at_cancel = 0;
        {
            std::unique_lock<std::mutex> guard(seen.lock);
            seen.changed.wait(guard, [&] { return seen.ids.size() >= 3 || seen.finished; });
        }
        check(first.active_sessions() == 1 && second.active_sessions() == 1, "servers hold the streaming session");
        generation.cancel();
        {
            std::lock_guard<std::mutex> guard(seen.lock);
            at_cancel = seen.ids.size();
        }
        check(at_cancel >= 3 && at_cancel < 1000, "cancelled mid-stream");
        check(status_of([&] { generation.wait(); }) == KWAAI_STATUS_CLOSED, "a cancelled generation throws CLOSED");
        check(drained(first, second), "cancelling frees the servers' sessions");
        std::lock_guard<std::mutex> guard(seen.lock);
        check(seen.ids.size() == at_cancel && seen.finished == 0, "no handler call after cancel");
    }

    check(status_of([&] { model.generate({}, greedy, [](uint32_t, const std::string &, bool) {}); }) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "an empty prompt throws");
    kwaai::GenerationOptions bad;
    bad.temperature = 0.0f;
    check(status_of([&] { model.generate_ids(prompt, bad); }) == KWAAI_STATUS_INVALID_ARGUMENT, "temperature 0 throws");
    check(status_of([&] { model.embed({100000}); }) == KWAAI_STATUS_INVALID_ARGUMENT, "an id outside the vocab throws");
    kwaai::ServerOptions empty;
    check(status_of([&] { kwaai::Server::start(host_a, empty); }) == KWAAI_STATUS_INVALID_ARGUMENT,
          "serving without a model directory throws");
    first.shutdown();
    check(status_of([&] { first.active_sessions(); }) == KWAAI_STATUS_CLOSED, "a stopped server throws CLOSED");
    host_b.shutdown();
    check(status_of([&] { kwaai::Model::load(host_b, dir); }) == KWAAI_STATUS_CLOSED, "a stopped node throws CLOSED");

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
