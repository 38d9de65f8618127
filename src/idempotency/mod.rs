//! CreateVM's `Idempotency-Key`: the same key within `VMPOOL_IDEMPOTENCY_TTL_SECS` answers
//! with the same VM and action, from any instance. [`key`] is the key a caller sends;
//! [`record`] keeps it in the pool's own records, written before the VM is claimed;
//! [`expiry`] removes records past their time.

pub mod expiry;
pub mod key;
pub mod record;

pub use key::{IdempotencyKey, InvalidKey};
