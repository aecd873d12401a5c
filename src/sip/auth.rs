//! SIP digest authentication, client side (RFC 3261 section 22, RFC 2617, RFC 7616 for
//! SHA-256, RFC 8760 for its use in SIP): read a 401's `WWW-Authenticate` or a 407's
//! `Proxy-Authenticate`, and answer it with an `Authorization` / `Proxy-Authorization` value.
//!
//! Sans-IO and pure: the client nonce and the nonce count are arguments (the shell draws the
//! cnonce from the OS generator and counts), so every value is reproducible in tests.
//!
//! - Algorithms `MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`; when a response offers several
//!   challenges, SHA-256 is preferred (RFC 8760 section 2.4).
//! - `qop=auth` with a hex nonce count when offered; RFC 2069 style (no qop) otherwise.
//!   `auth-int` alone is refused ([`AuthError::Unsupported`]): it protects bodies the bridge's
//!   REGISTER and re-sent INVITE do not need protected, and no registrar requires it alone.
//! - `stale=true` is surfaced, so the caller retries with the new nonce without counting it as a
//!   failed attempt.
//! - Parsing is lenient about case and whitespace, strict about structure; nothing from the
//!   network can make it panic.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::message::SipMessage;

/// Longest header value looked at.
const MAX_CHALLENGE_LEN: usize = 4096;

/// Why a challenge cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a `Digest` challenge (Basic, Bearer, ...).
    #[error("not a Digest challenge")]
    NotDigest,
    /// The challenge lacks a parameter we need.
    #[error("the challenge has no {0}")]
    Missing(&'static str),
    /// The challenge's syntax is broken.
    #[error("malformed challenge: {0}")]
    Malformed(&'static str),
    /// An algorithm or quality of protection we do not implement.
    #[error("unsupported {0}")]
    Unsupported(String),
}

/// The digest hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    fn parse(s: &str) -> Result<Algorithm, AuthError> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Ok(Self::Md5),
            "MD5-SESS" => Ok(Self::Md5Sess),
            "SHA-256" => Ok(Self::Sha256),
            "SHA-256-SESS" => Ok(Self::Sha256Sess),
            _ => Err(AuthError::Unsupported(format!("algorithm {s}"))),
        }
    }

    /// The token on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sha256(self) -> bool {
        matches!(self, Self::Sha256 | Self::Sha256Sess)
    }

    fn is_sess(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }

    /// Lower-case hex digest of `data`.
    fn hash(self, data: &str) -> String {
        let mut out = String::with_capacity(64);
        if self.is_sha256() {
            for byte in Sha256::digest(data.as_bytes()) {
                let _ = write!(out, "{byte:02x}");
            }
        } else {
            for byte in Md5::digest(data.as_bytes()) {
                let _ = write!(out, "{byte:02x}");
            }
        }
        out
    }
}

/// One parsed `Digest` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (we then use it); without qop, RFC 2069 style.
    pub qop_auth: bool,
    /// The previous credentials were right but the nonce had expired: retry at once.
    pub stale: bool,
    /// It came in `Proxy-Authenticate` (a 407): answer with `Proxy-Authorization`.
    pub proxy: bool,
}

