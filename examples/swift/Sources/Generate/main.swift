// Start a node, join a swarm, stream a generation.
// Usage: generate MODEL_DIR INITIAL_PEER  (a multiaddr ending in /p2p/<peer id> of a swarm serving MODEL_DIR;
// examples/with_swarm.sh runs one on 127.0.0.1).
import Foundation
import Kwaai

/// Prints each token as it comes; runs on the generation's own thread.
final class PrintTokens: TokenListener {
    func onToken(id: UInt32, text: String) -> Bool {
        print(text, terminator: "")
        fflush(stdout)
        return true
    }
}

let args = CommandLine.arguments
guard args.count == 3 else {
    FileHandle.standardError.write("usage: generate MODEL_DIR INITIAL_PEER\n".data(using: .utf8)!)
    exit(2)
}
do {
    let node = try Node.start(config: NodeConfig(initialPeers: [args[2]], clientMode: true))
    // The model's embeddings and head load here; its blocks are found on the swarm.
    let model = try DistributedModel.load(node: node, path: args[1])
    print("the old river ", terminator: "")
    let ids = try model.generate(prompt: "the old river", options: GenerateOptions(maxNewTokens: 12), listener: PrintTokens()).wait()
    print("\n\(ids.count) tokens streamed")
    node.shutdown()
    exit(ids.isEmpty ? 1 : 0)
} catch {
    FileHandle.standardError.write("kwaai error: \(error)\n".data(using: .utf8)!)
    exit(1)
}
