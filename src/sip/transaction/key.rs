//! Matching messages to transactions (RFC 3261 17.1.3 and 17.2.3) and the bounded table of
//! live transactions.

use std::collections::HashMap;

use super::TransactionError;

/// The RFC 3261 branch prefix: a branch starting with it was built by an RFC 3261 element and
/// is unique per transaction, so it alone (with sent-by and method) identifies the transaction.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// The default cap of a [`TransactionTable`]: beyond it new requests get 503, which bounds the
/// memory a flood of INVITEs can take.
pub const DEFAULT_TABLE_CAPACITY: usize = 10_000;

/// The fields of a received request that server-side matching compares, extracted by the
/// caller from its parsed message. Strings are compared as given, except the branch and
/// sent-by, which are compared case-insensitively (RFC 3261 7.3.1: parameter values and host
/// names are case-insensitive); the caller normalises the Request-URI and top Via it passes
/// for the RFC 2543 fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFields<'a> {
    /// The request method (case-sensitive, RFC 3261 7.1).
    pub method: &'a str,
    /// The Request-URI (RFC 2543 fallback only).
    pub request_uri: &'a str,
    /// The `branch` parameter of the top Via, if any.
    pub top_via_branch: Option<&'a str>,
    /// The sent-by (`host[:port]`) of the top Via.
    pub top_via_sent_by: &'a str,
    /// The whole top Via value (RFC 2543 fallback only).
    pub top_via: &'a str,
    /// The Call-ID (RFC 2543 fallback only).
    pub call_id: &'a str,
    /// The CSeq sequence number (RFC 2543 fallback only; the CSeq method is `method`).
    pub cseq_number: u32,
    /// The From tag (RFC 2543 fallback only).
    pub from_tag: Option<&'a str>,
    /// The To tag (RFC 2543 fallback only).
    pub to_tag: Option<&'a str>,
}

/// What identifies a transaction. Build it with [`TransactionKey::server`] for a received
/// request and [`TransactionKey::client`] for a sent request or a received response.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    /// RFC 3261 17.2.3 with a magic-cookie branch.
    Server {
        /// The branch, lowercased.
        branch: String,
        /// The top Via sent-by, lowercased.
        sent_by: String,
        /// The method, with ACK folded into INVITE.
        method: String,
    },
    /// RFC 3261 17.2.3's fallback for requests from RFC 2543 elements (no magic cookie).
    Rfc2543 {
        /// Request-URI as given.
        request_uri: String,
        /// Call-ID.
        call_id: String,
        /// CSeq number.
        cseq_number: u32,
        /// From tag.
        from_tag: Option<String>,
        /// To tag; always `None` for the INVITE/ACK pair (see [`TransactionKey::server`]).
        to_tag: Option<String>,
        /// Top Via as given.
        top_via: String,
        /// The method, with ACK folded into INVITE.
        method: String,
    },
    /// RFC 3261 17.1.3: our own branch plus the CSeq method.
    Client {
        /// The branch we put in the top Via, lowercased.
        branch: String,
        /// The request's method (for a response: its CSeq method).
        method: String,
    },
}

/// ACK belongs to the INVITE transaction it acknowledges (for a non-2xx final; an ACK for a
/// 2xx carries a new branch and so matches nothing, which is how the caller knows to give it
/// to the dialog). CANCEL keeps its own method: it is a transaction of its own.
fn matching_method(method: &str) -> String {
    if method == "ACK" {
        "INVITE".to_owned()
    } else {
        method.to_owned()
    }
}

/// Whether `branch` starts with the RFC 3261 magic cookie (compared case-insensitively, like
/// every parameter value).
fn has_magic_cookie(branch: &str) -> bool {
    branch
        .get(..MAGIC_COOKIE.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(MAGIC_COOKIE))
}

/// The most text a key may hold (2 KiB): a branch, a sent-by, or the RFC 2543 fields of a real
/// request fit with room to spare.
pub const MAX_KEY_BYTES: usize = 2048;

impl TransactionKey {
    /// The text this key holds, in bytes.
    pub fn size(&self) -> usize {
        match self {
            Self::Server {
                branch,
                sent_by,
                method,
            } => branch.len() + sent_by.len() + method.len(),
            Self::Rfc2543 {
                request_uri,
                call_id,
                from_tag,
                to_tag,
                top_via,
                method,
                ..
            } => {
                request_uri.len()
                    + call_id.len()
                    + from_tag.as_ref().map_or(0, String::len)
                    + to_tag.as_ref().map_or(0, String::len)
                    + top_via.len()
                    + method.len()
            }
            Self::Client { branch, method } => branch.len() + method.len(),
        }
    }

