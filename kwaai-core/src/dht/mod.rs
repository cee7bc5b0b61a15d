//! hivemind's DHT: IDs, storage and the routing table (pure logic, no I/O), and, on top of the
//! p2p layer, its RPCs and lookups.

pub mod id;
pub mod routing;
pub mod storage;

pub use id::DhtId;
pub use storage::{dht_time, DhtTime, DictionaryValue, LocalStorage, StoredEntry, StoredValue, SubkeyEntry};
