//! hivemind's DHT: IDs, storage and the routing table (pure logic, no I/O), its RPC protocol,
//! the iterative lookup, and [`Dht`], the API a node exposes.

mod blacklist;
pub mod id;
mod protocol;
pub mod routing;
pub mod schema;
mod search;
mod service;
pub mod storage;
pub mod validation;

pub use id::DhtId;
pub use protocol::{DhtConfig, RPC_FIND, RPC_PING, RPC_STORE};
pub use service::{Dht, DhtValue, DictionaryEntry, StoreItem};
pub use storage::{dht_time, DhtTime, DictionaryValue, LocalStorage, StoredEntry, StoredValue, SubkeyEntry};
