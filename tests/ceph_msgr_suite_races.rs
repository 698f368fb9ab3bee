//! Ceph's test_msgr.cc race cases, ported (feature `interceptor`): connection races, reconnect races and
//! handshakes cut between CLIENT_IDENT and SERVER_IDENT, driven step by step through the test
//! interceptor (`proto::intercept`) as Ceph drives ProtocolV2's INTERCEPT points. Each test asserts
//! what Ceph's does (messages per session, who is connected, peer types) and more: which side's
//! transport wins, that exactly one TCP connection survives, the callbacks each side saw and how
//! often each step ran.
//!
//! Settings as Ceph's main(): ms_max_backoff 1 s, initial back-off 0.2 s, auth none. Two messengers in
//! one process, three workers each: a paused step blocks its worker thread (as in Ceph), the others
//! keep accepting and resolving.

mod common;

use std::sync::Arc;

use common::suite::*;
use msgr::proto::intercept::{InterceptAction, InterceptStep};
use msgr::proto::types::entity_type;
use msgr::proto::{Policy, Role};

const WORKERS: usize = 3;

/// A Pair whose messengers each have a TestInterceptor.
struct Race {
    p: Pair,
    srv_i: Arc<TestInterceptor>,
    cli_i: Arc<TestInterceptor>,
}

fn race(srv_policy: Policy, cli_policy: Policy, srv_replies: bool) -> Race {
    let srv_i = Arc::new(TestInterceptor::default());
    let cli_i = Arc::new(TestInterceptor::default());
    let (si, ci) = (srv_i.clone(), cli_i.clone());
    let p = Pair::new(
        srv_policy,
        cli_policy,
        srv_replies,
        WORKERS,
        move |sc, cc| {
            sc.interceptor = Some(si.clone());
            cc.interceptor = Some(ci.clone());
        },
    );
    Race { p, srv_i, cli_i }
}

use InterceptAction::{Continue, Fail};
use InterceptStep::*;

/// Scenario: A connects to B, and B connects to A at the same time; both pause before CLIENT_IDENT.
/// The lower address (the server's) wins: its outgoing transport carries the one session.
#[test]
fn connection_race_test() {
    let Race { p, srv_i, cli_i } = race(
        Policy::lossless_peer_reuse(),
        Policy::lossless_peer_reuse(),
        false,
    );
    cli_i.breakpoint(ClientIdent);
    srv_i.breakpoint(ClientIdent);

    let c2s = p.c2s();
    c2s.send(ping()).unwrap();
    let s2c = p.s2c();
    s2c.send(ping()).unwrap();

    cli_i.wait_conn(ClientIdent, c2s.id());
    srv_i.wait_conn(ClientIdent, s2c.id());
    // Both connections (A->B, B->A) are paused just before sending CLIENT_IDENT.
    cli_i.remove_bp(ClientIdent);
    srv_i.remove_bp(ClientIdent);
    cli_i.proceed(ClientIdent, Continue);
    srv_i.proceed(ClientIdent, Continue);

    assert!(p.cli_d.wait_new(), "client got no message");
    assert!(p.srv_d.wait_new(), "server got no message");

    assert!(s2c.is_connected());
    assert_eq!(p.srv_d.count(&s2c), 1);
    assert_eq!(s2c.peer().entity_type, entity_type::CLIENT);
    assert!(c2s.is_connected());
    assert_eq!(p.cli_d.count(&c2s), 1);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);

    // The server's dial won: the client accepted it into c2s's session, the server connected once.
    let (srv_port, cli_port) = p.ports();
    assert!(wait_until(WAIT, || established_tcp(&[srv_port, cli_port]) == 1));
    assert_eq!(
        established_tcp(&[cli_port]),
        1,
        "the surviving TCP connection is the server's dial"
    );
    assert_eq!(p.srv_d.connects(&s2c), 1);
    assert_eq!(p.srv_d.accepts_total(), 0);
    assert_eq!(p.cli_d.connects_total(), 0);
    assert_eq!(p.cli_d.accepts_total(), 1);
    for d in [&p.srv_d, &p.cli_d] {
        assert_eq!(d.resets_total(), 0);
        assert_eq!(d.remote_resets_total(), 0);
    }
    assert_eq!(cli_i.count_step(c2s.id(), ClientIdent), 1);
    assert_eq!(srv_i.count_step(s2c.id(), ClientIdent), 1);
    assert_eq!(cli_i.count_step(c2s.id(), Ready), 1);
    assert_eq!(srv_i.count_step(s2c.id(), Ready), 1);
    assert_eq!(p.cli.counters().connections, 1);
    assert_eq!(p.srv.counters().connections, 1);
    p.assert_no_duplicates();
}

