//! SIP: see the module list.

pub mod transaction;
