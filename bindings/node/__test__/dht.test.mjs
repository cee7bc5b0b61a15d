// The DHT from Node.js: values stored on one node are read on the others; subkeys merge.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Node } = require('../index.js')

let nodes = []
before(async () => {
  const first = await Node.start()
  const peers = [first.listenAddrs[0]]
  nodes = [first, await Node.start({ initialPeers: peers }), await Node.start({ initialPeers: peers })]
})
after(async () => {
  for (const node of nodes) await node.shutdown()
})

test('a value stored on one node is read on every node', async () => {
  const expiration = Date.now() / 1000 + 60
  const value = { name: 'llama', layers: [0, 1, 2], blob: Buffer.from([0, 1, 255]), ratio: 0.5, ok: true, none: null }
  assert.equal(await nodes[0].dhtStore('model-info', value, expiration), true)
  for (const node of nodes) {
    const found = await node.dhtGet('model-info', true)
    assert.deepEqual(found, { value, expiration })
  }
  assert.equal(await nodes[1].dhtGet('absent'), null)
})

test('subkeys from different nodes merge into entries', async () => {
  const expiration = Date.now() / 1000 + 60
  for (const [i, node] of nodes.entries()) {
    assert.equal(await node.dhtStore('block.0', i, expiration, node.peerId), true)
  }
  const found = await nodes[2].dhtGet('block.0', true)
  const bySubkey = Object.fromEntries(found.entries.map((e) => [e.subkey, e.value]))
  assert.deepEqual(bySubkey, Object.fromEntries(nodes.map((n, i) => [n.peerId, i])))
})

test('storeMany and getMany', async () => {
  const expiration = Date.now() / 1000 + 60
  const items = [0, 1, 2].map((i) => ({ key: `k${i}`, value: i * 10, expiration }))
  assert.deepEqual(await nodes[1].dhtStoreMany(items), [true, true, true])
  const found = await nodes[2].dhtGetMany(['k0', 'k1', 'k2', 'nope'])
  assert.deepEqual(found.map((f) => f && f.value), [0, 10, 20, null])
})

test('unsupported and oversized values are refused', async () => {
  assert.throws(() => nodes[0].dhtStore('k', () => 1, Date.now() / 1000 + 60), /cannot store a Function/)
  await assert.rejects(nodes[0].dhtStore('k', Buffer.alloc(2 << 20), Date.now() / 1000 + 60), { code: 'invalid_argument' })
})