/// Scenario: A connects to B, and B connects to A at the same time. The first (A -> B) connection gets
/// to the message flow handshake, the second (B -> A) is stuck before sending its banner. After A sends
/// CLIENT_IDENT to B, the first connection wins and B moves the second connection's session onto it
/// while that one is still in its banner exchange.
#[test]
fn connection_race_reuse_banner_test() {
    let Race { p, srv_i, cli_i } = race(
        Policy::lossless_peer_reuse(),
        Policy::lossless_peer_reuse(),
        false,
    );
    // Pause the server's dial before CLIENT_IDENT.
    srv_i.breakpoint(ClientIdent);
    let s2c = p.s2c();
    s2c.send(ping()).unwrap();
    srv_i.wait(ClientIdent);
    srv_i.remove_bp(ClientIdent);

    // The second connection must stay in its banner exchange: the server's end of it will pause before
    // its banner (set before the client dials, so that it cannot have passed that step already).
    srv_i.breakpoint(Banner);
    // Pause the client's dial before its banner.
    cli_i.breakpoint(Banner);
    let c2s = p.c2s();
    c2s.send(ping()).unwrap();
    cli_i.wait_for(Banner, |at| at.role == Role::Client);
    cli_i.remove_bp(Banner);

    // The first connection sends CLIENT_IDENT.
    srv_i.proceed(ClientIdent, Continue);

    // CLIENT_IDENT reaches the client while c2s is in its banner exchange: the session moves.
    cli_i.breakpoint(Ready);
    cli_i.proceed(Banner, Continue);
    cli_i.wait(Ready);
    cli_i.remove_bp(Ready);

    // The server's accepted end of c2s's dial.
    let s2c_accepter = srv_i.wait_for(Banner, |at| at.role == Role::Server);
    srv_i.remove_bp(Banner);
    srv_i.proceed(Banner, Continue);
    cli_i.proceed(Ready, Continue);

    assert!(p.cli_d.wait_new(), "client got no message");
    assert!(p.srv_d.wait_new(), "server got no message");

    assert!(s2c.is_connected());
    assert_eq!(p.srv_d.count(&s2c), 1);
    assert_eq!(s2c.peer().entity_type, entity_type::CLIENT);
    assert!(c2s.is_connected());
    assert_eq!(p.cli_d.count(&c2s), 1);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);

    // c2s's own transport was closed when its session moved: the server never accepted a session on it.
    let (srv_port, cli_port) = p.ports();
    assert!(wait_until(WAIT, || p.srv.counters().connections == 1));
    assert_eq!(p.srv_d.accepts_total(), 0);
    assert!(srv_i.count_step(s2c_accepter.id, ServerIdent) == 0);
    assert!(wait_until(WAIT, || established_tcp(&[srv_port, cli_port]) == 1));
    assert_eq!(established_tcp(&[cli_port]), 1);

    // Established exactly once, never faulted and reconnected.
    assert_eq!(
        cli_i.count_where(|at| at.id == c2s.id() && at.step == Banner && at.role == Role::Client),
        1
    );
    assert_eq!(cli_i.count_step(c2s.id(), Reconnect), 0);
    assert_eq!(cli_i.count_step(c2s.id(), Ready), 1);
    // The server connected once; the client accepted its dial into c2s.
    assert_eq!(p.srv_d.connects(&s2c), 1);
    assert_eq!(p.cli_d.accepts_total(), 1);
    assert_eq!(p.cli_d.connects_total(), 0);
    for d in [&p.srv_d, &p.cli_d] {
        assert_eq!(d.resets_total(), 0);
        assert_eq!(d.remote_resets_total(), 0);
    }
    p.assert_no_duplicates();
}

