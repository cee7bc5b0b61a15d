// The node lifecycle from Node.js, and errors rejected with their kind as `code`.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Node, errorKinds } = require('../index.js')

test('node lifecycle', async () => {
  const node = await Node.start({ listenAddrs: ['/ip4/127.0.0.1/tcp/0'] })
  assert.ok(node.isRunning)
  assert.match(node.peerId, /^12D3KooW/)
  assert.equal(node.listenAddrs.length, 1)
  const addr = node.listenAddrs[0]
  assert.match(addr, /^\/ip4\/127\.0\.0\.1\/tcp\/[1-9][0-9]*\/p2p\//)
  assert.ok(addr.endsWith(`/p2p/${node.peerId}`))
  await node.shutdown()
  assert.equal(node.isRunning, false)
  assert.deepEqual(node.listenAddrs, [])
  await node.shutdown()
})

test('identity file keeps the peer id', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'kwaai-')), 'id.key')
  const first = await Node.start({ identityPath: path })
  const peer = first.peerId
  await first.shutdown()
  assert.equal(statSync(path).mode & 0o777, 0o400)
  const second = await Node.start({ identityPath: path })
  assert.equal(second.peerId, peer)
  await second.shutdown()
})

test('bad multiaddr rejects with code invalid_argument', async () => {
  await assert.rejects(Node.start({ listenAddrs: ['not a multiaddr'] }), (err) => {
    assert.ok(err instanceof Error)
    assert.equal(err.code, 'invalid_argument')
    assert.equal(err.errno, 1)
    assert.match(err.message, /not a multiaddr/)
    return true
  })
})

test('garbage identity file rejects with code identity', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'kwaai-')), 'bad.key')
  writeFileSync(path, 'garbage')
  await assert.rejects(Node.start({ identityPath: path }), { code: 'identity' })
})

test('every core error kind has a distinct code name', () => {
  const kinds = errorKinds()
  assert.ok(kinds.length >= 8)
  assert.equal(new Set(kinds.map((k) => k.name)).size, kinds.length)
  assert.equal(new Set(kinds.map((k) => k.code)).size, kinds.length)
  assert.ok(kinds.some((k) => k.name === 'invalid_argument' && k.code === 1))
})
