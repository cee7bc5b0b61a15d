//! Connection security as p2pd offers it: Noise (`/noise`) and TLS 1.3 (`/tls/1.0.0`), chosen per
//! connection by multistream-select.
//!
//! A dialer proposes the protocols in [`NodeConfig::security`](crate::NodeConfig::security) order
//! and the listener takes the first one it also speaks, so the order matters only when we dial.

use std::fmt;
use std::io;

use futures::future::{BoxFuture, Either};
use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::{identity, PeerId};

use super::noise::{NoiseConfig, NoiseStream};
use super::tls::{TlsConfig, TlsStream};

use crate::error::{Error, ErrorKind, Result};

/// A libp2p security protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// Noise XX with ChaCha20-Poly1305 (`/noise`), the one p2pd proposes first.
    Noise,
    /// TLS 1.3 (`/tls/1.0.0`), offering AES-GCM first where the CPU has AES instructions.
    Tls,
}

impl Security {
    /// The order a node proposes by default: TLS first where the CPU has AES instructions (AES-GCM
    /// then costs a quarter of Noise's ChaCha20-Poly1305 per byte), Noise first elsewhere.
    pub fn default_order() -> Vec<Security> {
        if super::tls::aes_in_hardware() {
            vec![Security::Tls, Security::Noise]
        } else {
            vec![Security::Noise, Security::Tls]
        }
    }

    /// The multistream-select protocol name.
    pub fn protocol(self) -> &'static str {
        match self {
            Security::Noise => "/noise",
            Security::Tls => "/tls/1.0.0",
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol())
    }
}

/// The security upgrade of a TCP or WebSocket connection: the protocols of `order`, in that order.
#[derive(Clone)]
pub(crate) struct SecurityUpgrade {
    order: Vec<Security>,
    noise: NoiseConfig,
    tls: TlsConfig,
}

impl SecurityUpgrade {
    /// Both protocols' configs for `keypair`; `order` must name at least one, each at most once.
    pub fn new(keypair: &identity::Keypair, order: &[Security]) -> Result<Self> {
        if order.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "no security protocol is enabled"));
        }
        if order.iter().enumerate().any(|(i, s)| order[..i].contains(s)) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a security protocol is listed twice: {order:?}"),
            ));
        }
        let noise = NoiseConfig::new(keypair)
            .map_err(|e| Error::with_source(ErrorKind::Internal, "building the noise transport", e))?;
        let tls = TlsConfig::new(keypair)
            .map_err(|e| Error::with_source(ErrorKind::Internal, "building the TLS transport", e))?;
        Ok(SecurityUpgrade { order: order.to_vec(), noise, tls })
    }
}

/// An authenticated connection: Noise's or TLS's stream.
pub(crate) type SecureStream<C> = Either<NoiseStream<C>, TlsStream<C>>;

impl UpgradeInfo for SecurityUpgrade {
    type Info = &'static str;
    type InfoIter = std::vec::IntoIter<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.order.iter().map(|s| s.protocol()).collect::<Vec<_>>().into_iter()
    }
}

impl<C> InboundConnectionUpgrade<C> for SecurityUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, SecureStream<C>);
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Output>>;

    fn upgrade_inbound(self, socket: C, protocol: &'static str) -> Self::Future {
        if protocol == Security::Tls.protocol() {
            self.tls.upgrade(socket, false).map_ok(|(peer, s)| (peer, Either::Right(s))).boxed()
        } else {
            self.noise.upgrade(socket, false).map_ok(|(peer, s)| (peer, Either::Left(s))).boxed()
        }
    }
}

impl<C> OutboundConnectionUpgrade<C> for SecurityUpgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, SecureStream<C>);
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Output>>;

    fn upgrade_outbound(self, socket: C, protocol: &'static str) -> Self::Future {
        if protocol == Security::Tls.protocol() {
            self.tls.upgrade(socket, true).map_ok(|(peer, s)| (peer, Either::Right(s))).boxed()
        } else {
            self.noise.upgrade(socket, true).map_ok(|(peer, s)| (peer, Either::Left(s))).boxed()
        }
    }
}