/// Scenario: A connects to B; A sends CLIENT_IDENT; B fails before sending SERVER_IDENT (with a
/// message queued for A); A (lossy) reconnects and both messages arrive.
#[test]
fn missing_server_iden_test() {
    let Race { p, srv_i, cli_i: _ } =
        race(Policy::stateful_server(), Policy::lossy_client(), false);
    srv_i.breakpoint(ServerIdent);

    let c2s = p.c2s();
    c2s.send(ping()).unwrap();

    let at = srv_i.wait(ServerIdent);
    srv_i.remove_bp(ServerIdent);
    // Ceph announces the accepted session before SEND_SERVER_IDENTITY: the dispatcher has its handle.
    let c2s_accepter = p.srv_d.last_accept().expect("accepted before SERVER_IDENT");
    assert_eq!(c2s_accepter.id(), at.id);

    // A message from this side, so that it is not closed as a half-accepted connection.
    c2s_accepter.send(ping()).unwrap();
    srv_i.proceed(ServerIdent, Fail);

    assert!(p.srv_d.wait_new(), "server got no message");
    assert!(p.cli_d.wait_new(), "client got no message");

    assert!(wait_until(WAIT, || c2s.is_connected()));
    assert_eq!(p.cli_d.count(&c2s), 1);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);
    assert!(wait_until(WAIT, || c2s_accepter.is_connected()));
    assert_eq!(p.srv_d.count(&c2s_accepter), 1);
    assert_eq!(c2s_accepter.peer().entity_type, entity_type::CLIENT);

    let (srv_port, cli_port) = p.ports();
    assert!(wait_until(WAIT, || established_tcp(&[srv_port, cli_port]) == 1));
    assert_eq!(srv_i.count_step(c2s_accepter.id(), ServerIdent), 2);
    assert_eq!(p.srv.counters().connections, 1);
    // The accepted session was announced twice (before the failed SERVER_IDENT, and when the client's
    // reconnect took it over); the client connected once; nobody was reset.
    assert_eq!(p.srv_d.accepts_total(), 2);
    assert_eq!(p.srv_d.connects_total(), 0);
    assert_eq!(p.cli_d.accepts_total(), 0);
    assert_eq!(p.cli_d.connects(&c2s), 1);
    for d in [&p.srv_d, &p.cli_d] {
        assert_eq!(d.resets_total(), 0);
        assert_eq!(d.remote_resets_total(), 0);
    }
}

/// Scenario: A connects to B; A sends CLIENT_IDENT; B fails before sending SERVER_IDENT (with a
/// message queued for A); A (lossless peer, nothing to send) goes to standby; B re-dials A and the
/// message arrives.
#[test]
fn missing_server_iden_test2() {
    let Race { p, srv_i, cli_i: _ } = race(Policy::lossless_peer(), Policy::lossless_peer(), false);
    srv_i.breakpoint(ServerIdent);

    let c2s = p.c2s();

    let at = srv_i.wait(ServerIdent);
    srv_i.remove_bp(ServerIdent);
    let c2s_accepter = p.srv_d.last_accept().expect("accepted before SERVER_IDENT");
    assert_eq!(c2s_accepter.id(), at.id);

    c2s_accepter.send(ping()).unwrap();
    srv_i.proceed(ServerIdent, Fail);

    assert!(
        p.cli_d.wait_new(),
        "client got no message: the accepting side did not re-dial"
    );

    assert!(wait_until(WAIT, || c2s.is_connected()));
    assert_eq!(p.cli_d.count(&c2s), 1);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);
    assert!(wait_until(WAIT, || c2s_accepter.is_connected()));
    assert_eq!(p.srv_d.count(&c2s_accepter), 0);
    assert_eq!(c2s_accepter.peer().entity_type, entity_type::CLIENT);

    let (srv_port, cli_port) = p.ports();
    assert!(wait_until(WAIT, || established_tcp(&[srv_port, cli_port]) == 1));
    // The accepting side re-dialled: its session connected as a client, and the client accepted it into
    // c2s; the surviving TCP connection is the server's dial.
    assert_eq!(established_tcp(&[cli_port]), 1);
    assert_eq!(p.srv_d.accepts_total(), 1);
    assert_eq!(p.srv_d.connects(&c2s_accepter), 1);
    assert_eq!(p.cli_d.accepts_total(), 1);
    assert_eq!(p.cli_d.connects_total(), 0);
    for d in [&p.srv_d, &p.cli_d] {
        assert_eq!(d.resets_total(), 0);
        assert_eq!(d.remote_resets_total(), 0);
    }
    p.assert_no_duplicates();
}

