// Start a node, join a swarm, stream a generation.
// Usage: node examples/node/generate.mjs MODEL_DIR INITIAL_PEER  (a multiaddr ending in /p2p/<peer id> of a
// swarm serving MODEL_DIR; examples/with_swarm.sh runs one on 127.0.0.1)
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const { Node, DistributedModel } = require('../../bindings/node/index.js')

const [modelPath, initialPeer] = process.argv.slice(2)
const node = await Node.start({ initialPeers: [initialPeer], clientMode: true })
// The model's embeddings and head load here; its blocks are found on the swarm.
const model = await DistributedModel.load(node, modelPath)

process.stdout.write('the old river ')
let tokens = 0
for await (const token of model.generate('the old river', { maxNewTokens: 12 })) {
  process.stdout.write(token.text)
  tokens += 1
}
process.stdout.write(`\n${tokens} tokens streamed\n`)
await node.shutdown()
process.exitCode = tokens > 0 ? 0 : 1
