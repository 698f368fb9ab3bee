//! An echo server: every message goes back on the connection it came on.
//!
//! ```text
//! cargo run --example echo_server -- [ADDR]      # default 127.0.0.1:0 (any free port)
//! ```
//! Prints `listening on IP:PORT` once it accepts connections, then serves until its standard input
//! closes (or it is killed). Like a Ceph monitor, its address nonce is 0, so clients reach it by
//! IP:PORT alone; its sessions are lossy for clients (the server decides), like an OSD's.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use msgr::proto::Config;
use msgr::{
    entity_type, AuthEntityName, ConnectionRef, Dispatcher, Message, Messenger, MessengerConfig,
    Policy, PosixStack,
};

struct Echo;

impl Dispatcher for Echo {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        let reply = Message::new(msg.header.msg_type, msg.front.clone()).with_tid(msg.header.tid);
        // On a worker thread `send` never waits; it fails only if the connection has closed.
        let _ = conn.send(reply);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| format!("{a:?} is not IP:PORT: {e}"))?,
        None => "127.0.0.1:0".parse()?,
    };
    let mut proto = Config::new(entity_type::OSD, AuthEntityName::parse("osd.0")?);
    proto.nonce = 0;
    proto.default_policy = Policy::stateless_server();
    let mut config = MessengerConfig::new(proto);
    config.workers.threads = 1;
    let mut server = Messenger::new(PosixStack::new(), config, Arc::new(Echo));
    server.bind(&[addr])?;
    server.start()?;
    let bound = server
        .my_addrs()
        .msgr2()
        .and_then(|a| a.sockaddr)
        .ok_or("no address bound")?;
    println!("listening on {bound}");
    // Serve until stdin closes.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    server.shutdown()?;
    Ok(())
}