/// Scenario: A connects to B; A and B exchange messages; A fails; B goes into standby; A reconnects.
#[test]
fn reconnect_test() {
    let Race { p, srv_i, cli_i } = race(Policy::stateful_server(), Policy::lossless_peer(), true);

    let c2s = p.c2s();
    c2s.send(ping()).unwrap();
    assert!(p.cli_d.wait_new());
    assert!(c2s.is_connected());
    assert_eq!(p.cli_d.count(&c2s), 1);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);

    cli_i.breakpoint(Message);
    c2s.send(ping()).unwrap();
    cli_i.wait_conn(Message, c2s.id());
    cli_i.remove_bp(Message);

    // Client and server are connected; pause the server's end once it is ready again.
    srv_i.breakpoint(Ready);
    // Fail the client.
    cli_i.proceed(Message, Fail);
    c2s.send(ping()).unwrap();

    let c2s_accepter = srv_i.wait(Ready);
    // The server's end is paused at READY: the reconnect succeeded.
    srv_i.remove_bp(Ready);
    assert_eq!(c2s_accepter.role, Role::Server);
    let accepted = p.srv_d.last_accept().unwrap();
    assert_eq!(accepted.id(), c2s_accepter.id);
    assert_eq!(accepted.peer().entity_type, entity_type::CLIENT);
    assert_eq!(srv_i.count_step(c2s_accepter.id, Reconnect), 0);
    assert_eq!(srv_i.count_step(c2s_accepter.id, ReconnectOk), 1);
    assert_eq!(cli_i.count_step(c2s.id(), Reconnect), 1);
    assert_eq!(cli_i.count_step(c2s.id(), ReconnectOk), 0);

    srv_i.proceed(Ready, Continue);
    assert!(p.cli_d.wait_new());

    // One session throughout: two connects, two accepts, no reset of any kind.
    assert!(wait_until(WAIT, || p.cli_d.connects(&c2s) == 2));
    assert_eq!(p.srv_d.accepts_total(), 2);
    for d in [&p.srv_d, &p.cli_d] {
        assert_eq!(d.resets_total(), 0);
        assert_eq!(d.remote_resets_total(), 0);
    }
    let (srv_port, cli_port) = p.ports();
    assert!(wait_until(WAIT, || established_tcp(&[srv_port, cli_port]) == 1));
    // m2 and m3 (and the replies) exactly once.
    assert!(wait_until(WAIT, || p.srv_d.count(&accepted) == 3));
    assert!(wait_until(WAIT, || p.cli_d.count(&c2s) == 3));
    p.assert_no_duplicates();
}

/// Scenario: A connects to B; A and B exchange messages; A fails; A and B reconnect at the same time.
/// The server (lower address) wins the reconnect race.
#[test]
fn reconnect_race_test() {
    let Race { p, srv_i, cli_i } = race(Policy::lossless_peer(), Policy::lossless_peer(), true);

    let c2s = p.c2s();
    c2s.send(ping()).unwrap();
    assert!(p.cli_d.wait_new());
    assert!(c2s.is_connected());
    assert_eq!(p.cli_d.count(&c2s), 1);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);

    cli_i.breakpoint(Message);
    c2s.send(ping()).unwrap();
    cli_i.wait_conn(Message, c2s.id());
    cli_i.remove_bp(Message);

    // Both ends race on reconnect.
    cli_i.breakpoint(Reconnect);
    srv_i.breakpoint(Reconnect);
    cli_i.proceed(Message, Fail);
    c2s.send(ping()).unwrap();

    cli_i.wait_conn(Reconnect, c2s.id());
    srv_i.wait(Reconnect);
    cli_i.remove_bp(Reconnect);
    srv_i.remove_bp(Reconnect);

    srv_i.breakpoint(Ready);
    cli_i.proceed(Reconnect, Continue);
    srv_i.proceed(Reconnect, Continue);

    let c2s_accepter = srv_i.wait(Ready);
    srv_i.remove_bp(Ready);
    let accepted = p.srv_d.last_accept().unwrap();
    assert_eq!(accepted.id(), c2s_accepter.id);
    assert_eq!(accepted.peer().entity_type, entity_type::CLIENT);
    assert_eq!(c2s.peer().entity_type, entity_type::OSD);

    // The server wins the reconnect race.
    let srv_reconnects = srv_i.count_step(c2s_accepter.id, Reconnect);
    assert!((1..=2).contains(&srv_reconnects), "{srv_reconnects}");
    assert_eq!(srv_i.count_step(c2s_accepter.id, ReconnectOk), 0);
    assert_eq!(cli_i.count_step(c2s.id(), Reconnect), 1);
    assert_eq!(cli_i.count_step(c2s.id(), ReconnectOk), 1);
    // A second SESSION_RECONNECT from the server means the client told it to retry once.
    let cli_retries = cli_i.count_role(Role::Server, Retry);
    assert_eq!(cli_retries, srv_reconnects - 1);

    srv_i.proceed(Ready, Continue);
    assert!(p.cli_d.wait_new());

    let (srv_port, cli_port) = p.ports();
    assert!(wait_until(WAIT, || established_tcp(&[srv_port, cli_port]) == 1));
    assert_eq!(
        established_tcp(&[cli_port]),
        1,
        "the server's dial survives"
    );
    for d in [&p.srv_d, &p.cli_d] {
        assert_eq!(d.resets_total(), 0);
        assert_eq!(d.remote_resets_total(), 0);
    }
    assert!(wait_until(WAIT, || p.srv_d.count(&accepted) == 3));
    assert!(wait_until(WAIT, || p.cli_d.count(&c2s) == 3));
    p.assert_no_duplicates();
}

