// The Kotlin bindings on the JVM: two nodes on loopback, a DHT value stored through one is read
// through the other, and errors arrive as KwaaiException subclasses per kind.
// Prints one line per check and a final "N passed, N failed" line; exits 1 on any failure.
import uniffi.kwaai.KwaaiException
import uniffi.kwaai.Node
import uniffi.kwaai.NodeConfig
import kotlin.system.exitProcess

var passed = 0
var failed = 0

fun check(ok: Boolean, what: String) {
    if (ok) passed++ else failed++
    println((if (ok) "ok" else "FAIL") + " - " + what)
}

fun main() {
    val first = Node.start(NodeConfig())
    val second = Node.start(NodeConfig(initialPeers = first.listenAddrs()))
    check(first.peerId() != second.peerId(), "two nodes with their own peer IDs")
    check(second.listenAddrs()[0].endsWith("/p2p/" + second.peerId()), "listen addrs end with the peer ID")

    // msgpack: "kotlin" -> [7, "x"]
    val key = byteArrayOf(0xa6.toByte()) + "kotlin".toByteArray()
    val value = byteArrayOf(0x92.toByte(), 0x07, 0xa1.toByte(), 'x'.code.toByte())
    val expiration = System.currentTimeMillis() / 1000.0 + 60
    check(first.dhtStore(key, value, expiration), "DHT store through the first node")
    val found = second.dhtGet(key)
    check(found != null && found.value.contentEquals(value) && found.expiration == expiration && !found.isDictionary,
        "the second node reads the same msgpack and expiration")
    val subkey = byteArrayOf(0xa1.toByte(), 's'.code.toByte())
    val dictKey = byteArrayOf(0xa4.toByte()) + "dict".toByteArray()
    check(second.dhtStore(dictKey, byteArrayOf(0x01), expiration, subkey), "store under a subkey")
    check(first.dhtGet(dictKey)?.isDictionary == true, "a subkey makes a dictionary")
    check(second.dhtGet(byteArrayOf(0xa1.toByte(), 'z'.code.toByte()), latest = false) == null, "absent key is null")

    try {
        second.dhtStore(byteArrayOf(0x92.toByte(), 0x01), value, expiration)
        check(false, "bad msgpack refused")
    } catch (e: KwaaiException.InvalidArgument) {
        check(e.message!!.contains("msgpack"), "bad msgpack refused as InvalidArgument")
    }
    try {
        Node.start(NodeConfig(listenAddrs = listOf("not a multiaddr")))
        check(false, "bad listen addr refused")
    } catch (e: KwaaiException.InvalidArgument) {
        check(true, "bad listen addr refused as InvalidArgument")
    }
    first.shutdown()
    try {
        first.dhtGet(key)
        check(false, "a stopped node refuses calls")
    } catch (e: KwaaiException.Closed) {
        check(true, "a stopped node refuses calls as Closed")
    }
    second.shutdown()
    check(!second.isRunning(), "shutdown stops the node")

    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