impl Challenge {
    /// Parses one `WWW-Authenticate` / `Proxy-Authenticate` value.
    pub fn parse(value: &str, proxy: bool) -> Result<Challenge, AuthError> {
        let value = value.trim();
        if value.len() > MAX_CHALLENGE_LEN {
            return Err(AuthError::Malformed("too long"));
        }
        let (scheme, rest) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(AuthError::NotDigest);
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop = None;
        let mut stale = false;
        for (name, value) in parse_params(rest)? {
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "opaque" => opaque = Some(value),
                "algorithm" => algorithm = Algorithm::parse(&value)?,
                "qop" => qop = Some(value),
                "stale" => stale = value.eq_ignore_ascii_case("true"),
                // domain, charset, userhash and extensions: not needed to answer.
                _ => {}
            }
        }
        let qop_auth = match qop {
            None => false,
            Some(list) => {
                let mut options = list.split(',').map(str::trim);
                if options.clone().any(|o| o.eq_ignore_ascii_case("auth")) {
                    true
                } else if options.any(|o| !o.is_empty()) {
                    return Err(AuthError::Unsupported(format!("qop {list}")));
                } else {
                    false
                }
            }
        };
        Ok(Challenge {
            realm: realm.ok_or(AuthError::Missing("realm"))?,
            nonce: nonce.ok_or(AuthError::Missing("nonce"))?,
            opaque,
            algorithm,
            qop_auth,
            stale,
            proxy,
        })
    }

    /// The challenge to answer in a 401 or 407: every `WWW-Authenticate` (401) or
    /// `Proxy-Authenticate` (407) value that parses, SHA-256 before MD5. `None` when there is
    /// none we can answer.
    pub fn from_response(response: &SipMessage) -> Option<Challenge> {
        let (header, proxy) = match response.status_code() {
            Some(401) => ("WWW-Authenticate", false),
            Some(407) => ("Proxy-Authenticate", true),
            _ => return None,
        };
        let mut usable: Vec<Challenge> = response
            .header_values(header)
            .filter_map(|value| Challenge::parse(value, proxy).ok())
            .collect();
        usable.sort_by_key(|c| !c.algorithm.is_sha256());
        usable.into_iter().next()
    }

    /// The header our retried request carries.
    pub fn header_name(&self) -> &'static str {
        if self.proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        }
    }

    /// The credentials value for `method` on `uri` (the Request-URI as sent), with nonce
    /// count `nc` (1 for a fresh nonce, then counting up while it is reused) and client nonce
    /// `cnonce` (random, from the shell).
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> String {
        let algorithm = self.algorithm;
        let mut ha1 = algorithm.hash(&format!("{username}:{}:{password}", self.realm));
        if algorithm.is_sess() {
            ha1 = algorithm.hash(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = algorithm.hash(&format!("{method}:{uri}"));
        let nc = format!("{nc:08x}");
        let response = if self.qop_auth {
            algorithm.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            algorithm.hash(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\", algorithm={}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri),
            algorithm.as_str(),
        );
        if self.qop_auth || algorithm.is_sess() {
            let _ = write!(value, ", cnonce=\"{}\"", quote(cnonce));
        }
        if self.qop_auth {
            let _ = write!(value, ", qop=auth, nc={nc}");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(value, ", opaque=\"{}\"", quote(opaque));
        }
        value
    }
}

/// Escapes `"` and `\` for a quoted-string, and drops control characters (no header injection).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `name=value` pairs separated by commas; values are tokens or quoted strings with `\`
/// escapes.
fn parse_params(s: &str) -> Result<Vec<(String, String)>, AuthError> {
    let mut params = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars
            .peek()
            .is_some_and(|c| c.is_ascii_whitespace() || *c == ',')
        {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_ascii_whitespace() || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(char::is_ascii_whitespace) {
            chars.next();
        }
        if chars.next() != Some('=') || name.is_empty() {
            return Err(AuthError::Malformed("expected name=value"));
        }
        while chars.peek().is_some_and(char::is_ascii_whitespace) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(AuthError::Malformed("unterminated quoted string")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(AuthError::Malformed("unterminated quoted string")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_ascii_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((name, value));
        if params.len() > 64 {
            return Err(AuthError::Malformed("too many parameters"));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The response parameter of a credentials value.
    fn response_of(value: &str) -> String {
        let (_, rest) = value.split_once(' ').unwrap();
        parse_params(rest)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "response")
            .unwrap()
            .1
    }

    #[test]
    fn rfc_7616_examples_md5_and_sha_256() {
        // RFC 7616 section 3.9.1.
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (algorithm, expected) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let challenge = Challenge::parse(
                &format!(
                    "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
                     algorithm={algorithm}, nonce=\"{nonce}\", \
                     opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
                ),
                false,
            )
            .unwrap();
            assert!(challenge.qop_auth);
            let value = challenge.answer(
                "Mufasa",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                1,
                cnonce,
            );
            assert_eq!(response_of(&value), expected, "{algorithm}");
            assert!(value.contains(", qop=auth, nc=00000001"), "{value}");
            assert!(
                value.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""),
                "{value}"
            );
        }
    }

    #[test]
    fn rfc_2617_example_and_rfc_2069_style_without_qop() {
        // RFC 2617 section 3.5.
        let challenge = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
            false,
        )
        .unwrap();
        let value = challenge.answer(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert_eq!(response_of(&value), "6629fae49393a05397450978507c4ef1");
        // Without qop: H(HA1:nonce:HA2), no cnonce or nc on the wire.
        let plain =
            Challenge::parse("Digest realm=\"sip.example.org\", nonce=\"abc\"", true).unwrap();
        let value = plain.answer("alice", "secret", "REGISTER", "sip:sip.example.org", 1, "x");
        let ha1 = Algorithm::Md5.hash("alice:sip.example.org:secret");
        let ha2 = Algorithm::Md5.hash("REGISTER:sip:sip.example.org");
        assert_eq!(
            response_of(&value),
            Algorithm::Md5.hash(&format!("{ha1}:abc:{ha2}"))
        );
        assert!(
            !value.contains("cnonce") && !value.contains("nc="),
            "{value}"
        );
        assert_eq!(plain.header_name(), "Proxy-Authorization");
    }

    #[test]
    fn sess_algorithms_fold_the_nonces_into_ha1() {
        let c = Challenge::parse(
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256-sess, qop=auth",
            false,
        )
        .unwrap();
        let value = c.answer("u", "p", "INVITE", "sip:x@y", 2, "cn");
        let h = |s: &str| Algorithm::Sha256.hash(s);
        let ha1 = h(&format!("{}:n:cn", h("u:r:p")));
        let expected = h(&format!("{ha1}:n:00000002:cn:auth:{}", h("INVITE:sip:x@y")));
        assert_eq!(response_of(&value), expected);
        assert!(value.contains("algorithm=SHA-256-sess"));
    }

    #[test]
    fn parsing_is_lenient_about_form_and_strict_about_substance() {
        let c = Challenge::parse(
            "DIGEST  nonce = \"a\\\"b,c\" ,realm=\"r, with comma\",stale=TRUE,algorithm=md5,domain=\"sip:x\"",
            false,
        )
        .unwrap();
        assert_eq!(c.nonce, "a\"b,c");
        assert_eq!(c.realm, "r, with comma");
        assert!(c.stale);
        assert!(!c.qop_auth);
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(
            Challenge::parse("Basic realm=\"r\"", false),
            Err(AuthError::NotDigest)
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"r\"", false),
            Err(AuthError::Missing("nonce"))
        );
        assert!(matches!(
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"", false),
            Err(AuthError::Unsupported(_))
        ));
        assert!(matches!(
            Challenge::parse(
                "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
                false
            ),
            Err(AuthError::Unsupported(_))
        ));
        assert!(matches!(
            Challenge::parse("Digest realm=\"r, nonce=\"n\"", false),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn the_strongest_challenge_of_a_response_is_answered() {
        let response = crate::sip::message::parse(
            b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
              From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n\
              WWW-Authenticate: Digest realm=\"r\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n\
              WWW-Authenticate: Digest realm=\"r\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\"\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .unwrap();
        let c = Challenge::from_response(&response).unwrap();
        assert_eq!(
            (c.algorithm, c.nonce.as_str(), c.proxy),
            (Algorithm::Sha256, "n2", false)
        );
        assert_eq!(c.header_name(), "Authorization");
    }

    #[test]
    fn values_from_the_network_cannot_break_our_header() {
        let c = Challenge::parse("Digest realm=\"r\\\"\r\nX: y\", nonce=\"n\"", false).unwrap();
        let value = c.answer("u", "p", "REGISTER", "sip:r", 1, "c");
        assert!(!value.contains('\r') && !value.contains('\n'), "{value}");
        assert!(value.contains("realm=\"r\\\"X: y\""), "{value}");
    }

    proptest! {
        #[test]
        fn no_input_panics(s in ".{0,300}") {
            let _ = Challenge::parse(&s, false);
            let _ = Challenge::parse(&format!("Digest {s}"), true);
        }
    }
}
