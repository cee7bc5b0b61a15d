// Start a node, join a swarm, stream a generation.
// Usage: generate MODEL_DIR INITIAL_PEER  (a multiaddr ending in /p2p/<peer id> of a swarm serving
// MODEL_DIR; examples/with_swarm.sh runs one on 127.0.0.1)
#include <iostream>

#include "kwaai.hpp"

int main(int argc, char **argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR INITIAL_PEER\n";
        return 2;
    }
    try {
        kwaai::NodeOptions options;
        options.initial_peers = {argv[2]};
        options.client_mode = true;
        kwaai::Node node = kwaai::Node::start(options);
        // The model's embeddings and head load here; its blocks are found on the swarm.
        kwaai::Model model = kwaai::Model::load(node, argv[1]);

        kwaai::GenerationOptions generation_options;
        generation_options.max_new_tokens = 12;
        int tokens = 0;
        std::cout << "the old river " << std::flush;
        // The handler runs on the generation's own thread; wait() returns once it ran for the last time.
        kwaai::Generation generation =
            model.generate_text("the old river", generation_options, [&](uint32_t, const std::string &text, bool finished) {
                if (finished) return;
                std::cout << text << std::flush;
                tokens++;
            });
        generation.wait();
        std::cout << "\n" << tokens << " tokens streamed\n";
        return tokens > 0 ? 0 : 1;
    } catch (const kwaai::Error &e) {
        std::cerr << "kwaai error " << e.status() << ": " << e.what() << "\n";
        return 1;
    }
}
