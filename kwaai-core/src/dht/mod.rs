//! hivemind's DHT: IDs, storage and the routing table (pure logic, no I/O), its RPC protocol,
//! the iterative lookup, and [`Dht`], the API a node exposes.

#[cfg(feature = "native")]
mod blacklist;
pub mod find;
pub mod id;
#[cfg(feature = "native")]
mod protocol;
pub mod routing;
pub mod schema;
#[cfg(feature = "native")]
mod search;
#[cfg(feature = "native")]
mod service;
pub mod storage;
pub mod validation;

pub use find::{DhtValue, DictionaryEntry, RPC_FIND, RPC_PING, RPC_STORE};
pub use id::DhtId;
#[cfg(feature = "native")]
pub use protocol::DhtConfig;
#[cfg(feature = "native")]
pub use service::{Dht, StoreItem};
pub use storage::{dht_time, DhtTime, DictionaryValue, LocalStorage, StoredEntry, StoredValue, SubkeyEntry};
