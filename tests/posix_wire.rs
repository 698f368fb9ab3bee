//! What a lossless ping-pong puts on the wire (issue 15): replies carry the acknowledgement of the
//! message they answer, so a bare ACK frame goes out only when nothing else was sent, and the frame
//! counters (`frames_in`, `frames_out`, `acks_out`) say so.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::suite::wait_until;
use msgr::proto::Config;
use msgr::{
    entity_type, AuthEntityName, ConnectionRef, Dispatcher, Message, Messenger, MessengerConfig,
    Policy, PosixStack,
};

const PING: u16 = 0x4001;
const PONG: u16 = 0x4002;
const ROUND_TRIPS: u64 = 300;

fn config(entity: u8, name: &str, policy: Policy) -> MessengerConfig {
    let mut p = Config::new(entity, AuthEntityName::parse(name).unwrap());
    p.default_policy = policy;
    let mut c = MessengerConfig::new(p);
    c.workers.threads = 1;
    c.workers.pin_cores = false;
    c
}

/// Answers every PING with a PONG from inside the dispatcher (on the worker thread).
struct Echo;

impl Dispatcher for Echo {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if msg.header.msg_type == PING {
            let _ = conn.send(Message::new(PONG, msg.front.clone()).with_tid(msg.header.tid));
        }
    }
}

/// Sends the next PING when a PONG arrives, until `ROUND_TRIPS`.
#[derive(Default)]
struct PingPong {
    pongs: AtomicU64,
    conn: Mutex<Option<ConnectionRef>>,
}

impl Dispatcher for PingPong {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        if msg.header.msg_type != PONG {
            return;
        }
        let n = self.pongs.fetch_add(1, Ordering::SeqCst) + 1;
        if n < ROUND_TRIPS {
            let _ = conn.send(Message::new(PING, Bytes::from_static(&[9u8; 64])).with_tid(n + 1));
        }
    }
}

#[test]
fn lossless_replies_carry_the_ack_and_bare_acks_are_rare() {
    for (client_policy, server_policy) in [
        (Policy::lossless_client(), Policy::stateful_server()),
        (Policy::lossy_client(), Policy::stateless_server()),
    ] {
        let mut srv = Messenger::new(
            PosixStack::new(),
            config(entity_type::OSD, "osd.0", server_policy),
            Arc::new(Echo),
        );
        srv.bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        srv.start().unwrap();
        let pp = Arc::new(PingPong::default());
        let mut cli = Messenger::new(
            PosixStack::new(),
            config(entity_type::CLIENT, "client.wire", client_policy),
            pp.clone(),
        );
        cli.start().unwrap();
        let conn = cli
            .connect_to(entity_type::OSD, srv.my_addrs(), client_policy)
            .unwrap();
        *pp.conn.lock().unwrap() = Some(conn.clone());
        conn.send(Message::new(PING, Bytes::from_static(&[9u8; 64])).with_tid(1))
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || pp.pongs.load(Ordering::SeqCst)
                == ROUND_TRIPS),
            "{} of {ROUND_TRIPS} round trips",
            pp.pongs.load(Ordering::SeqCst)
        );
        // Let a final bare ack (the client's, for the last PONG) go out.
        std::thread::sleep(Duration::from_millis(100));
        let (s, c) = (srv.counters(), cli.counters());
        assert_eq!(s.msgs_in, ROUND_TRIPS, "{s:?}");
        assert_eq!(s.msgs_out, ROUND_TRIPS, "{s:?}");
        // Handshake frames, then one frame per message, and a handful of bare acks at most.
        for (side, k) in [("server", &s), ("client", &c)] {
            assert!(k.frames_out >= k.msgs_out, "{side}: {k:?}");
            assert!(k.frames_in >= ROUND_TRIPS, "{side}: {k:?}");
            assert!(
                k.frames_out - k.msgs_out <= 8,
                "{side} sent {} frames beyond its {} messages: {k:?}",
                k.frames_out - k.msgs_out,
                k.msgs_out
            );
            if client_policy.lossy {
                assert_eq!(k.acks_out, 0, "{side}: a lossy session never acks: {k:?}");
            } else {
                assert!(k.acks_out <= 3, "{side}: {} bare acks: {k:?}", k.acks_out);
            }
        }
        conn.mark_down();
        cli.shutdown().unwrap();
        srv.shutdown().unwrap();
    }
}
