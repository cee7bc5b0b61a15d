// Serving and generation from Kotlin: two servers hold the halves of a model, a client streams a
// generation through a TokenListener, the ids match a second run from the same prompt, and
// stopping from the listener frees the servers' sessions.
// Usage: GenerateTestKt MODEL_DIR (a 4-block model, e.g. from `kwaainet demo --make-model`).
import uniffi.kwaai.DistributedModel
import uniffi.kwaai.GeneratedToken
import uniffi.kwaai.GenerateOptions
import uniffi.kwaai.KwaaiException
import uniffi.kwaai.Node
import uniffi.kwaai.NodeConfig
import uniffi.kwaai.ServeOptions
import uniffi.kwaai.Server
import uniffi.kwaai.TokenListener
import uniffi.kwaai.replayTokens
import java.util.Collections
import kotlin.system.exitProcess

var passedGen = 0
var failedGen = 0

fun checkGen(ok: Boolean, what: String) {
    if (ok) passedGen++ else failedGen++
    println((if (ok) "ok" else "FAIL") + " - " + what)
}

class Collect(private val stopAfter: Int = Int.MAX_VALUE) : TokenListener {
    val ids: MutableList<UInt> = Collections.synchronizedList(mutableListOf())
    val text = StringBuffer()
    override fun onToken(id: UInt, text: String): Boolean {
        ids.add(id)
        this.text.append(text)
        return ids.size < stopAfter
    }
}

fun main(args: Array<String>) {
    val modelPath = args[0]
    val bootstrap = Node.start(NodeConfig())
    val peers = bootstrap.listenAddrs()
    val hosts = listOf(Node.start(NodeConfig(initialPeers = peers)), Node.start(NodeConfig(initialPeers = peers)))
    val servers = listOf(
        Server.start(hosts[0], ServeOptions(modelPath = modelPath, startBlock = 0u, endBlock = 2u)),
        Server.start(hosts[1], ServeOptions(modelPath = modelPath, startBlock = 2u, endBlock = 4u)),
    )
    val client = Node.start(NodeConfig(initialPeers = peers, clientMode = true))
    val model = DistributedModel.load(client, modelPath)

    val options = GenerateOptions(maxNewTokens = 10u, stopTokens = listOf())
    val first = Collect()
    val ids = model.generate("the old river", options, first).wait()
    checkGen(ids.size == 10 && ids == first.ids.toList(), "10 tokens streamed to the listener and returned")
    checkGen(model.decode(ids).startsWith(first.text.toString().trim()), "the streamed text is the decoded ids")
    val again = Collect()
    checkGen(model.generate("the old river", options, again).wait() == ids, "greedy generation repeats exactly")

    val early = Collect(stopAfter = 3)
    val stopped = model.generate("the old river", GenerateOptions(maxNewTokens = 30u, stopTokens = listOf()), early)
    checkGen(stopped.wait().size == 3, "the listener stops the generation")
    var waited = 0
    while (servers.any { it.activeSessions() != 0u } && waited < 100) { Thread.sleep(50); waited++ }
    checkGen(servers.all { it.activeSessions() == 0u }, "stopping frees the servers' sessions")

    val prompt = model.encode("the old river")
    val kept = model.decode(prompt, skipSpecialTokens = false)
    checkGen(model.decode(prompt) == "the old river" && kept != "the old river" && kept.endsWith("the old river"),
        "decode leaves special tokens out unless asked to keep them")

    val replayed = (0u until 300u).map { GeneratedToken(it, " t$it") }
    val all = Collect()
    checkGen(replayTokens(replayed, all).wait() == replayed.map { it.id } && all.text.toString() == replayed.joinToString("") { it.text },
        "a replayed stream reaches the listener in order")
    checkGen(replayTokens(replayed, Collect(stopAfter = 2)).wait().size == 2, "the listener stops a replayed stream")

    try {
        Server.start(client, ServeOptions(modelPath = modelPath, startBlock = 3u, endBlock = 9u))
        checkGen(false, "blocks past the model refused")
    } catch (e: KwaaiException.InvalidArgument) {
        checkGen(true, "blocks past the model refused as InvalidArgument")
    }

    servers.forEach { it.shutdown() }
    (hosts + client + bootstrap).forEach { it.shutdown() }
    println("$passedGen passed, $failedGen failed")
    exitProcess(if (failedGen == 0) 0 else 1)
}
