/* kwaai for C++17: RAII handles over the C ABI in kwaai.h, errors as kwaai::Error exceptions.
 *
 *   kwaai::Node node = kwaai::Node::start({});
 *   std::cout << node.peer_id() << "\n";
 *   kwaai::Model model = kwaai::Model::load(node, "path/to/model");
 *   auto generation = model.generate_text("Hello", {}, [](uint32_t, const std::string &text, bool) {
 *       std::cout << text;
 *   });
 *   generation.wait();
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
    /// Pushes `tensor` compressed as `compression` says (`k`: entries sent by KWAAI_COMPRESSION_TOP_K).
    void push_tensor(const std::string &peer_id, const std::string &name, const Tensor &tensor,
                     kwaai_compression compression, size_t k = 0, uint64_t timeout_ms = 20000) {
        detail::check(kwaai_node_push_tensor_compressed(handle_, peer_id.c_str(), name.c_str(), tensor.handle(),
                                                        compression, k, timeout_ms));
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

/// What a server serves and how (kwaai_server_config_*); zero or empty fields keep Petals' defaults.
struct ServerOptions {
    /// The Hugging Face model directory (config.json and safetensors).
    std::string model_dir;
    /// Blocks `first..second` to serve; or set num_blocks.
    std::optional<std::pair<uint32_t, uint32_t>> block_range;
    uint32_t num_blocks = 0;
    /// The prefix the blocks are announced under.
    std::string dht_prefix;
    /// Requests per second announced.
    double throughput = 1.0;
    /// F32, F16 or BF16; unset: the checkpoint's.
    std::optional<kwaai_dtype> torch_dtype;
    size_t max_sessions = 0;
    uint64_t attn_cache_tokens = 0;
    size_t inference_max_length = 0;
    std::string public_name;
};

/// A span of blocks served from a node; shut down and freed when destroyed (before its node).
class Server {
public:
    static Server start(Node &node, const ServerOptions &options) {
        std::unique_ptr<kwaai_server_config, void (*)(kwaai_server_config *)> config(nullptr, kwaai_server_config_free);
        kwaai_server_config *raw = nullptr;
        detail::check(kwaai_server_config_new(&raw));
        config.reset(raw);
        detail::check(kwaai_server_config_set_model_dir(raw, options.model_dir.c_str()));
        if (options.block_range)
            detail::check(kwaai_server_config_set_block_range(raw, options.block_range->first, options.block_range->second));
        if (options.num_blocks) detail::check(kwaai_server_config_set_num_blocks(raw, options.num_blocks));
        if (!options.dht_prefix.empty()) detail::check(kwaai_server_config_set_dht_prefix(raw, options.dht_prefix.c_str()));
        detail::check(kwaai_server_config_set_throughput(raw, options.throughput));
        if (options.torch_dtype) detail::check(kwaai_server_config_set_torch_dtype(raw, *options.torch_dtype));
        if (options.max_sessions) detail::check(kwaai_server_config_set_max_sessions(raw, options.max_sessions));
        if (options.attn_cache_tokens)
            detail::check(kwaai_server_config_set_attn_cache_tokens(raw, options.attn_cache_tokens));
        if (options.inference_max_length)
            detail::check(kwaai_server_config_set_inference_max_length(raw, options.inference_max_length));
        if (!options.public_name.empty())
            detail::check(kwaai_server_config_set_public_name(raw, options.public_name.c_str()));
        kwaai_server *server = nullptr;
        detail::check(kwaai_node_serve(node.handle(), raw, &server));
        return Server(server);
    }

    Server(Server &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Server &operator=(Server &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Server(const Server &) = delete;
    Server &operator=(const Server &) = delete;
    ~Server() { kwaai_server_free(handle_); }

    /// The served blocks, `first..second`.
    std::pair<uint32_t, uint32_t> span() const {
        uint32_t start = 0, end = 0;
        detail::check(kwaai_server_span(handle_, &start, &end));
        return {start, end};
    }
    std::string dht_prefix() const {
        char *out = nullptr;
        detail::check(kwaai_server_dht_prefix(handle_, &out));
        return detail::take(out);
    }
    size_t active_sessions() const {
        size_t out = 0;
        detail::check(kwaai_server_active_sessions(handle_, &out));
        return out;
    }
    uint64_t cache_tokens_left() const {
        uint64_t out = 0;
        detail::check(kwaai_server_cache_tokens_left(handle_, &out));
        return out;
    }
    /// Announces OFFLINE and stops serving; later calls throw Error(KWAAI_STATUS_CLOSED).
    void shutdown() { detail::check(kwaai_server_shutdown(handle_)); }
    kwaai_server *handle() const noexcept { return handle_; }

private:
    explicit Server(kwaai_server *handle) : handle_(handle) {}
    kwaai_server *handle_ = nullptr;
};

/// How tokens are generated (kwaai_generation_config_*).
struct GenerationOptions {
    size_t max_new_tokens = 32;
    size_t min_new_tokens = 0;
    bool do_sample = false;
    float temperature = 1.0f;
    size_t top_k = 0;
    float top_p = 1.0f;
    float repetition_penalty = 1.0f;
    uint64_t seed = 0;
    std::vector<uint32_t> stop_tokens;
};

namespace detail {
using GenerationConfig = std::unique_ptr<kwaai_generation_config, void (*)(kwaai_generation_config *)>;

inline GenerationConfig generation_config(const GenerationOptions &o) {
    kwaai_generation_config *raw = nullptr;
    check(kwaai_generation_config_new(&raw));
    GenerationConfig config(raw, kwaai_generation_config_free);
    check(kwaai_generation_config_set_max_new_tokens(raw, o.max_new_tokens));
    check(kwaai_generation_config_set_min_new_tokens(raw, o.min_new_tokens));
    check(kwaai_generation_config_set_do_sample(raw, o.do_sample));
    check(kwaai_generation_config_set_temperature(raw, o.temperature));
    check(kwaai_generation_config_set_top_k(raw, o.top_k));
    check(kwaai_generation_config_set_top_p(raw, o.top_p));
    check(kwaai_generation_config_set_repetition_penalty(raw, o.repetition_penalty));
    check(kwaai_generation_config_set_seed(raw, o.seed));
    check(kwaai_generation_config_set_stop_tokens(raw, o.stop_tokens.data(), o.stop_tokens.size()));
    return config;
}
}  // namespace detail

/// One streamed token: (id, the text it adds, finished). The last call has finished == true and
/// id KWAAI_NO_TOKEN. Runs on the generation's own library thread; must not throw.
using TokenHandler = std::function<void(uint32_t, const std::string &, bool)>;

/// A running generation; cancelled (if still running) and freed when destroyed. Once cancel()
/// returns or the destructor ran, the handler is never called again.
class Generation {
public:
    Generation(Generation &&other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), handler_(std::move(other.handler_)) {}
    Generation &operator=(Generation &&other) noexcept {
        std::swap(handle_, other.handle_);
        std::swap(handler_, other.handler_);
        return *this;
    }
    Generation(const Generation &) = delete;
    Generation &operator=(const Generation &) = delete;
    ~Generation() { kwaai_generation_free(handle_); }

    /// Stops the generation and closes the servers' sessions.
    void cancel() { detail::check(kwaai_generation_cancel(handle_)); }
    /// Blocks until it is over; throws Error (KWAAI_STATUS_CLOSED after cancel()) unless every token came.
    void wait() { detail::check(kwaai_generation_wait(handle_)); }
    kwaai_generation *handle() const noexcept { return handle_; }

private:
    friend class Model;
    Generation() = default;
    static void on_token(void *user_data, uint32_t token, const char *piece, bool finished) {
        (*static_cast<TokenHandler *>(user_data))(token, piece ? piece : "", finished);
    }
    kwaai_generation *handle_ = nullptr;
    std::unique_ptr<TokenHandler> handler_;
};

/// A step-by-step inference session; closed and freed when destroyed.
class Session {
public:
    Session(Session &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Session &operator=(Session &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;
    ~Session() { kwaai_session_free(handle_); }

    /// Hidden states [batch, tokens, hidden] through every block.
    Tensor step(const Tensor &hidden) {
        kwaai_tensor *out = nullptr;
        detail::check(kwaai_session_step(handle_, hidden.handle(), &out));
        return Tensor::adopt(out);
    }
    size_t position() const {
        size_t out = 0;
        detail::check(kwaai_session_position(handle_, &out));
        return out;
    }
    void close() { detail::check(kwaai_session_close(handle_)); }

private:
    friend class Model;
    explicit Session(kwaai_session *handle) : handle_(handle) {}
    kwaai_session *handle_ = nullptr;
};

/// A model whose blocks run on the swarm; freed when destroyed (before its node).
class Model {
public:
    /// Loads `dir`'s local ends; an empty `dht_prefix` derives it from the directory's name.
    static Model load(Node &node, const std::string &dir, const std::string &dht_prefix = "") {
        kwaai_model *model = nullptr;
        detail::check(kwaai_model_load(node.handle(), dir.c_str(), dht_prefix.empty() ? nullptr : dht_prefix.c_str(),
                                       &model));
        return Model(model);
    }
    Model(Model &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Model &operator=(Model &&other) noexcept {
        std::swap(handle_, other.handle_);
        return *this;
    }
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;
    ~Model() { kwaai_model_free(handle_); }

    size_t hidden_size() const {
        size_t out = 0;
        detail::check(kwaai_model_hidden_size(handle_, &out));
        return out;
    }
    size_t vocab_size() const {
        size_t out = 0;
        detail::check(kwaai_model_vocab_size(handle_, &out));
        return out;
    }
    std::vector<uint32_t> encode(const std::string &text) const {
        uint32_t *ids = nullptr;
        size_t len = 0;
        detail::check(kwaai_model_encode(handle_, text.c_str(), &ids, &len));
        std::vector<uint32_t> out(ids, ids + len);
        kwaai_token_ids_free(ids, len);
        return out;
    }
    std::string decode(const std::vector<uint32_t> &ids) const {
        char *out = nullptr;
        detail::check(kwaai_model_decode(handle_, ids.data(), ids.size(), &out));
        return detail::take(out);
    }

    /// Streams the tokens generated after `ids` to `handler`.
    Generation generate(const std::vector<uint32_t> &ids, const GenerationOptions &options, TokenHandler handler) {
        auto config = detail::generation_config(options);
        Generation generation;
        generation.handler_ = std::make_unique<TokenHandler>(std::move(handler));
        detail::check(kwaai_model_generate(handle_, ids.data(), ids.size(), config.get(), &Generation::on_token,
                                           generation.handler_.get(), &generation.handle_));
        return generation;
    }
    /// Streams the tokens generated after `prompt` text to `handler`.
    Generation generate_text(const std::string &prompt, const GenerationOptions &options, TokenHandler handler) {
        auto config = detail::generation_config(options);
        Generation generation;
        generation.handler_ = std::make_unique<TokenHandler>(std::move(handler));
        detail::check(kwaai_model_generate_text(handle_, prompt.c_str(), config.get(), &Generation::on_token,
                                                generation.handler_.get(), &generation.handle_));
        return generation;
    }
    /// Generates after `ids`, blocking until done.
    std::vector<uint32_t> generate_ids(const std::vector<uint32_t> &ids, const GenerationOptions &options) {
        auto config = detail::generation_config(options);
        std::vector<uint32_t> out(options.max_new_tokens);
        size_t len = 0;
        detail::check(
            kwaai_model_generate_ids(handle_, ids.data(), ids.size(), config.get(), out.data(), out.size(), &len));
        out.resize(len);
        return out;
    }

    Session inference_session(size_t max_length) {
        kwaai_session *session = nullptr;
        detail::check(kwaai_model_inference_session(handle_, max_length, &session));
        return Session(session);
    }
    /// Float32 hidden states [1, ids, hidden].
    Tensor embed(const std::vector<uint32_t> &ids) const {
        kwaai_tensor *out = nullptr;
        detail::check(kwaai_model_embed(handle_, ids.data(), ids.size(), &out));
        return Tensor::adopt(out);
    }
    /// Float32 logits [batch, tokens, vocab] of the last block's output.
    Tensor logits(const Tensor &hidden) const {
        kwaai_tensor *out = nullptr;
        detail::check(kwaai_model_logits(handle_, hidden.handle(), &out));
        return Tensor::adopt(out);
    }
    kwaai_model *handle() const noexcept { return handle_; }

private:
    explicit Model(kwaai_model *handle) : handle_(handle) {}
    kwaai_model *handle_ = nullptr;
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
