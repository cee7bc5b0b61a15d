// Start a node, join a swarm, stream a generation.
// Usage: GenerateKt MODEL_DIR INITIAL_PEER  (a multiaddr ending in /p2p/<peer id> of a swarm serving MODEL_DIR;
// examples/with_swarm.sh runs one on 127.0.0.1). `make test-kotlin` compiles it with the UniFFI sources.
import uniffi.kwaai.DistributedModel
import uniffi.kwaai.GenerateOptions
import uniffi.kwaai.Node
import uniffi.kwaai.NodeConfig
import uniffi.kwaai.TokenListener
import kotlin.system.exitProcess

/** Prints each token as it comes; runs on the generation's own thread. */
class PrintTokens : TokenListener {
    override fun onToken(id: UInt, text: String): Boolean {
        print(text)
        System.out.flush()
        return true
    }
}

fun main(args: Array<String>) {
    val (modelPath, initialPeer) = args
    val node = Node.start(NodeConfig(initialPeers = listOf(initialPeer), clientMode = true))
    // The model's embeddings and head load here; its blocks are found on the swarm.
    val model = DistributedModel.load(node, modelPath)
    print("the old river ")
    val ids = model.generate("the old river", GenerateOptions(maxNewTokens = 12u), PrintTokens()).wait()
    println("\n${ids.size} tokens streamed")
    node.shutdown()
    exitProcess(if (ids.isEmpty()) 1 else 0)
}
