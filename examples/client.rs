//! A client of `echo_server`: sends numbered messages one at a time and waits for each echo. When the
//! session resets (the server restarted), it says so and sends the unanswered message again on a new
//! session.
//!
//! ```text
//! cargo run --example client -- IP:PORT [COUNT] [INTERVAL_MS]    # defaults: 10 messages, 0 ms apart
//! ```
//! Prints `reply N` per echo and `done: COUNT replies, R resets`; exits 1 if it cannot finish within
//! 30 s.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::proto::Config;
use msgr::{
    entity_type, AddrVec, AuthEntityName, ConnectionRef, Dispatcher, EntityAddr, Message,
    Messenger, MessengerConfig, Policy, PosixStack,
};

/// What the worker tells the main thread.
enum Heard {
    Reply(u64),
    Reset(String),
}

struct Client(Mutex<mpsc::Sender<Heard>>);

impl Dispatcher for Client {
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        let _ = self.0.lock().unwrap().send(Heard::Reply(msg.header.tid));
    }
    fn ms_handle_reset(&self, _conn: &ConnectionRef, why: &msgr::proto::Error) {
        let _ = self.0.lock().unwrap().send(Heard::Reset(why.to_string()));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or("usage: client IP:PORT [COUNT] [INTERVAL_MS]")?
        .parse()?;
    let count: u64 = args.next().map_or(Ok(10), |s| s.parse())?;
    let interval = Duration::from_millis(args.next().map_or(Ok(0), |s| s.parse())?);
    let server = AddrVec(vec![EntityAddr::msgr2(addr, 0)]);

    let (tx, rx) = mpsc::channel();
    let mut proto = Config::new(
        entity_type::CLIENT,
        AuthEntityName::parse("client.example")?,
    );
    proto.max_backoff = Duration::from_millis(200);
    let mut config = MessengerConfig::new(proto);
    config.workers.threads = 1;
    let mut client = Messenger::new(PosixStack::new(), config, Arc::new(Client(Mutex::new(tx))));
    client.start()?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resets = 0;
    for tid in 1..=count {
        'resend: loop {
            if Instant::now() > deadline {
                return Err(format!("gave up at message {tid} after 30 s").into());
            }
            // The session to the server: the same one until it resets, then a new one.
            let conn = client.connect_to(entity_type::OSD, &server, Policy::lossy_client())?;
            conn.send(Message::new(0x4000, Bytes::from(format!("hello {tid}"))).with_tid(tid))?;
            let wait_until = Instant::now() + Duration::from_secs(2);
            loop {
                let left = wait_until.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Heard::Reply(t)) if t == tid => break 'resend,
                    Ok(Heard::Reply(_)) => {} // an echo of an earlier try
                    Ok(Heard::Reset(why)) => {
                        resets += 1;
                        println!("session reset ({why}): sending {tid} again");
                        std::thread::sleep(Duration::from_millis(50));
                        continue 'resend;
                    }
                    Err(_) => {
                        // No answer: start over on a fresh session.
                        conn.mark_down();
                        continue 'resend;
                    }
                }
            }
        }
        println!("reply {tid}");
        std::thread::sleep(interval);
    }
    println!("done: {count} replies, {resets} resets");
    client.shutdown()?;
    Ok(())
}
