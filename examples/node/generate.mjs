// Serve a model from one node and stream a generation through it from another, on 127.0.0.1.
// Usage: node examples/node/generate.mjs MODEL_DIR  (e.g. a model from `kwaainet demo --make-model DIR`)
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const { Node, Server, DistributedModel } = require('../../bindings/node/index.js')

const modelPath = process.argv[2]
const server = await Node.start()
const served = await Server.start(server, { modelPath, blockIndices: '0:4', throughput: 1 })
const client = await Node.start({ initialPeers: server.listenAddrs, clientMode: true })
const model = await DistributedModel.load(client, modelPath)

process.stdout.write('the old river ')
for await (const token of model.generate('the old river', { maxNewTokens: 12 })) {
  process.stdout.write(token.text)
}
process.stdout.write('\n')
await served.shutdown()
await client.shutdown()
await server.shutdown()
