//! Bearer tokens and scopes: the tokens file, the constant-time lookup of a presented token, and
//! what each scope allows. Tokens themselves are never stored, only their SHA-256 digests, and
//! never logged.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A scope a token may hold, named as Outreach names them (plus `calls.voice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `calls.read`: get, list, changes.
    Read,
    /// `calls.write`: create, update.
    Write,
    /// `calls.delete`: delete.
    Delete,
    /// `calls.all`: read, write and delete.
    All,
    /// `calls.voice`: may also write the telephony-owned members (`state`, `uid`,
    /// `voicemailRecordingUrl`, `associatedId`).
    Voice,
    /// `calls.admin`: read the whole log for a backup (`calls.api.backup`). Not part of
    /// `calls.all`: a token for the API never reads the log wholesale unless it is given this.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 6] = [
        Scope::Read,
        Scope::Write,
        Scope::Delete,
        Scope::All,
        Scope::Voice,
        Scope::Admin,
    ];

    /// Its name in the tokens file and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "calls.read",
            Scope::Write => "calls.write",
            Scope::Delete => "calls.delete",
            Scope::All => "calls.all",
            Scope::Voice => "calls.voice",
            Scope::Admin => "calls.admin",
        }
    }

    /// Looks a scope up by name.
    pub fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }
}

/// Who a request comes from and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The events' actor.
    pub actor: String,
    /// Scopes held (`calls.all` is expanded by [`Grant::allows`]).
    pub scopes: Vec<Scope>,
}

impl Grant {
    /// Whether the grant includes `scope` (directly, or through `calls.all`).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (matches!(scope, Scope::Read | Scope::Write | Scope::Delete)
                && self.scopes.contains(&Scope::All))
    }
}

/// Why a tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("the tokens file is not valid: {0}")]
    Parse(String),
    /// An entry is wrong (bad digest, unknown scope, duplicate token).
    #[error("the tokens file is not valid: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    scopes: Vec<String>,
}

struct StoredToken {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// The known tokens, by the SHA-256 digest of each: loaded from the `--tokens` file.
#[derive(Clone)]
pub struct TokenStore {
    tokens: std::sync::Arc<[StoredToken]>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests are not secrets, but there is no reason to print them.
        f.debug_list()
            .entries(self.tokens.iter().map(|token| &token.name))
            .finish()
    }
}

impl TokenStore {
    /// Reads a tokens file (TOML, `[[token]] name = .. sha256 = .. scopes = [..]`).
    pub fn load(path: &Path) -> Result<TokenStore, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        TokenStore::from_toml(&text)
    }

    /// Parses the TOML text of a tokens file.
    pub fn from_toml(text: &str) -> Result<TokenStore, ConfigError> {
        let file: TokensFile =
            toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))?;
        let mut tokens: Vec<StoredToken> = Vec::with_capacity(file.token.len());
        for (index, entry) in file.token.into_iter().enumerate() {
            let which = format!("token #{} ('{}')", index + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "token #{} has an empty name",
                    index + 1
                )));
            }
            let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{which}: sha256 must be 64 hexadecimal digits (the SHA-256 of the token)"
                ))
            })?;
            if tokens.iter().any(|token| token.digest == digest) {
                return Err(ConfigError::Invalid(format!(
                    "{which}: the same token is listed twice"
                )));
            }
            let mut scopes = Vec::with_capacity(entry.scopes.len());
            for name in &entry.scopes {
                let scope = Scope::from_name(name).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{which}: unknown scope '{name}' (known: calls.read, calls.write, calls.delete, calls.all, calls.voice)"
                    ))
                })?;
                if !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
            tokens.push(StoredToken {
                name: entry.name,
                digest,
                scopes,
            });
        }
        Ok(TokenStore {
            tokens: tokens.into(),
        })
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is known (every request is then refused).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The grant of a presented bearer token, if it is known. Every stored digest is compared,
    /// each in constant time, so the time taken says nothing about which digest (or how much
    /// of one) matched.
    pub(crate) fn authenticate(&self, token: &str) -> Option<Grant> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (index, stored) in self.tokens.iter().enumerate() {
            let equal = constant_time_eq(&presented, &stored.digest);
            if equal && found.is_none() {
                found = Some(index);
            }
        }
        found.map(|index| Grant {
            actor: self.tokens[index].name.clone(),
            scopes: self.tokens[index].scopes.clone(),
        })
    }
}

/// Compares two digests without an early exit: every byte is looked at.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    #[test]
    fn finds_a_token_by_its_digest_and_grants_its_scopes() {
        let text = format!(
            "[[token]]\nname = \"crm-sync\"\nsha256 = \"{}\"\nscopes = [\"calls.read\", \"calls.write\"]\n\n\
             [[token]]\nname = \"telephony\"\nsha256 = \"{}\"\nscopes = [\"calls.all\", \"calls.voice\"]\n",
            hex("secret-one"),
            hex("secret-two").to_uppercase()
        );
        let store = TokenStore::from_toml(&text).unwrap();
        assert_eq!(store.len(), 2);
        let crm = store.authenticate("secret-one").unwrap();
        assert_eq!(crm.actor, "crm-sync");
        assert!(crm.allows(Scope::Read) && crm.allows(Scope::Write));
        assert!(!crm.allows(Scope::Delete) && !crm.allows(Scope::Voice));
        let voice = store.authenticate("secret-two").unwrap();
        assert!(voice.allows(Scope::Delete) && voice.allows(Scope::Voice));
        assert_eq!(store.authenticate("secret-three"), None);
        assert_eq!(store.authenticate(""), None);
        assert!(!format!("{store:?}").contains(&hex("secret-one")));
    }

    #[test]
    fn calls_all_does_not_include_voice() {
        let grant = Grant {
            actor: "a".into(),
            scopes: vec![Scope::All],
        };
        assert!(grant.allows(Scope::Read));
        assert!(!grant.allows(Scope::Voice));
    }

    #[test]
    fn refuses_bad_files() {
        let bad = [
            "[[token]]\nname = \"x\"\nsha256 = \"abc\"\nscopes = []\n",
            "[[token]]\nname = \"x\"\nsha256 = \"zz\"\n",
            "[[token]]\nname = \"\"\nsha256 = \"\"\n",
            "not toml at all [",
            "[[token]]\nname = \"x\"\nsecret = \"y\"\n",
        ];
        for text in bad {
            assert!(TokenStore::from_toml(text).is_err(), "{text}");
        }
        let unknown_scope = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{}\"\nscopes = [\"calls.everything\"]\n",
            hex("t")
        );
        let error = TokenStore::from_toml(&unknown_scope).unwrap_err();
        assert!(error.to_string().contains("calls.everything"), "{error}");
        let twice = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{0}\"\n[[token]]\nname = \"y\"\nsha256 = \"{0}\"\n",
            hex("t")
        );
        assert!(TokenStore::from_toml(&twice).is_err());
        assert!(TokenStore::from_toml("").unwrap().is_empty());
        assert!(matches!(
            TokenStore::load(Path::new("/nonexistent/tokens.toml")),
            Err(ConfigError::Io { .. })
        ));
    }
}
