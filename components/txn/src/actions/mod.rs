//! Percolator's steps on one key each: a command runs one of them per key of its request
//! over one reader and gathers the writes in one [`crate::MvccTxn`].

mod check_txn_status;
mod commit;
mod gc;
mod heartbeat;
mod pessimistic;
mod prewrite;
mod rollback;
#[cfg(test)]
mod tests;

pub use check_txn_status::{
    check_secondary_lock, check_txn_status, CheckTxnStatus, RollbackAction, SecondaryStatus,
    TxnStatus,
};
pub use commit::commit;
pub use gc::gc;
pub use heartbeat::heartbeat;
pub use pessimistic::{acquire_pessimistic_lock, pessimistic_rollback, PessimisticLock};
pub use prewrite::{prewrite, Prewrite, TxnProps};
pub use rollback::{cleanup, rollback};
