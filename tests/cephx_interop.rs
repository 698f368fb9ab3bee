//! msgr against a REAL Ceph monitor running cephx (scripts/ceph-mon.sh start --auth cephx: a keyring
//! made by ceph-authtool, modes "secure crc" allowed): the messenger authenticates as client.admin,
//! once asking for crc and once for secure, checks the mode AUTH_DONE chose, and fetches the MonMap
//! (fsid checked); a wrong key is refused by the monitor and msgr says so clearly.
//! Skipped with a loud note when ceph-mon is not installed, unless MSGR_REQUIRE_CEPH=1 (CI): then it
//! fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::{messenger, no_faults, proto_config};
use msgr::msgr::{ConnectionRef, Dispatcher};
use msgr::msgs::{CephMessage, MMonGetMap, MMonMap};
use msgr::proto::auth::{
    cephx_client_from_keyring, ClientAuth, ConModes, CryptoKey, Keyring, KeyringEntry,
    CON_MODE_CRC, CON_MODE_SECURE,
};
use msgr::proto::types::{entity_type, AddrVec, AuthEntityName, EntityAddr, UTime};
use msgr::proto::{Error, Message, Policy};

/// Stops the monitor and removes its directory, even when the test panics.
struct MonGuard {
    script: PathBuf,
    dir: PathBuf,
}

impl Drop for MonGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn free_port(avoid: u16) -> u16 {
    let mut x = (std::process::id() as u64) ^ 0x5851_f42d_4c95_7f2d;
    for i in 0..400u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407 + i);
        let port = 30_000 + ((x >> 33) % 8_000) as u16;
        if port != avoid && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 30000..38000");
}

fn env_value(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{key} missing from ceph-mon.sh output:\n{env}"))
        .to_string()
}

/// Records messages and the reset reason.
#[derive(Default)]
struct Recorder {
    msgs: Mutex<Vec<Message>>,
    reset: Mutex<Option<Error>>,
}

impl Dispatcher for Recorder {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        self.msgs.lock().unwrap().push(msg);
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &Error) {
        *self.reset.lock().unwrap() = Some(why.clone());
    }
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Authenticate with `auth`, offering only `mode`, and ask for the MonMap.
fn fetch_monmap(auth: ClientAuth, mode: u32, mon: &AddrVec) -> (Arc<Recorder>, ConnectionRef) {
    let mut cfg = proto_config(entity_type::CLIENT, "client.admin");
    cfg.auth_client = auth;
    cfg.con_modes = ConModes::all(&[mode]);
    cfg.handshake_timeout = Duration::from_secs(10);
    let rec = Arc::new(Recorder::default());
    let mut m = messenger(cfg, 1, no_faults(), rec.clone());
    m.start().unwrap();
    let conn = m
        .connect_to(entity_type::MON, mon, Policy::lossy_client())
        .unwrap();
    conn.send(MMonGetMap.to_message()).unwrap();
    let got = wait_for(Duration::from_secs(15), || {
        let has_map = rec
            .msgs
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.header.msg_type == MMonMap::MSG_TYPE);
        (has_map || rec.reset.lock().unwrap().is_some()).then_some(())
    });
    assert!(got.is_some(), "neither a MonMap nor a reset within 15 s");
    std::mem::forget(m); // shut down with the process: the test only needs what it recorded
    (rec, conn)
}

#[test]
fn cephx_against_a_real_monitor_crc_secure_and_wrong_key() {
    if !on_path("ceph-mon") || !on_path("ceph-authtool") {
        let msg = "ceph-mon / ceph-authtool not installed (apt-get install --no-install-recommends ceph-mon ceph-common)";
        if std::env::var("MSGR_REQUIRE_CEPH").as_deref() == Ok("1") {
            panic!("MSGR_REQUIRE_CEPH=1 but {msg}");
        }
        eprintln!("\n!!!!!!!! NOTE: {msg}: SKIPPING the real-monitor cephx test !!!!!!!!\n");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-mon.sh");
    let dir = std::env::temp_dir().join(format!("msgr-cephx-mon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = MonGuard {
        script: script.clone(),
        dir: dir.clone(),
    };
    let v2 = free_port(0);
    let v1 = free_port(v2);
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .args(["--v2-port", &v2.to_string(), "--v1-port", &v1.to_string()])
        .args(["--auth", "cephx"])
        .output()
        .expect("run ceph-mon.sh");
    assert!(
        out.status.success(),
        "ceph-mon.sh start failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(env_value(&env, "AUTH"), "cephx");
    let keyring = env_value(&env, "KEYRING");
    let fsid = env_value(&env, "FSID");
    let mon = AddrVec(vec![EntityAddr::msgr2(
        env_value(&env, "V2_ADDR").parse().unwrap(),
        0,
    )]);

    for (mode, name) in [(CON_MODE_CRC, "crc"), (CON_MODE_SECURE, "secure")] {
        let auth = cephx_client_from_keyring(&keyring, "client.admin").unwrap();
        let (rec, conn) = fetch_monmap(auth, mode, &mon);
        assert!(
            rec.reset.lock().unwrap().is_none(),
            "{name}: {:?}",
            rec.reset.lock().unwrap()
        );
        assert_eq!(conn.peer().con_mode, mode, "{name}: AUTH_DONE's mode");
        assert_ne!(
            conn.peer().global_id,
            0,
            "{name}: the monitor gave a global id"
        );
        let msgs = rec.msgs.lock().unwrap();
        let map = msgs
            .iter()
            .find(|m| m.header.msg_type == MMonMap::MSG_TYPE)
            .unwrap();
        let map = MMonMap::from_message(map).unwrap();
        assert_eq!(map.monmap.fsid.to_string(), fsid, "{name}");
        eprintln!(
            "cephx + {name}: MonMap epoch {} fsid {fsid}",
            map.monmap.epoch
        );
    }

    // The right name with another key: the monitor refuses, msgr says who and why.
    let mut rng = rand::rng();
    let wrong = CryptoKey::generate(&mut rng, UTime::default());
    let mut kr = Keyring::default();
    kr.insert(KeyringEntry {
        name: AuthEntityName::new(entity_type::CLIENT, "admin"),
        key: wrong,
        caps: Vec::new(),
    });
    let path = dir.join("wrong.keyring");
    std::fs::write(&path, kr.to_text()).unwrap();
    let auth = cephx_client_from_keyring(path.to_str().unwrap(), "client.admin").unwrap();
    let (rec, _conn) = fetch_monmap(auth, CON_MODE_SECURE, &mon);
    assert!(
        rec.msgs.lock().unwrap().is_empty(),
        "no message without the key"
    );
    let err = rec.reset.lock().unwrap().clone().expect("refused");
    let text = err.to_string();
    eprintln!("wrong key: {text}");
    assert!(matches!(err, Error::AuthFailed(_)), "{err:?}");
    assert!(
        text.contains("client.admin") && text.contains("refused"),
        "{text}"
    );
}
