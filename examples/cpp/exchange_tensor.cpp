// Two nodes on loopback: one pushes a tensor, the other prints what it receives.
#include <chrono>
#include <future>
#include <iostream>

#include "kwaai.hpp"

int main() {
    try {
        kwaai::Node receiver = kwaai::Node::start({});
        kwaai::NodeOptions options;
        options.initial_peers = receiver.listen_addrs();
        kwaai::Node sender = kwaai::Node::start(options);
        std::cout << "receiver " << receiver.peer_id() << " at " << receiver.listen_addrs().at(0) << "\n";

        std::promise<std::vector<float>> got;
        receiver.set_tensor_handler([&](const std::string &peer, const std::string &name, kwaai::Tensor t) {
            std::cout << "received " << name << " from " << peer << "\n";
            got.set_value(t.floats());
            return true;
        });
        sender.push_tensor(receiver.peer_id(), "greeting", kwaai::Tensor::from_floats({3}, {1.0f, 2.0f, 3.0f}));
        auto values = got.get_future().get();
        std::cout << "values:";
        for (float v : values) std::cout << " " << v;
        std::cout << "\n";
    } catch (const kwaai::Error &e) {
        std::cerr << "kwaai error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
