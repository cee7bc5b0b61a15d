// Start a node, print its peer ID and multiaddrs, stop it.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Node } = require('../../bindings/node/index.js')

const node = await Node.start({ listenAddrs: ['/ip4/127.0.0.1/tcp/0'] })
console.log('peer id:', node.peerId)
for (const addr of node.listenAddrs) console.log('listening on:', addr)
await node.shutdown()
