//! Secrets (API keys, SIP passwords): where they come from and how they stay out of logs.
//!
//! The configuration never holds a secret value, only where to find it: the name of an
//! environment variable (`*_env`) or the path of a file (`*_file`, for example a systemd
//! credential). The value is read when it is needed, so a rotated key file is picked up at the
//! next connect. A loaded value lives in [`SecretString`], whose `Debug` prints `[redacted]` and
//! which has no `Display` and no `Serialize`: it cannot reach a log line by accident. Errors name
//! the source, never the value.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The named environment variable.
    Env(String),
    /// The file at this path; it must not be readable by group or others.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Why a secret could not be loaded. Never carries the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read {path}: {source}")]
    FileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by group or others (mode {mode:04o}); run `chmod 600` on it or use a systemd credential"
    )]
    FileTooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not valid UTF-8")]
    FileNotUnicode { path: PathBuf },
    #[error("{0} is empty")]
    Empty(SecretSource),
}

/// A loaded secret. Redacted in `Debug`; read it only where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value that must stay out of logs.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that puts it in a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SecretSource {
    /// Reads the secret from the process environment or the file system.
    pub fn load(&self) -> Result<SecretString, SecretError> {
        self.load_with(|name| std::env::var_os(name))
    }

    /// Reads the secret, looking environment variables up with `env` (tests pass a map).
    pub fn load_with(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<SecretString, SecretError> {
        let value = match self {
            Self::Env(name) => env(name)
                .ok_or_else(|| SecretError::EnvMissing(name.clone()))?
                .into_string()
                .map_err(|_| SecretError::EnvNotUnicode(name.clone()))?,
            Self::File(path) => read_private_file(path)?,
        };
        // Files written by editors and `echo` end with a newline that is not part of the key.
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.clone()));
        }
        Ok(SecretString(trimmed.to_owned()))
    }
}

fn read_private_file(path: &Path) -> Result<String, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |source| SecretError::FileUnreadable {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        return Err(SecretError::FileTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    String::from_utf8(bytes).map_err(|_| SecretError::FileNotUnicode {
        path: path.to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "sk-test-4f1d9c0b7e2a";

    fn env_with_key(name: &str) -> Option<std::ffi::OsString> {
        (name == "MY_KEY").then(|| format!("{KEY}\n").into())
    }

    #[test]
    fn env_secret_is_loaded_trimmed_and_redacted_in_debug() {
        let secret = SecretSource::Env("MY_KEY".into())
            .load_with(env_with_key)
            .unwrap();
        assert_eq!(secret.expose(), KEY);
        let debug = format!("{secret:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert_eq!(debug, "[redacted]");
    }

    #[test]
    fn missing_env_secret_names_the_variable() {
        let err = SecretSource::Env("OTHER".into())
            .load_with(env_with_key)
            .unwrap_err();
        assert_eq!(err.to_string(), "environment variable OTHER is not set");
    }

    #[test]
    fn empty_secret_is_refused() {
        let err = SecretSource::Env("BLANK".into())
            .load_with(|_| Some(" \n".into()))
            .unwrap_err();
        assert!(matches!(err, SecretError::Empty(_)), "{err}");
    }

    #[test]
    fn private_file_secret_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = SecretSource::File(path).load().unwrap();
        assert_eq!(secret.expose(), KEY);
    }

    #[test]
    fn file_readable_by_group_or_others_is_refused_without_revealing_it() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o644] {
            let path = dir.path().join(format!("key-{mode:o}"));
            std::fs::write(&path, KEY).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = SecretSource::File(path).load().unwrap_err();
            assert!(
                matches!(err, SecretError::FileTooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(!err.to_string().contains(KEY));
        }
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err = SecretSource::File("/nonexistent/srb-key".into())
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/srb-key"), "{err}");
    }
}
