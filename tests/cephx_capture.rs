//! The real cephx + secure-mode session (tests/data/ceph16-mon-cephx-secure) decrypted with nothing but
//! the client.admin key from its keyring: the proof in AUTH_REQUEST_MORE recomputes, AUTH_DONE opens to
//! the session key and the 64-byte connection secret, and every frame after AUTH_DONE, in both
//! directions of both connections, decrypts with every AES-GCM tag checked: AUTH_SIGNATURE (the HMAC of
//! the peer's pre-auth bytes under the session key), CLIENT_IDENT / SERVER_IDENT, then the messages
//! (the MonMap carries the capture's fsid). Never skipped: the data ships with the repository.

use bytes::BytesMut;
use msgr::msgs::mon::MMonMap;
use msgr::msgs::CephMessage;
use msgr::proto::auth::cephx::{
    challenge_key, decode_ticket_reply, Authenticate, CEPHX_GET_AUTH_SESSION_KEY, SERVICE_AUTH,
};
use msgr::proto::auth::crypto::decode_decrypt;
use msgr::proto::auth::{auth_signature, Keyring, AUTH_METHOD_CEPHX, CON_MODE_SECURE};
use msgr::proto::banner::Banner;
use msgr::proto::codec::secure::{session_ciphers, CONNECTION_SECRET_LEN};
use msgr::proto::codec::{Frame, FrameDecoder, FrameMode, Tag};
use msgr::proto::control::ControlFrame;
use msgr::proto::denc::{Decode, Decoder};
use msgr::proto::message::Message;
use msgr::proto::types::{entity_type, AuthEntityName};

const DIR: &str = "ceph16-mon-cephx-secure";
const FSID: &str = "af297b31-ecb9-437f-aa79-b7bf7a5a02ce";

