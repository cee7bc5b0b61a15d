// Serving and generation from Node.js: two servers each hold half of a tiny model, a client
// model streams tokens with `for await`, breaking out frees the servers' sessions, and bad
// options reject with their kind as `code`.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Node, Server, DistributedModel, TokenStream } = require('../index.js')

const python = process.env.KWAAI_REFERENCE_PYTHON ?? `${process.env.HOME}/.cache/kwaai/reference-venv/bin/python`
const shared = process.env.KWAAI_SHARED ?? join(import.meta.dirname, '../../../../shared')
let modelPath, nodes, servers, model

before(async () => {
  modelPath = join(mkdtempSync(join(tmpdir(), 'kwaai-node-')), 'tiny')
  execFileSync(python, [join(shared, 'reference/make_tiny_model.py'), modelPath, '--family', 'llama',
    '--layers', '4', '--hidden', '64'])
  const bootstrap = await Node.start()
  const peers = bootstrap.listenAddrs
  const hosts = [await Node.start({ initialPeers: peers }), await Node.start({ initialPeers: peers })]
  servers = [
    await Server.start(hosts[0], { modelPath, blockIndices: '0:2', throughput: 1, torchDtype: 'float32' }),
    await Server.start(hosts[1], { modelPath, blockIndices: '2:4', throughput: 1, torchDtype: 'float32' }),
  ]
  const client = await Node.start({ initialPeers: peers, clientMode: true })
  nodes = [bootstrap, ...hosts, client]
  model = await DistributedModel.load(client, modelPath)
})

after(async () => {
  for (const server of servers ?? []) await server.shutdown()
  for (const node of nodes ?? []) await node.shutdown()
})

async function collect (stream) {
  const tokens = []
  for await (const token of stream) tokens.push(token)
  return tokens
}

test('servers announce their spans under the directory name', () => {
  assert.deepEqual(servers.map(s => [s.startBlock, s.endBlock]), [[0, 2], [2, 4]])
  assert.equal(servers[0].dhtPrefix, 'tiny')
})

test('a generation streams as an async iterator, the same from text and from ids', async () => {
  const fromText = await collect(model.generate('hello kwaai', { maxNewTokens: 10, stopTokens: [] }))
  assert.equal(fromText.length, 10)
  for (const token of fromText) {
    assert.equal(typeof token.id, 'number')
    assert.equal(typeof token.text, 'string')
  }
  const ids = model.encode('hello kwaai')
  const fromIds = await collect(model.generate(ids, { maxNewTokens: 10, stopTokens: [] }))
  assert.deepEqual(fromIds.map(t => t.id), fromText.map(t => t.id))
  assert.ok(model.decode(fromIds.map(t => t.id)).startsWith(fromText.map(t => t.text).join('')))
})

test('breaking out of the loop frees the servers sessions', async () => {
  let seen = 0
  for await (const _ of model.generate('stop early', { maxNewTokens: 30, stopTokens: [] })) {
    seen += 1
    if (seen === 3) {
      assert.ok(servers.every(s => s.activeSessions === 1), 'each server holds the session')
      break
    }
  }
  assert.equal(seen, 3)
  for (let i = 0; i < 100 && servers.some(s => s.activeSessions !== 0); i++) {
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  assert.deepEqual(servers.map(s => s.activeSessions), [0, 0])
})

test('bad requests reject with their kind', async () => {
  assert.throws(() => model.generate([], {}), { code: 'invalid_argument' })
  const node = nodes[0]
  await assert.rejects(Server.start(node, { modelPath, blockIndices: '3:9', throughput: 1 }), { code: 'invalid_argument' })
  await assert.rejects(DistributedModel.load(node, join(modelPath, 'missing')), { code: 'io' })
})

test('decode keeps special tokens when asked', () => {
  const ids = model.encode('hello kwaai')
  const kept = model.decode(ids, false)
  assert.equal(model.decode(ids), 'hello kwaai')
  assert.notEqual(kept, 'hello kwaai')
  assert.ok(kept.endsWith('hello kwaai'), kept)
  assert.equal(model.decode(ids, true), 'hello kwaai')
})

test('a replayed stream yields its tokens and stops on break', async () => {
  const tokens = Array.from({ length: 300 }, (_, id) => ({ id, text: ` t${id}` }))
  assert.deepEqual(await collect(TokenStream.replay(tokens)), tokens)
  let seen = 0
  const stream = TokenStream.replay(tokens)
  for await (const _ of stream) if (++seen === 2) break
  assert.equal((await stream.next()).done, true)
})
