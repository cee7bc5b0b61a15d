//! The libp2p host: TCP + Noise + yamux, identify, ping and Kademlia, as p2pd peers speak them,
//! plus hivemind RPC (unary and streaming) as caller and handler.
//!
//! The swarm runs as one task on the node's runtime; the rest of the library talks to it through
//! `HostHandle` commands. RPC streams bypass the swarm: the `muxer` module negotiates hivemind's
//! slash-less handler names itself, `framing` reads and writes the messages and `rpc` runs the
//! calls and handlers. Inbound Kademlia requests are answered by `kad_responder` (go-libp2p cannot
//! dial the addresses rust-libp2p's kad would send). A node that listens on WebSockets also
//! forwards streams for peers that can reach only it (`forward`, [`crate::wire::forward`]).

mod behaviour;
mod forward;
mod framing;
mod host;
mod kad_responder;
mod keep_alive;
pub mod multistream;
mod muxer;
mod rpc;
mod yamux_muxer;

pub use host::PeerInfo;
pub(crate) use host::{start_host, HostHandle};
pub use rpc::{RequestStream, ResponseStream, Rpc, RpcLimits};