fn data(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/{DIR}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The plaintext head of one direction: banner and crc frames up to and including `last`; returns
/// the frames, the bytes they took (the pre-auth transcript) and the rest of the stream.
fn plaintext_until(stream: &[u8], last: Tag) -> (Vec<Frame>, Vec<u8>, BytesMut) {
    let (_, n) = Banner::decode(stream).unwrap().expect("banner");
    let mut rx = BytesMut::from(&stream[n..]);
    let mut dec = FrameDecoder::new(1 << 20);
    let mut frames = Vec::new();
    loop {
        let f = dec.decode(&mut rx).unwrap().expect("complete frame");
        let done = f.tag == last;
        frames.push(f);
        if done {
            break;
        }
    }
    let used = stream.len() - rx.len();
    (frames, stream[..used].to_vec(), rx)
}

fn control(f: &Frame) -> ControlFrame {
    ControlFrame::decode(f.tag, f.payload()).unwrap()
}

struct Derived {
    session_key: Vec<u8>,
    connection_secret: Vec<u8>,
    global_id: u64,
    services: Vec<u32>,
}

/// Everything the client.admin key reveals about one captured connection.
fn derive(c2s_head: &[Frame], s2c_head: &[Frame]) -> Derived {
    let keyring = Keyring::load(format!(
        "{}/tests/data/{DIR}/keyring",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let admin = AuthEntityName::new(entity_type::CLIENT, "admin");
    let key = keyring.key_for(&admin, "keyring").unwrap();

    let ControlFrame::AuthRequest(req) = control(&c2s_head[1]) else {
        panic!("AUTH_REQUEST expected")
    };
    assert_eq!(req.method, AUTH_METHOD_CEPHX);
    assert_eq!(req.preferred_modes, [CON_MODE_SECURE]);
    let ControlFrame::AuthReplyMore(more) = control(&s2c_head[1]) else {
        panic!("AUTH_REPLY_MORE expected")
    };
    let d = &mut Decoder::new(&more.auth_payload);
    assert_eq!(d.u8().unwrap(), 1);
    let server_challenge = d.u64().unwrap();
    let ControlFrame::AuthRequestMore(proof) = control(&c2s_head[2]) else {
        panic!("AUTH_REQUEST_MORE expected")
    };
    let d = &mut Decoder::new(&proof.auth_payload);
    assert_eq!(d.u16().unwrap(), CEPHX_GET_AUTH_SESSION_KEY);
    let auth = Authenticate::decode(d).unwrap();
    assert_eq!(d.remaining(), 0);
    assert_eq!(
        auth.key,
        challenge_key(key, server_challenge, auth.client_challenge).unwrap(),
        "the client's proof is our challenge_key under client.admin's key"
    );
    assert_ne!(auth.other_keys & SERVICE_AUTH, 0);

    let ControlFrame::AuthDone(done) = control(&s2c_head[2]) else {
        panic!("AUTH_DONE expected")
    };
    assert_eq!(done.con_mode, CON_MODE_SECURE);
    let d = &mut Decoder::new(&done.auth_payload);
    assert_eq!(d.u16().unwrap(), CEPHX_GET_AUTH_SESSION_KEY);
    assert_eq!(d.i32().unwrap(), 0);
    let tickets = decode_ticket_reply(key, None, d).unwrap();
    let auth_ticket = tickets
        .iter()
        .find(|t| t.service_id == SERVICE_AUTH)
        .expect("AUTH ticket");
    let cbl = d.len_prefixed("cbl").unwrap();
    let secret = decode_decrypt(&auth_ticket.session_key, &mut Decoder::new(cbl)).unwrap();
    let connection_secret = Decoder::new(&secret)
        .len_prefixed("secret")
        .unwrap()
        .to_vec();
    assert_eq!(connection_secret.len(), CONNECTION_SECRET_LEN);
    let extra = d.len_prefixed("extra").unwrap();
    // Service tickets, when the monitor had them to give (the first connection of a fresh monitor
    // got none).
    let services = if extra.is_empty() {
        Vec::new()
    } else {
        decode_ticket_reply(&auth_ticket.session_key, None, &mut Decoder::new(extra))
            .unwrap()
            .iter()
            .map(|t| t.service_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(d.remaining(), 0);
    Derived {
        session_key: auth_ticket.session_key.secret().to_vec(),
        connection_secret,
        global_id: done.global_id,
        services,
    }
}

/// Decrypt the rest of one direction; every tag is checked by the decoder.
fn decrypt_rest(mut rx: BytesMut, secret: &[u8], receiver_is_server: bool) -> Vec<Frame> {
    let (_, cipher) = session_ciphers(secret, receiver_is_server).unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.set_secure(cipher);
    assert_eq!(dec.mode(), FrameMode::Secure);
    let mut out = Vec::new();
    while let Some(f) = dec
        .decode(&mut rx)
        .unwrap_or_else(|e| panic!("frame {}: {e}", out.len()))
    {
        out.push(f);
    }
    assert!(rx.is_empty(), "{} trailing bytes", rx.len());
    out
}

fn check_connection(n: usize) -> (Vec<Frame>, Vec<Frame>, Derived) {
    let c2s = data(&format!("conn{n}-c2s.bin"));
    let s2c = data(&format!("conn{n}-s2c.bin"));
    let (c2s_head, c2s_pre, c2s_rest) = plaintext_until(&c2s, Tag::AuthRequestMore);
    let (s2c_head, s2c_pre, s2c_rest) = plaintext_until(&s2c, Tag::AuthDone);
    let derived = derive(&c2s_head, &s2c_head);

    let c2s_frames = decrypt_rest(c2s_rest, &derived.connection_secret, true);
    let s2c_frames = decrypt_rest(s2c_rest, &derived.connection_secret, false);

    // Each side signs what it received before AUTH_DONE, banner included.
    let ControlFrame::AuthSignature(cs) = control(&c2s_frames[0]) else {
        panic!("client's first secure frame is AUTH_SIGNATURE")
    };
    assert_eq!(cs.signature, auth_signature(&derived.session_key, &s2c_pre));
    let ControlFrame::AuthSignature(ss) = control(&s2c_frames[0]) else {
        panic!("server's first secure frame is AUTH_SIGNATURE")
    };
    assert_eq!(ss.signature, auth_signature(&derived.session_key, &c2s_pre));
    assert_ne!(ss.signature, auth_signature(&derived.session_key, &s2c_pre));

    let ControlFrame::ClientIdent(ci) = control(&c2s_frames[1]) else {
        panic!("CLIENT_IDENT expected")
    };
    assert_eq!(ci.target_addr.to_string(), "v2:127.0.0.1:13300/0");
    let ControlFrame::ServerIdent(si) = control(&s2c_frames[1]) else {
        panic!("SERVER_IDENT expected")
    };
    assert!(
        si.addrs.to_string().contains("v2:127.0.0.1:13300"),
        "{}",
        si.addrs
    );
    (c2s_frames, s2c_frames, derived)
}

fn messages(fs: &[Frame]) -> Vec<Message> {
    fs.iter()
        .filter(|f| f.tag == Tag::Message)
        .map(|f| Message::from_segments(&f.segments[..f.num_segments]).unwrap())
        .collect()
}

#[test]
fn conn0_decrypts_with_the_admin_key() {
    let (c2s, s2c, derived) = check_connection(0);
    assert_eq!(derived.global_id, 4097);
    let out = messages(&c2s);
    let types: Vec<u16> = out.iter().map(|m| m.header.msg_type).collect();
    assert_eq!(&types[..2], &[5, 15], "MMonGetMap, MMonSubscribe");
    let inb = messages(&s2c);
    assert!(!inb.is_empty());
    let map = inb
        .iter()
        .find(|m| m.header.msg_type == MMonMap::MSG_TYPE)
        .expect("an MMonMap");
    let map = MMonMap::from_message(map).unwrap();
    assert_eq!(map.monmap.fsid.to_string(), FSID);
    for (i, m) in inb.iter().enumerate() {
        assert_eq!(m.header.seq, i as u64 + 1, "in order");
    }
}

#[test]
fn conn1_decrypts_with_the_admin_key_77k_of_frames() {
    let (c2s, s2c, derived) = check_connection(1);
    assert_ne!(derived.global_id, 0);
    assert!(
        derived.services.contains(&u32::from(entity_type::MON)),
        "{:?}",
        derived.services
    );
    let out = messages(&c2s);
    assert!(out.iter().any(|m| m.header.msg_type == 50), "MMonCommand");
    let inb = messages(&s2c);
    assert!(
        inb.iter().any(|m| m.header.msg_type == 51),
        "MMonCommandAck"
    );
    let bytes: usize = s2c.iter().map(|f| f.raw.len()).sum();
    assert!(bytes > 70_000, "{bytes}");
}

#[test]
fn a_wrong_key_or_flipped_bit_does_not_decrypt() {
    let c2s = data("conn0-c2s.bin");
    let s2c = data("conn0-s2c.bin");
    let (c2s_head, _, _) = plaintext_until(&c2s, Tag::AuthRequestMore);
    let (s2c_head, _, s2c_rest) = plaintext_until(&s2c, Tag::AuthDone);
    let derived = derive(&c2s_head, &s2c_head);
    let mut wrong = derived.connection_secret.clone();
    wrong[0] ^= 1;
    let (_, cipher) = session_ciphers(&wrong, false).unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.set_secure(cipher);
    assert!(dec.decode(&mut s2c_rest.clone()).is_err());
    // Crossed nonces (the server's rx stream) do not open the server's frames either.
    let (_, cipher) = session_ciphers(&derived.connection_secret, true).unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.set_secure(cipher);
    assert!(dec.decode(&mut s2c_rest.clone()).is_err());
    let mut flipped = s2c_rest.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x80;
    let (_, cipher) = session_ciphers(&derived.connection_secret, false).unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    dec.set_secure(cipher);
    let mut n = 0;
    let err = loop {
        match dec.decode(&mut flipped) {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert!(n > 0, "frames before the flipped one decrypt");
    assert!(err.to_string().contains("authentication"), "{err}");
}
