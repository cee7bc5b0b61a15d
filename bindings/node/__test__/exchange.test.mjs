// Tensors pushed between nodes from Node.js: typed arrays + shape in and out in their dtype,
// per-call compression, and the errors a sender sees.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Node } = require('../index.js')

async function pair () {
  const receiver = await Node.start({ listenAddrs: ['/ip4/127.0.0.1/tcp/0'] })
  const sender = await Node.start({ listenAddrs: ['/ip4/127.0.0.1/tcp/0'], initialPeers: receiver.listenAddrs })
  const inbox = []
  let wake = null
  receiver.setTensorHandler((peerId, name, data, shape, dtype) => {
    inbox.push({ peerId, name, data, shape, dtype })
    if (wake) wake()
  })
  const next = async () => {
    while (inbox.length === 0) await new Promise((resolve) => { wake = resolve })
    return inbox.shift()
  }
  return { sender, receiver, next }
}

test('a tensor arrives named and whole', async () => {
  const { sender, receiver, next } = await pair()
  const data = new Float32Array([1, -2.5, 3, 0, 0.5, 8])
  await sender.pushTensor(receiver.peerId, 'layer.0', data, [2, 3])
  const got = await next()
  assert.equal(got.peerId, sender.peerId)
  assert.equal(got.name, 'layer.0')
  assert.ok(got.data instanceof Float32Array)
  assert.deepEqual(Array.from(got.data), Array.from(data))
  assert.deepEqual(got.shape, [2, 3])
  assert.equal(got.dtype, 'float32')
  await sender.shutdown()
  await receiver.shutdown()
})

test('compression is chosen per push and large tensors stream', async () => {
  const { sender, receiver, next } = await pair()
  const data = Float32Array.from({ length: 600 }, (_, i) => (i % 37) / 8 - 2)
  await sender.pushTensor(receiver.peerId, 'g', data, [20, 30], { compression: 'topk', k: 10 })
  const sparse = await next()
  assert.equal(sparse.data.filter((v) => v !== 0).length, 10)
  await sender.pushTensor(receiver.peerId, 'h', data, [600], { compression: 'float16' })
  const half = await next()
  assert.ok(half.data.every((v, i) => Math.abs(v - data[i]) < 5e-3))
  const big = Float32Array.from({ length: 3 << 20 }, (_, i) => i) // 12 MiB: streamed
  await sender.pushTensor(receiver.peerId, 'big', big, [3, 1 << 20])
  const got = await next()
  assert.deepEqual(got.shape, [3, 1 << 20])
  assert.ok(got.data.every((v, i) => v === big[i]))
  await sender.shutdown()
  await receiver.shutdown()
})

test('bad pushes are rejected with their kind', async () => {
  const { sender, receiver } = await pair()
  const one = new Float32Array([1])
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', one, [1], { compression: 'zip' }), { code: 'invalid_argument' })
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', one, [1], { compression: 'topk' }), { code: 'invalid_argument' })
  await assert.rejects(sender.pushTensor('not-a-peer', 'x', one, [1]), { code: 'invalid_argument' })
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', one, [2]), { code: 'invalid_argument' })
  assert.equal(receiver.clearTensorHandler(), true)
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', one, [1]), { code: 'protocol' })
  await sender.shutdown()
  await receiver.shutdown()
})

test('typed arrays keep their dtype', async () => {
  const { sender, receiver, next } = await pair()
  const cases = [
    [new Float64Array([1 / 3, -7.25]), 'float64', Float64Array],
    [new BigInt64Array([-(2n ** 40n), 7n]), 'int64', BigInt64Array],
    [new Int32Array([-5, 6]), 'int32', Int32Array],
    [new Int16Array([-300, 301]), 'int16', Int16Array],
    [new Int8Array([-7, 8]), 'int8', Int8Array],
    [new Uint8Array([0, 255]), 'uint8', Uint8Array]
  ]
  for (const [data, dtype, kind] of cases) {
    await sender.pushTensor(receiver.peerId, dtype, data, [2])
    const got = await next()
    assert.equal(got.dtype, dtype)
    assert.ok(got.data instanceof kind, dtype)
    assert.deepEqual(Array.from(got.data), Array.from(data))
  }
  await sender.pushTensor(receiver.peerId, 'b', new Uint8Array([0, 3, 1]), [3], { dtype: 'bool' })
  const bools = await next()
  assert.equal(bools.dtype, 'bool')
  assert.deepEqual(Array.from(bools.data), [0, 1, 1])
  // float16 and bfloat16 travel as their bits in a Uint16Array and arrive as float32 values.
  await sender.pushTensor(receiver.peerId, 'h', new Uint16Array([0x3c00, 0xc800]), [2], { dtype: 'float16' })
  const half = await next()
  assert.equal(half.dtype, 'float16')
  assert.ok(half.data instanceof Float32Array)
  assert.deepEqual(Array.from(half.data), [1, -8])
  await sender.pushTensor(receiver.peerId, 'bf', new Uint16Array([0x3fc0, 0xc100]), [2], { dtype: 'bfloat16' })
  const brain = await next()
  assert.equal(brain.dtype, 'bfloat16')
  assert.deepEqual(Array.from(brain.data), [1.5, -8])
  const bits = new Uint16Array([0x3c00])
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', bits, [1]), { code: 'invalid_argument' })
  const floats = new Float32Array([1])
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', floats, [1], { dtype: 'int32' }), { code: 'invalid_argument' })
  await assert.rejects(sender.pushTensor(receiver.peerId, 'x', new Uint32Array([1]), [1]), { code: 'invalid_argument' })
  await sender.shutdown()
  await receiver.shutdown()
})
