//! The state machines the batch system runs: Raft peers, their apply side, and the store.

pub mod apply;
pub mod peer;
pub mod store;
