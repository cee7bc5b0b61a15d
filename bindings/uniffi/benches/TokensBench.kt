// Per streamed token through the Kotlin binding (UniFFI + JNA): a replayed stream of 100,000 tokens
// (no model, no network) delivered to a TokenListener, as a generation is. `make bench-bindings` runs
// it beside the same stream iterated in Rust. Prints one line: median and best microseconds per token.
import uniffi.kwaai.GeneratedToken
import uniffi.kwaai.TokenListener
import uniffi.kwaai.replayTokens

/** Counts tokens; the clock starts at the first one, after the tokens crossed into the library. */
class CountTokens : TokenListener {
    @Volatile var count = 0
    @Volatile var first = 0L
    override fun onToken(id: UInt, text: String): Boolean {
        if (count == 0) first = System.nanoTime()
        count++
        return true
    }
}

fun main() {
    val tokens = 100_000
    val runs = 5
    val replayed = (0 until tokens).map { GeneratedToken(it.toUInt(), " w${it % 1000}") }
    val times = mutableListOf<Double>()
    for (run in 0..runs) {
        val listener = CountTokens()
        val ids = replayTokens(replayed, listener).wait()
        val elapsed = (System.nanoTime() - listener.first) / 1e3
        check(ids.size == tokens && listener.count == tokens)
        if (run > 0) times.add(elapsed / (tokens - 1)) // the first run warms up
    }
    times.sort()
    println("Kotlin TokenListener calls   : median %8.3f µs, best %8.3f µs".format(times[times.size / 2], times[0]))
}
