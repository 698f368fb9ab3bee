//! Connection security for in-process benchmarks: crc mode (auth none), or cephx with msgr2 secure mode
//! (AES-128-GCM). For secure runs the bench server plays the cephx authority (a monitor) with an
//! ephemeral key, and the client authenticates with that key, so the same ping-pong measures what
//! secure mode costs per message and per byte.

use std::sync::Arc;
use std::time::Instant;

use msgr::proto::auth::cephx::{CephxClient, CephxMonitor, ServiceSecrets, WallAnchor};
use msgr::proto::auth::crypto::CryptoKey;
use msgr::proto::auth::keyring::{Keyring, KeyringEntry};
use msgr::proto::auth::{ClientAuth, ConModes, ServerAuth, CON_MODE_CRC, CON_MODE_SECURE};
use msgr::proto::types::{entity_type, AuthEntityName};
use msgr::proto::Config;

/// `--con-mode`: msgr2's connection mode for the benchmark's connections.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConMode {
    /// crc32c integrity only, auth none.
    #[default]
    Crc,
    /// cephx + AES-128-GCM on every frame.
    Secure,
}

impl ConMode {
    pub fn name(self) -> &'static str {
        match self {
            ConMode::Crc => "crc",
            ConMode::Secure => "secure",
        }
    }
}

/// Keys and configuration for one benchmark's server and clients.
#[derive(Clone)]
pub struct Security {
    key: Option<CryptoKey>,
}

impl Security {
    pub fn new(mode: ConMode) -> Self {
        let key = (mode == ConMode::Secure)
            .then(|| CryptoKey::generate(&mut rand::rng(), msgr::proto::types::UTime::default()));
        Security { key }
    }

    fn client_name() -> AuthEntityName {
        AuthEntityName::new(entity_type::CLIENT, "bench")
    }

    /// The entity type the server announces and clients expect: a monitor when it is the cephx
    /// authority, an OSD otherwise.
    pub fn server_type(&self) -> u8 {
        if self.key.is_some() {
            entity_type::MON
        } else {
            entity_type::OSD
        }
    }

    pub fn apply_server(&self, cfg: &mut Config) {
        cfg.entity_type = self.server_type();
        let Some(key) = &self.key else { return };
        let mut keyring = Keyring::default();
        keyring.insert(KeyringEntry {
            name: Self::client_name(),
            key: key.clone(),
            caps: Vec::new(),
        });
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let anchor = WallAnchor::new(Instant::now(), since_epoch);
        let secrets = ServiceSecrets::generate(
            &[entity_type::MON],
            &mut rand::rng(),
            anchor.utime(Instant::now()),
        );
        cfg.auth_server =
            ServerAuth::cephx_monitor(Arc::new(CephxMonitor::new(keyring, secrets, anchor)));
        cfg.con_modes = ConModes::all(&[CON_MODE_SECURE, CON_MODE_CRC]);
    }

    pub fn apply_client(&self, cfg: &mut Config) {
        let Some(key) = &self.key else { return };
        cfg.auth_name = Self::client_name();
        cfg.auth_client =
            ClientAuth::cephx(Arc::new(CephxClient::new(Self::client_name(), key.clone())));
        cfg.con_modes = ConModes::all(&[CON_MODE_SECURE]);
    }
}

impl Default for Security {
    fn default() -> Self {
        Security::new(ConMode::Crc)
    }
}
