// The C++ wrapper (include/kwaai.hpp) over two nodes on loopback: a DHT value stored through one
// is read through the other, a tensor pushed by one reaches the other's handler, log lines reach
// a log handler, and misuse throws kwaai::Error with the right status.
// Prints one line per check and a final "N passed, N failed" line.
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

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

int main() {
    check(kwaai::abi_matches(), "library ABI matches the header");
    std::atomic<int> log_lines{0};
    kwaai::set_log_handler([&](kwaai_log_level, const std::string &, const std::string &) { log_lines++; });
    kwaai::set_log_level("debug");

    kwaai::Node a = kwaai::Node::start({});
    kwaai::NodeOptions options;
    options.initial_peers = a.listen_addrs();
    kwaai::Node b = kwaai::Node::start(options);
    check(a.peer_id() != b.peer_id(), "two nodes with their own peer IDs");

    const std::vector<uint8_t> key = {0xa3, 'c', 'p', 'p'};        // "cpp"
    const std::vector<uint8_t> value = {0x92, 0x01, 0xa1, 'x'};    // [1, "x"]
    double expiration = double(std::time(nullptr)) + 60;
    check(a.dht_store(key, value, expiration), "DHT store through the first node");
    auto found = b.dht_get(key);
    check(found && !found->is_dictionary && found->msgpack == value && found->expiration == expiration,
          "the second node reads it back");
    check(!b.dht_get({0xa6, 'a', 'b', 's', 'e', 'n', 't'}, false), "an absent key is nullopt");

    std::mutex lock;
    std::condition_variable arrived;
    std::string sender, name;
    std::vector<float> values;
    b.set_tensor_handler([&](const std::string &peer, const std::string &n, kwaai::Tensor t) {
        std::lock_guard<std::mutex> guard(lock);
        sender = peer;
        name = n;
        values = t.floats();
        arrived.notify_all();
        return n != "refuse-me";
    });
    auto tensor = kwaai::Tensor::from_floats({2, 2}, {1.5f, -2.0f, 0.25f, 8.0f});
    check(tensor.shape() == std::vector<size_t>({2, 2}) && tensor.dtype() == KWAAI_DTYPE_F32, "tensor shape and dtype");
    a.push_tensor(b.peer_id(), "weights", tensor);
    {
        std::unique_lock<std::mutex> guard(lock);
        arrived.wait_for(guard, std::chrono::seconds(20), [&] { return !values.empty(); });
        check(sender == a.peer_id() && name == "weights", "handler saw the sender and the name");
        check(values == std::vector<float>({1.5f, -2.0f, 0.25f, 8.0f}), "handler got the values");
    }
    check(status_of([&] { a.push_tensor(b.peer_id(), "refuse-me", tensor); }) == KWAAI_STATUS_PROTOCOL,
          "a refusing handler fails the push");
    b.clear_tensor_handler();
    check(status_of([&] { a.push_tensor(b.peer_id(), "late", tensor); }) == KWAAI_STATUS_PROTOCOL,
          "no handler, no push");

    check(status_of([] { kwaai::Tensor(KWAAI_DTYPE_F32, {3}, nullptr, 12); }) == KWAAI_STATUS_INVALID_ARGUMENT,
          "NULL data refused");
    check(status_of([] { kwaai::Tensor(KWAAI_DTYPE_I64, {2}, "x", 1); }) ==
              KWAAI_STATUS_INVALID_ARGUMENT, "wrong byte count refused");
    check(status_of([&] { a.connect("not a multiaddr"); }) == KWAAI_STATUS_INVALID_ARGUMENT, "bad multiaddr refused");
    check(status_of([] { kwaai::set_log_level("[nope"); }) == KWAAI_STATUS_INVALID_ARGUMENT, "bad log filter refused");
    a.shutdown();
    check(status_of([&] { a.dht_store(key, value, expiration); }) == KWAAI_STATUS_CLOSED, "a stopped node says closed");

    check(log_lines > 0, "log lines reached the handler");
    kwaai::set_log_handler(nullptr);
    kwaai::set_log_level("off");
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
