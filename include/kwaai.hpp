/* kwaai for C++17: RAII handles over the C ABI in kwaai.h, errors as kwaai::Error exceptions.
 *
 *   kwaai::Node node = kwaai::Node::start({});
 *   std::cout << node.peer_id() << "\n";
 *
 * Every handle frees itself; objects are movable, not copyable. Callbacks given to the library run
 * on its threads (see kwaai.h) and must not throw: an exception escaping one terminates the process. */
#ifndef KWAAI_HPP
#define KWAAI_HPP

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kwaai.h"

namespace kwaai {

/// A failed call: the status code and the library's message.
class Error : public std::runtime_error {
public:
    Error(kwaai_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    /// The status the C call returned (never KWAAI_STATUS_OK).
    kwaai_status status() const noexcept { return status_; }

private:
    kwaai_status status_;
};

namespace detail {
/// Throws kwaai::Error for any status but OK.
inline void check(kwaai_status status) {
    if (status == KWAAI_STATUS_OK) return;
    const char *message = kwaai_last_error_message();
    throw Error(status, std::string(kwaai_status_name(status)) + ": " + (message ? message : "unknown error"));
}

/// Takes ownership of a string the library returned.
inline std::string take(char *text) {
    std::string out(text ? text : "");
    kwaai_string_free(text);
    return out;
}
}  // namespace detail

/// A tensor owned by the library.
class Tensor {
public:
    /// Copies `bytes` (row-major, little-endian elements of `dtype`) into a new tensor.
    Tensor(kwaai_dtype dtype, const std::vector<size_t> &shape, const void *bytes, size_t len) {
        detail::check(kwaai_tensor_new(dtype, shape.data(), shape.size(), bytes, len, &handle_));
    }
    /// A float32 tensor of `shape` holding `values`.
    static Tensor from_floats(const std::vector<size_t> &shape, const std::vector<float> &values) {
        return Tensor(KWAAI_DTYPE_F32, shape, values.data(), values.size() * sizeof(float));
    }
    /// Adopts a handle the library gave to a callback.
    static Tensor adopt(kwaai_tensor *handle) { return Tensor(handle); }

