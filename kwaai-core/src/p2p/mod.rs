//! The libp2p host: TCP + Noise or TLS + yamux, QUIC (or WebRTC-direct for browsers, `webrtc`), identify, ping and Kademlia, as p2pd peers speak them,
//! plus hivemind RPC (unary and streaming) as caller and handler.
//!
//! The swarm runs as one task on the node's runtime; the rest of the library talks to it through
//! `HostHandle` commands. RPC streams bypass the swarm: the `muxer` module negotiates hivemind's
//! slash-less handler names itself, `framing` reads and writes the messages and `rpc` runs the
//! calls and handlers. Inbound Kademlia requests are answered by `kad_responder` (go-libp2p cannot
//! dial the addresses rust-libp2p's kad would send). A node that listens on WebSockets or WebRTC-direct also
//! forwards streams for peers that can reach only it (`forward`, [`crate::wire::forward`]).
//!
//! Without the `native` feature only the pure parts remain: `multistream` and `framing`, which
//! the browser client drives over its own streams.

#[cfg(feature = "native")]
mod behaviour;
pub mod bounded_writes;
#[cfg(feature = "native")]
mod forward;
pub mod framing;
#[cfg(feature = "native")]
mod host;
#[cfg(feature = "native")]
mod kad_responder;
#[cfg(feature = "native")]
mod keep_alive;
#[cfg(feature = "native")]
mod memory_pipe;
pub mod multistream;
#[cfg(feature = "native")]
mod muxer;
#[cfg(feature = "native")]
mod noise;
#[cfg(feature = "native")]
mod outbound;
#[cfg(feature = "native")]
mod rpc;
#[cfg(feature = "native")]
mod security;
mod spare_buffers;
#[cfg(feature = "native")]
mod tls;
#[cfg(feature = "native")]
mod tls_record;
#[cfg(feature = "native")]
mod webrtc;
#[cfg(feature = "native")]
mod yamux_muxer;

#[cfg(feature = "native")]
pub use host::PeerInfo;
#[cfg(feature = "native")]
pub(crate) use host::{start_host, HostHandle};
/// Our Noise transport, with a peer that acts out arbitrary steps (for the `p2p_noise` fuzz target).
#[cfg(feature = "native")]
#[doc(hidden)]
pub use noise::serve_peer_steps as fuzz_noise;
#[cfg(feature = "native")]
pub use rpc::{RequestStream, ResponseStream, Rpc, RpcLimits};
#[cfg(feature = "native")]
pub use security::Security;
/// Our TLS record layer, with a peer that acts out arbitrary steps (for the `p2p_tls` fuzz target).
#[cfg(feature = "native")]
#[doc(hidden)]
pub use tls::serve_peer_steps as fuzz_tls;
/// Our yamux, fed arbitrary peer bytes (for the `p2p_yamux` fuzz target).
#[cfg(feature = "native")]
#[doc(hidden)]
pub use yamux_muxer::serve_peer_bytes as fuzz_yamux;