    /// The key a received request matches (RFC 3261 17.2.3).
    ///
    /// With a magic-cookie branch: branch + sent-by + method, ACK folded into INVITE. Without
    /// one, the RFC 2543 rules: Request-URI, Call-ID, CSeq number, From tag, To tag, top Via
    /// and method. For INVITE and ACK the To tag is left out: the INVITE of a new dialog has
    /// none while its ACK carries the tag of our response, and the other fields (CSeq number
    /// above all) already tell two INVITEs apart.
    pub fn server(request: &RequestFields<'_>) -> Self {
        let method = matching_method(request.method);
        match request.top_via_branch {
            Some(branch) if has_magic_cookie(branch) => Self::Server {
                branch: branch.to_ascii_lowercase(),
                sent_by: request.top_via_sent_by.to_ascii_lowercase(),
                method,
            },
            _ => {
                let to_tag = if method == "INVITE" {
                    None
                } else {
                    request.to_tag.map(str::to_owned)
                };
                Self::Rfc2543 {
                    request_uri: request.request_uri.to_owned(),
                    call_id: request.call_id.to_owned(),
                    cseq_number: request.cseq_number,
                    from_tag: request.from_tag.map(str::to_owned),
                    to_tag,
                    top_via: request.top_via.to_owned(),
                    method,
                }
            }
        }
    }

    /// The key of a client transaction (RFC 3261 17.1.3): the branch of the top Via and the
    /// method of the request, or, for a response, its top Via branch and CSeq method. The
    /// method matters because a CANCEL carries the branch of the INVITE it cancels.
    pub fn client(branch: &str, method: &str) -> Self {
        Self::Client {
            branch: branch.to_ascii_lowercase(),
            method: method.to_owned(),
        }
    }

    /// For a server CANCEL key, the key of the INVITE transaction it cancels (RFC 3261 9.2:
    /// same matching rules, method INVITE); `None` for any other key.
    pub fn cancel_target(&self) -> Option<Self> {
        match self {
            Self::Server {
                branch,
                sent_by,
                method,
            } if method == "CANCEL" => Some(Self::Server {
                branch: branch.clone(),
                sent_by: sent_by.clone(),
                method: "INVITE".to_owned(),
            }),
            Self::Rfc2543 {
                request_uri,
                call_id,
                cseq_number,
                from_tag,
                top_via,
                method,
                ..
            } if method == "CANCEL" => Some(Self::Rfc2543 {
                request_uri: request_uri.clone(),
                call_id: call_id.clone(),
                cseq_number: *cseq_number,
                from_tag: from_tag.clone(),
                to_tag: None,
                top_via: top_via.clone(),
                method: "INVITE".to_owned(),
            }),
            _ => None,
        }
    }
}

/// Identifies a live transaction; the shell keeps its machines under these ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(u64);

/// Live transactions by key, bounded: a request that would create a transaction beyond the
/// cap is refused with [`TransactionError::TableFull`] (the caller answers 503).
#[derive(Debug)]
pub struct TransactionTable {
    by_key: HashMap<TransactionKey, TransactionId>,
    capacity: usize,
    next_id: u64,
}

impl Default for TransactionTable {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_CAPACITY)
    }
}

impl TransactionTable {
    /// An empty table holding at most `capacity` transactions.
    pub fn new(capacity: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            capacity,
            next_id: 0,
        }
    }

    /// Registers a new transaction under `key` and returns its fresh id.
    pub fn insert(&mut self, key: TransactionKey) -> Result<TransactionId, TransactionError> {
        // Keys copy text from the wire; a cap on their size bounds the table's memory by
        // capacity x MAX_KEY_BYTES, whatever a flood puts in its Vias.
        let bytes = key.size();
        if bytes > MAX_KEY_BYTES {
            return Err(TransactionError::KeyTooLarge {
                bytes,
                limit: MAX_KEY_BYTES,
            });
        }
        if self.by_key.contains_key(&key) {
            return Err(TransactionError::DuplicateKey);
        }
        if self.by_key.len() >= self.capacity {
            return Err(TransactionError::TableFull {
                capacity: self.capacity,
            });
        }
        let id = TransactionId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// The transaction `key` matches, if any.
    pub fn lookup(&self, key: &TransactionKey) -> Option<TransactionId> {
        self.by_key.get(key).copied()
    }

    /// Forgets `key` (when its machine has terminated) and returns its id.
    pub fn remove(&mut self, key: &TransactionKey) -> Option<TransactionId> {
        self.by_key.remove(key)
    }

    /// How many transactions are live.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The cap given to [`TransactionTable::new`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