    Tensor(Tensor &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Tensor &operator=(Tensor &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Tensor(const Tensor &) = delete;
    Tensor &operator=(const Tensor &) = delete;
    ~Tensor() { kwaai_tensor_free(handle_); }

    kwaai_dtype dtype() const {
        kwaai_dtype out;
        detail::check(kwaai_tensor_dtype(handle_, &out));
        return out;
    }
    std::vector<size_t> shape() const {
        size_t ndim = 0;
        detail::check(kwaai_tensor_ndim(handle_, &ndim));
        std::vector<size_t> out(ndim);
        for (size_t i = 0; i < ndim; i++) detail::check(kwaai_tensor_dim(handle_, i, &out[i]));
        return out;
    }
    /// The elements' bytes, valid while this tensor lives.
    std::pair<const void *, size_t> bytes() const {
        const void *data = nullptr;
        size_t len = 0;
        detail::check(kwaai_tensor_data(handle_, &data, &len));
        return {data, len};
    }
    /// The elements of a float32 tensor (Error for other dtypes).
    std::vector<float> floats() const {
        if (dtype() != KWAAI_DTYPE_F32) throw Error(KWAAI_STATUS_INVALID_ARGUMENT, "not a float32 tensor");
        auto [data, len] = bytes();
        const float *first = static_cast<const float *>(data);
        return std::vector<float>(first, first + len / sizeof(float));
    }
    kwaai_tensor *handle() const noexcept { return handle_; }

private:
    explicit Tensor(kwaai_tensor *handle) : handle_(handle) {}
    kwaai_tensor *handle_ = nullptr;
};

/// How a node starts (every field optional).
struct NodeOptions {
    /// Multiaddrs to listen on; empty means `/ip4/127.0.0.1/tcp/0`.
    std::vector<std::string> listen_addrs;
    /// Identity file (hivemind's format), created if missing; empty means a fresh identity.
    std::string identity_path;
    /// Peers to join the swarm through (multiaddrs ending in `/p2p/<peer id>`).
    std::vector<std::string> initial_peers;
    /// Ask the DHT without serving it.
    bool client_mode = false;
};

/// A DHT value found by Node::dht_get: msgpack bytes as in kwaai.h.
struct DhtValue {
    bool is_dictionary;
    double expiration;
    std::vector<uint8_t> msgpack;
};

/// A tensor pushed to this node: (sender's peer ID, name, tensor) -> accept?
using TensorHandler = std::function<bool(const std::string &, const std::string &, Tensor)>;

/// A running node; shut down and freed when destroyed.
class Node {
public:
    static Node start(const NodeOptions &options) {
        std::unique_ptr<kwaai_config, void (*)(kwaai_config *)> config(nullptr, kwaai_config_free);
        kwaai_config *raw = nullptr;
        detail::check(kwaai_config_new(&raw));
        config.reset(raw);
        for (const auto &addr : options.listen_addrs) detail::check(kwaai_config_add_listen_addr(raw, addr.c_str()));
        if (!options.identity_path.empty())
            detail::check(kwaai_config_set_identity_path(raw, options.identity_path.c_str()));
        for (const auto &peer : options.initial_peers) detail::check(kwaai_config_add_initial_peer(raw, peer.c_str()));
        detail::check(kwaai_config_set_client_mode(raw, options.client_mode));
        kwaai_node *node = nullptr;
        detail::check(kwaai_node_start(raw, &node));
        return Node(node);
    }

    Node(Node &&other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), tensor_handler_(std::move(other.tensor_handler_)) {}
    Node &operator=(Node &&other) noexcept {
        std::swap(handle_, other.handle_);
        std::swap(tensor_handler_, other.tensor_handler_);
        return *this;
    }
    Node(const Node &) = delete;
    Node &operator=(const Node &) = delete;
    /// Frees the node; its tensor handler is never called afterwards.
    ~Node() { kwaai_node_free(handle_); }

    std::string peer_id() const {
        char *out = nullptr;
        detail::check(kwaai_node_peer_id(handle_, &out));
        return detail::take(out);
    }
    std::vector<std::string> listen_addrs() const {
        size_t count = 0;
        detail::check(kwaai_node_listen_addr_count(handle_, &count));
        std::vector<std::string> out;
        for (size_t i = 0; i < count; i++) {
            char *addr = nullptr;
            detail::check(kwaai_node_listen_addr(handle_, i, &addr));
            out.push_back(detail::take(addr));
        }
        return out;
    }
    void connect(const std::string &addr, uint64_t timeout_ms = 20000) {
        detail::check(kwaai_node_connect(handle_, addr.c_str(), timeout_ms));
    }

    /// Stores msgpack `value` under msgpack `key` until `expiration` (Unix seconds); true when a
    /// replica accepted it.
    bool dht_store(const std::vector<uint8_t> &key, const std::vector<uint8_t> &value, double expiration) {
        bool stored = false;
        detail::check(kwaai_node_dht_store(handle_, key.data(), key.size(), nullptr, 0, value.data(), value.size(),
                                           expiration, &stored));
        return stored;
    }
    /// Reads msgpack `key`; nullopt when nothing unexpired is stored.
    std::optional<DhtValue> dht_get(const std::vector<uint8_t> &key, bool latest = true) {
        kwaai_dht_result result;
        detail::check(kwaai_node_dht_get(handle_, key.data(), key.size(), latest, &result));
        std::optional<DhtValue> out;
        if (result.found)
            out = DhtValue{result.is_dictionary, result.expiration,
                           std::vector<uint8_t>(result.value, result.value + result.value_len)};
        kwaai_dht_result_free(&result);
        return out;
    }

    void push_tensor(const std::string &peer_id, const std::string &name, const Tensor &tensor,
                     uint64_t timeout_ms = 20000) {
        detail::check(kwaai_node_push_tensor(handle_, peer_id.c_str(), name.c_str(), tensor.handle(), timeout_ms));
    }
    /// Calls `handler` (on a library thread) for every tensor pushed to this node.
    void set_tensor_handler(TensorHandler handler) {
        auto owned = std::make_unique<TensorHandler>(std::move(handler));
        detail::check(kwaai_node_set_tensor_handler(handle_, &Node::on_tensor, owned.get()));
        tensor_handler_ = std::move(owned);  // the old one is no longer called
    }
    void clear_tensor_handler() {
        detail::check(kwaai_node_clear_tensor_handler(handle_));
        tensor_handler_.reset();
    }
    void shutdown() { detail::check(kwaai_node_shutdown(handle_)); }

    kwaai_node *handle() const noexcept { return handle_; }

private:
    explicit Node(kwaai_node *handle) : handle_(handle) {}
    static bool on_tensor(void *user_data, const char *peer, const char *name, kwaai_tensor *tensor) {
        return (*static_cast<TensorHandler *>(user_data))(peer, name, Tensor::adopt(tensor));
    }
    kwaai_node *handle_ = nullptr;
    std::unique_ptr<TensorHandler> tensor_handler_;
};

/// Which log lines the library emits (`info`, `warn,kwaai_core::dht=debug`, `off`...).
inline void set_log_level(const std::string &filter) { detail::check(kwaai_set_log_level(filter.c_str())); }

/// A log line: (level, module, message).
using LogHandler = std::function<void(kwaai_log_level, const std::string &, const std::string &)>;

/// Sends log lines to `handler` (on library threads); an empty handler sends them to stderr again.
inline void set_log_handler(LogHandler handler) {
    static std::unique_ptr<LogHandler> current;
    if (!handler) {
        detail::check(kwaai_set_log_callback(nullptr, nullptr));
        current.reset();
        return;
    }
    auto owned = std::make_unique<LogHandler>(std::move(handler));
    detail::check(kwaai_set_log_callback(
        [](void *user_data, kwaai_log_level level, const char *target, const char *message) {
            (*static_cast<LogHandler *>(user_data))(level, target, message);
        },
        owned.get()));
    current = std::move(owned);
}

/// The loaded library's version, and whether its ABI matches this header's.
inline std::string version() { return kwaai_version(); }
inline bool abi_matches() { return kwaai_abi_version() == KWAAI_ABI_VERSION; }

}  // namespace kwaai

#endif
