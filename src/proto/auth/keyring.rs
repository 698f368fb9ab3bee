//! Ceph keyring files: `[client.admin]` sections with `key = BASE64` and `caps SERVICE = "..."`.
//!
//! Owns: parsing (the INI dialect `ceph-authtool` writes: `;` / `#` comments, tab-indented
//! `name = value`, optional quotes) into [`Keyring`], lookups by entity name, and writing the same
//! format back. The base64 holds an encoded [`CryptoKey`], not a raw AES key.
//!
//! Invariants: every error names the file and line ([`KeyringError`]); a keyring's `Debug` shows
//! entity names only, never a key.

use std::fmt;
use std::path::{Path, PathBuf};

use super::crypto::CryptoKey;
use crate::proto::types::AuthEntityName;

/// One `[name]` section: the entity, its key and its capabilities (`caps mon = "allow *"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringEntry {
    pub name: AuthEntityName,
    pub key: CryptoKey,
    /// `(service, capability)` pairs in file order, e.g. `("mon", "allow *")`.
    pub caps: Vec<(String, String)>,
}

impl KeyringEntry {
    /// The capability string for `service` ("mon", "osd", …), if any.
    pub fn caps_for(&self, service: &str) -> Option<&str> {
        self.caps
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, c)| c.as_str())
    }
}

/// The entries of a keyring file, in file order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    entries: Vec<KeyringEntry>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.entries.iter().map(|e| e.name.to_string()))
            .finish()
    }
}

/// A keyring that could not be read or parsed, with the place to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("keyring {path}: cannot read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("keyring {path}:{line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("keyring {path}: no key for {name}")]
    NoSuchEntity { path: PathBuf, name: String },
}

impl Keyring {
    /// Read and parse the keyring file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyringError> {
        let path = path.as_ref();
        // The text holds keys: wiped once parsed.
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            KeyringError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?);
        Keyring::parse(&text, path)
    }

    /// Parse keyring text; `path` is only used to name the source in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, KeyringError> {
        let path = path.as_ref();
        let bad = |line: usize, reason: String| KeyringError::Malformed {
            path: path.to_owned(),
            line,
            reason,
        };
        // (line of the header, name, key, caps)
        let mut sections: Vec<Section> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| bad(n, "section header without closing ']'".into()))?
                    .trim();
                let name = AuthEntityName::parse(name)
                    .map_err(|e| bad(n, format!("bad entity name {name:?}: {e}")))?;
                if sections.iter().any(|s| s.1 == name) {
                    return Err(bad(n, format!("duplicate section [{name}]")));
                }
                sections.push((n, name, None, Vec::new()));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(n, format!("expected 'name = value', got {line:?}")));
            };
            let Some(section) = sections.last_mut() else {
                return Err(bad(n, "setting before any [section]".into()));
            };
            let k = k.split_whitespace().collect::<Vec<_>>();
            let v = unquote(v.trim());
            match k.as_slice() {
                ["key"] => {
                    if section.2.is_some() {
                        return Err(bad(n, format!("second key for [{}]", section.1)));
                    }
                    let key = CryptoKey::from_base64(v).map_err(|e| bad(n, e))?;
                    section.2 = Some(key);
                }
                ["caps", service] => section.3.push(((*service).to_owned(), v.to_owned())),
                // Other settings Ceph writes (auid, …) carry nothing we use.
                [_, ..] => {}
                [] => return Err(bad(n, "empty setting name".into())),
            }
        }
        let mut entries = Vec::with_capacity(sections.len());
        for (line, name, key, caps) in sections {
            let key = key.ok_or_else(|| bad(line, format!("section [{name}] has no key")))?;
            entries.push(KeyringEntry { name, key, caps });
        }
        Ok(Keyring { entries })
    }

    pub fn entries(&self) -> &[KeyringEntry] {
        &self.entries
    }

    pub fn get(&self, name: &AuthEntityName) -> Option<&KeyringEntry> {
        self.entries.iter().find(|e| &e.name == name)
    }

    /// The key of `name`, or an error naming the keyring (for "--keyring F --name N" checks).
    pub fn key_for(
        &self,
        name: &AuthEntityName,
        path: impl AsRef<Path>,
    ) -> Result<&CryptoKey, KeyringError> {
        self.get(name)
            .map(|e| &e.key)
            .ok_or_else(|| KeyringError::NoSuchEntity {
                path: path.as_ref().to_owned(),
                name: name.to_string(),
            })
    }

    /// Add or replace an entry.
    pub fn insert(&mut self, entry: KeyringEntry) {
        match self.entries.iter_mut().find(|e| e.name == entry.name) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    /// The keyring in the format `ceph-authtool` writes (this text contains the keys).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for e in &self.entries {
            s.push_str(&format!("[{}]\n\tkey = {}\n", e.name, e.key.to_base64()));
            for (svc, cap) in &e.caps {
                s.push_str(&format!("\tcaps {svc} = \"{cap}\"\n"));
            }
        }
        s
    }
}

/// A section being parsed: header line, name, key, caps.
type Section = (
    usize,
    AuthEntityName,
    Option<CryptoKey>,
    Vec<(String, String)>,
);

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::types::entity_type;

    const CAPTURED: &str = include_str!("../../../tests/data/ceph16-mon-cephx-secure/keyring");

    #[test]
    fn parses_the_captured_keyring() {
        let k = Keyring::parse(CAPTURED, "keyring").unwrap();
        assert_eq!(k.entries().len(), 2);
        let admin = k
            .get(&AuthEntityName::new(entity_type::CLIENT, "admin"))
            .unwrap();
        assert_eq!(
            admin.key.to_base64(),
            "AQD6uAtrJ6AxChAAWOI+7K90ygtmsTa0r8b4Hw=="
        );
        assert_eq!(admin.caps_for("mon"), Some("allow *"));
        assert_eq!(admin.caps.len(), 4);
        assert_eq!(k.entries()[0].name.to_string(), "mon.");
        let again = Keyring::parse(&k.to_text(), "x").unwrap();
        assert_eq!(again, k);
        let dbg = format!("{k:?}");
        assert!(
            dbg.contains("client.admin") && !dbg.contains("AQD6"),
            "{dbg}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("[client.a]\n\tkey = AQ==\n", 2, "does not decode"),
            ("[client.a]\n\tkey = AQ=*=\n", 2, "base64"),
            ("key = x\n", 1, "before any"),
            ("[client.a\n", 1, "closing"),
            ("[client.a]\n\tcaps mon = \"allow *\"\n", 1, "no key"),
            ("[client.a]\nwhat\n", 2, "expected"),
            (
                "[client.a]\n\tkey = AQD6uAtrJ6AxChAAWOI+7K90ygtmsTa0r8b4Hw==\n[client.a]\n",
                3,
                "duplicate",
            ),
        ];
        for (text, line, what) in cases {
            let e = Keyring::parse(text, "/etc/ceph/k").unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, KeyringError::Malformed { line: l, .. } if l == line),
                "{msg}"
            );
            assert!(
                msg.starts_with(&format!("keyring /etc/ceph/k:{line}: ")),
                "{msg}"
            );
            assert!(msg.contains(what), "{msg}");
        }
        let e = Keyring::load("/nonexistent/keyring").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/keyring"));
        let k = Keyring::parse(CAPTURED, "kr").unwrap();
        let e = k
            .key_for(&AuthEntityName::new(entity_type::CLIENT, "bob"), "kr")
            .unwrap_err();
        assert_eq!(e.to_string(), "keyring kr: no key for client.bob");
    }
}
