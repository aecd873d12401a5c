//! SIP: see the module list.

pub mod sdp;
pub mod transaction;
