//! `msgr serve --auth cephx` (msgr as the cephx authority) and `msgr ping --auth cephx` with a keyring:
//! secure mode negotiated, a wrong key refused with a clear message, bad flag combinations refused.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msgr::proto::auth::crypto::CryptoKey;
use msgr::proto::auth::keyring::{Keyring, KeyringEntry};
use msgr::proto::types::{entity_type, AuthEntityName, UTime};

const MSGR: &str = env!("CARGO_BIN_EXE_msgr");

fn keyring_file(dir: &std::path::Path, name: &str, key: &CryptoKey) -> std::path::PathBuf {
    let mut k = Keyring::default();
    k.insert(KeyringEntry {
        name: AuthEntityName::new(entity_type::CLIENT, "admin"),
        key: key.clone(),
        caps: vec![("mon".into(), "allow *".into())],
    });
    let p = dir.join(name);
    std::fs::write(&p, k.to_text()).unwrap();
    p
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ping_authenticates_with_cephx_in_secure_mode_and_a_wrong_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("msgr-cli-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand::rng();
    let good = CryptoKey::generate(&mut rng, UTime::default());
    let bad = CryptoKey::generate(&mut rng, UTime::default());
    let server_keys = keyring_file(&dir, "server.keyring", &good);
    let client_keys = keyring_file(&dir, "client.keyring", &good);
    let wrong_keys = keyring_file(&dir, "wrong.keyring", &bad);

    let mut serve = Child(
        Command::new(MSGR)
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--type",
                "mon",
                "--duration",
                "20",
                "--auth",
                "cephx",
            ])
            .arg("--keyring")
            .arg(&server_keys)
            .args(["--con-mode", "secure crc"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(serve.0.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(Instant::now() < deadline, "serve printed no address");
        let line = lines.next().expect("serve exited").unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().to_string();
        }
    };

    let ping = |keyring: &std::path::Path, modes: &str| {
        Command::new(MSGR)
            .args([
                "ping",
                &addr,
                "--count",
                "2",
                "--interval",
                "10",
                "--timeout",
                "5",
                "--auth",
                "cephx",
            ])
            .arg("--keyring")
            .arg(keyring)
            .args(["--name", "client.admin", "--con-mode", modes])
            .output()
            .unwrap()
    };
    let ok = ping(&client_keys, "secure");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("secure mode"), "{out}");
    assert!(out.contains("2 answered"), "{out}");

    let crc = ping(&client_keys, "crc");
    assert!(crc.status.success());
    assert!(String::from_utf8_lossy(&crc.stdout).contains("crc mode"));

    let refused = ping(&wrong_keys, "secure");
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        err.contains("auth") || err.contains("refused") || err.contains("key"),
        "{err}"
    );

    // Flag combinations that cannot work are usage errors (exit 2), said clearly.
    let no_keyring = Command::new(MSGR)
        .args(["ping", &addr, "--auth", "cephx"])
        .output()
        .unwrap();
    assert_eq!(no_keyring.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_keyring.stderr).contains("--keyring"));
    let secure_without_cephx = Command::new(MSGR)
        .args(["ping", &addr, "--con-mode", "secure"])
        .output()
        .unwrap();
    assert_eq!(secure_without_cephx.status.code(), Some(2));
    let missing = Command::new(MSGR)
        .args([
            "ping",
            &addr,
            "--auth",
            "cephx",
            "--keyring",
            "/nonexistent/keyring",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/keyring"));
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_runs_in_secure_mode_and_says_so() {
    let dir = std::env::temp_dir().join(format!("msgr-cli-bench-secure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for stack in ["mem", "posix"] {
        let json = dir.join(format!("{stack}.json"));
        let out = Command::new(MSGR)
            .args([
                "bench",
                "--stack",
                stack,
                "--sizes",
                "4k",
                "--count",
                "200",
                "--warmup",
                "20",
                "--con-mode",
                "secure",
            ])
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{stack}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(v["header"]["conn_mode"], "secure", "{stack}: {v}");
        assert_eq!(v["results"][0]["count"], 200, "{stack}: {v}");
    }
    // Against a server in another process there is no shared key: refused as a usage error.
    let out = Command::new(MSGR)
        .args(["bench", "run", "v2:127.0.0.1:1/1", "--con-mode", "secure"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
