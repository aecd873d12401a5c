//! Identifier newtypes for the Realtime protocol, so an item id cannot be passed where a
//! response id is meant. All are opaque strings chosen by the server (or, for [`EventId`], by
//! this client); nothing here checks their prefix, because the prefixes have changed before
//! (`msg_` / `item_`).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }
    };
}

string_id!(
    /// A conversation item (`item_...`, older servers `msg_...`).
    ItemId
);
string_id!(
    /// A model response (`resp_...`).
    ResponseId
);
string_id!(
    /// A function call, the key that ties a `function_call_output` to its call (`call_...`).
    CallId
);
string_id!(
    /// The `event_id` of a client event (`evt_N`), echoed in `error.event_id` when that event
    /// failed.
    EventId
);