/// Not a test_msgr case: the interceptor's STOP action ends the session as a fatal error does (Ceph:
/// `stop()` and `ms_handle_reset`), and a FAIL before the banner is a fault the session survives.
#[test]
fn interceptor_stop_and_fail_actions() {
    let Race { p, srv_i: _, cli_i } =
        race(Policy::stateful_server(), Policy::lossless_client(), true);
    // FAIL before the first banner: a transport fault; the lossless client dials again.
    cli_i.proceed(Banner, Fail);
    let c2s = p.c2s();
    c2s.send(ping()).unwrap();
    assert!(p.cli_d.wait_new(), "no answer after an injected fault");
    assert_eq!(
        cli_i.count_where(|at| at.id == c2s.id() && at.step == Banner),
        2
    );
    assert_eq!(p.cli_d.resets_total(), 0);

    // STOP at the next message: the session ends, the dispatcher hears of the reset.
    cli_i.proceed(Message, InterceptAction::Stop);
    c2s.send(ping()).unwrap();
    assert!(wait_until(WAIT, || c2s.is_closed()));
    assert!(wait_until(WAIT, || p.cli_d.resets_total() == 1));
    assert!(!c2s.is_connected());
    assert_eq!(p.cli_d.count(&c2s), 0);
}

/// Not a test_msgr case: the sans-IO side of a deferred step. The banner is held back until the owner
/// runs the step; a FAIL there is a transport fault (a lossless client then backs off and dials again).
#[test]
fn interceptor_deferred_step_holds_output() {
    use msgr::proto::intercept::{InterceptPoint, Interceptor};
    use msgr::proto::{Connection, Event, Phase};
    use std::time::Instant;

    #[derive(Debug)]
    struct FailBanner;
    impl Interceptor for FailBanner {
        fn intercept(&self, at: &InterceptPoint) -> InterceptAction {
            if at.step == Banner {
                InterceptAction::Fail
            } else {
                InterceptAction::Continue
            }
        }
    }

    let mut cfg = client_config();
    cfg.interceptor = Some(Arc::new(FailBanner));
    let now = Instant::now();
    let target = msgr::proto::types::EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 1);
    let mut c = Connection::client(
        Arc::new(cfg),
        Policy::lossless_client(),
        entity_type::OSD,
        target,
        now,
    );
    assert_eq!(c.poll_event(), Some(Event::OpenTransport));
    c.on_transport_connected(now);
    let mut out = Vec::new();
    assert_eq!(
        c.poll_transmit(now, &mut out),
        0,
        "banner sent before its step ran"
    );
    assert!(!c.wants_transmit());
    assert!(c.run_deferred_intercepts(now));
    assert!(!c.has_transport());
    assert!(matches!(c.poll_event(), Some(Event::TransportDown(_))));
    assert_eq!(c.phase(), Phase::Connecting);
    assert!(!c.run_deferred_intercepts(now), "nothing left to run");
}
