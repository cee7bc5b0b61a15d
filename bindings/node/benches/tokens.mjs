// Per streamed token through the Node binding: a replayed stream of 100,000 tokens (no model, no
// network) iterated with `for await`, as a generation is. `make bench-bindings` runs it beside the
// same stream iterated in Rust. Prints one line: median and best microseconds per token.
import { createRequire } from 'node:module'
import assert from 'node:assert/strict'
const require = createRequire(import.meta.url)
const { TokenStream } = require('../index.js')

const TOKENS = 100_000
const RUNS = 5
const tokens = Array.from({ length: TOKENS }, (_, id) => ({ id, text: ` w${id % 1000}` }))
const times = []
for (let run = 0; run <= RUNS; run++) {
  const stream = TokenStream.replay(tokens)
  const start = process.hrtime.bigint()
  let n = 0
  for await (const _ of stream) n++
  const elapsed = Number(process.hrtime.bigint() - start) / 1e3
  assert.equal(n, TOKENS)
  if (run) times.push(elapsed / TOKENS) // the first run warms up
}
times.sort((a, b) => a - b)
console.log(`Node for-await iteration     : median ${times[times.length >> 1].toFixed(3).padStart(8)} µs, best ${times[0].toFixed(3).padStart(8)} µs`)
