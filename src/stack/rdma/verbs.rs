//! A small safe API over libibverbs and librdmacm: [`Context`], [`ProtectionDomain`], [`CompChannel`],
//! [`CompletionQueue`], [`EventChannel`], [`CmId`] (with its RC queue pair) and the registered buffers of
//! [`super::pool`].
//!
//! Ownership follows sideway: every object holds an `Rc` to what it was made from (a CQ its completion
//! channel, a QP its PD and CQ, a CM id its event channel), so drop order is always right. All of it is
//! per worker thread (`Rc`, not `Arc`): nothing here is `Send`.
//!
//! Buffers are owned tokens ([`Slot`]): posting a receive or a send *moves* the slot into the queue pair,
//! so while the device may read or write that memory no Rust reference to it can exist. The queue pair
//! gives a slot back only for a completion that provably belongs to it (its QP number and its token in
//! the work-request id), or after the QP has been destroyed ([`CmId::destroy_qp`]).
//!
//! Errors are `io::Error`s naming the verbs call that failed.
#![allow(unsafe_code)] // the FFI boundary: every unsafe block below says why it is sound

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::rc::Rc;

use super::pool::{SendBuf, Slot};
use super::sys;

/// The `io::Error` for a failed call that set `errno`, naming the call.
pub(crate) fn os_error(call: &str) -> io::Error {
    let os = io::Error::last_os_error();
    io::Error::new(os.kind(), format!("{call}: {os}"))
}

/// The `io::Error` for a call that returned a positive errno value (the verbs post/modify calls do).
fn errno_error(call: &str, errno: i32) -> io::Error {
    let os = io::Error::from_raw_os_error(errno);
    io::Error::new(os.kind(), format!("{call}: {os}"))
}

fn set_nonblocking(fd: RawFd, call: &str) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL do not touch memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(os_error(call));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(os_error(call));
    }
    Ok(())
}

/// librdmacm's list of opened devices (`rdma_get_devices`); freed when the last [`Context`] goes.
struct DeviceList {
    list: NonNull<*mut sys::ibv_context>,
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // `list` came from rdma_get_devices and is freed once, here; no context from it outlives
        // this (every Context holds an Rc<DeviceList>).
        // SAFETY: the conditions just stated hold here.
        unsafe { sys::rdma_free_devices(self.list.as_ptr()) }
    }
}

/// An open verbs device, as librdmacm opened it (so CM ids resolve to this very context).
pub struct Context {
    _list: Rc<DeviceList>,
    ctx: NonNull<sys::ibv_context>,
    name: String,
}

/// What [`Context::query_port`] reports.
#[derive(Clone, Debug)]
pub struct PortInfo {
    pub active: bool,
    pub state: u32,
    /// Active MTU in bytes.
    pub mtu: u32,
    pub gid_table_len: i32,
    /// The port's local identifier (0 on RoCE).
    pub lid: u16,
}

impl Context {
    /// Open the device named `name` (e.g. `rxe0`), or the first device when `None`.
    pub fn open(name: Option<&str>) -> io::Result<Rc<Context>> {
        let mut count: i32 = 0;
        // SAFETY: rdma_get_devices writes the count and returns a NULL-terminated array or NULL.
        let raw = unsafe { sys::rdma_get_devices(&mut count) };
        let list = Rc::new(DeviceList {
            list: NonNull::new(raw).ok_or_else(|| os_error("rdma_get_devices"))?,
        });
        let mut names = Vec::new();
        for i in 0..usize::try_from(count).unwrap_or(0) {
            // SAFETY: i < count, the array's length.
            let ctx = unsafe { *list.list.as_ptr().add(i) };
            let Some(ctx) = NonNull::new(ctx) else {
                continue;
            };
            // Ctx is a live context; its device pointer is valid while the list lives, and the
            // name is a NUL-terminated string inside the device.
            // SAFETY: the conditions just stated hold here.
            let dev_name = unsafe {
                let dev = (*ctx.as_ptr()).device;
                CStr::from_ptr(sys::ibv_get_device_name(dev))
                    .to_string_lossy()
                    .into_owned()
            };
            if name.is_none_or(|n| n == dev_name) {
                return Ok(Rc::new(Context {
                    _list: list,
                    ctx,
                    name: dev_name,
                }));
            }
            names.push(dev_name);
        }
        let wanted = name.unwrap_or("any");
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            if names.is_empty() {
                format!(
                    "no RDMA device found (wanted {wanted}): load a driver or add a soft-RoCE device \
                     (scripts/softroce.sh up NETDEV, or run inside scripts/softroce-vm.sh)"
                )
            } else {
                format!(
                    "RDMA device {wanted} not found; devices: {}",
                    names.join(", ")
                )
            },
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn raw(&self) -> *mut sys::ibv_context {
        self.ctx.as_ptr()
    }

    pub fn query_port(&self, port: u8) -> io::Result<PortInfo> {
        let mut attr = sys::ibv_port_attr::default();
        // SAFETY: the context is live and attr is a valid out-parameter.
        let rc = unsafe { sys::msgr_ibv_query_port(self.raw(), port, &mut attr) };
        if rc != 0 {
            return Err(errno_error("ibv_query_port", rc));
        }
        Ok(PortInfo {
            active: attr.state == sys::IBV_PORT_ACTIVE,
            state: attr.state,
            mtu: 128u32 << attr.active_mtu.min(5),
            gid_table_len: attr.gid_tbl_len,
            lid: attr.lid,
        })
    }

    /// The GID at `index` of `port` (16 bytes; an IPv4-mapped address for RoCE v2 over IPv4).
    pub fn query_gid(&self, port: u8, index: i32) -> io::Result<[u8; 16]> {
        let mut gid = sys::ibv_gid { raw: [0; 16] };
        // SAFETY: the context is live and gid is a valid out-parameter.
        let rc = unsafe { sys::ibv_query_gid(self.raw(), port, index, &mut gid) };
        if rc != 0 {
            return Err(os_error("ibv_query_gid"));
        }
        // SAFETY: every bit pattern of the union is a valid [u8; 16].
        Ok(unsafe { gid.raw })
    }
}

/// A protection domain (`ibv_alloc_pd`).
pub struct ProtectionDomain {
    ctx: Rc<Context>,
    pd: NonNull<sys::ibv_pd>,
}

impl ProtectionDomain {
    pub fn new(ctx: &Rc<Context>) -> io::Result<Rc<ProtectionDomain>> {
        // SAFETY: the context is live.
        let pd = unsafe { sys::ibv_alloc_pd(ctx.raw()) };
        Ok(Rc::new(ProtectionDomain {
            ctx: ctx.clone(),
            pd: NonNull::new(pd).ok_or_else(|| os_error("ibv_alloc_pd"))?,
        }))
    }

    pub fn context(&self) -> &Rc<Context> {
        &self.ctx
    }

    pub(super) fn raw(&self) -> *mut sys::ibv_pd {
        self.pd.as_ptr()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: every MR and QP on this PD holds an Rc to it, so none is left.
        let rc = unsafe { sys::ibv_dealloc_pd(self.pd.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dealloc_pd failed");
        }
    }
}

/// A completion channel (`ibv_create_comp_channel`), non-blocking: its fd becomes readable when an armed
/// CQ gets a completion.
pub struct CompChannel {
    _ctx: Rc<Context>,
    ch: NonNull<sys::ibv_comp_channel>,
}

impl CompChannel {
    pub fn new(ctx: &Rc<Context>) -> io::Result<Rc<CompChannel>> {
        // SAFETY: the context is live.
        let ch = unsafe { sys::ibv_create_comp_channel(ctx.raw()) };
        let ch = NonNull::new(ch).ok_or_else(|| os_error("ibv_create_comp_channel"))?;
        let channel = Rc::new(CompChannel {
            _ctx: ctx.clone(),
            ch,
        });
        set_nonblocking(channel.fd(), "fcntl(comp channel)")?;
        Ok(channel)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is live; fd is a plain field.
        unsafe { (*self.ch.as_ptr()).fd }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ using this channel holds an Rc to it, so none is left.
        unsafe { sys::ibv_destroy_comp_channel(self.ch.as_ptr()) };
    }
}

/// One work completion, copied out of the CQ.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub wr_id: u64,
    pub status: u32,
    pub byte_len: u32,
    pub qp_num: u32,
    /// Immediate data (host order) when the peer sent it.
    pub imm: Option<u32>,
}

impl Completion {
    pub fn is_success(&self) -> bool {
        self.status == sys::IBV_WC_SUCCESS
    }

    pub fn is_flush(&self) -> bool {
        self.status == sys::IBV_WC_WR_FLUSH_ERR
    }

    pub fn status_str(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        unsafe { CStr::from_ptr(sys::ibv_wc_status_str(self.status)) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Completions taken per `ibv_poll_cq` call.
pub const POLL_BATCH: usize = 32;

/// A completion queue on a [`CompChannel`].
pub struct CompletionQueue {
    channel: Rc<CompChannel>,
    cq: NonNull<sys::ibv_cq>,
    unacked_events: std::cell::Cell<u32>,
    depth: u32,
}

impl CompletionQueue {
    pub fn new(ctx: &Rc<Context>, channel: &Rc<CompChannel>, depth: u32) -> io::Result<Self> {
        let cqe = i32::try_from(depth).unwrap_or(i32::MAX);
        let cq =
            // SAFETY: the context and channel are live; no cq_context is used.
            unsafe { sys::ibv_create_cq(ctx.raw(), cqe, ptr::null_mut(), channel.ch.as_ptr(), 0) };
        let cq = NonNull::new(cq).ok_or_else(|| os_error("ibv_create_cq"))?;
        // SAFETY: cq is live; cqe is the actual depth the provider gave.
        let actual = unsafe { (*cq.as_ptr()).cqe };
        Ok(CompletionQueue {
            channel: channel.clone(),
            cq,
            unacked_events: std::cell::Cell::new(0),
            depth: u32::try_from(actual).unwrap_or(depth),
        })
    }

    /// Entries the CQ holds.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    fn raw(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }

    /// Append up to [`POLL_BATCH`] completions to `out`; returns how many.
    pub fn poll(&self, out: &mut Vec<Completion>) -> io::Result<usize> {
        // Not zeroed: this runs on every busy-poll turn, and the provider writes what it returns.
        let mut wcs = [std::mem::MaybeUninit::<sys::ibv_wc>::uninit(); POLL_BATCH];
        // SAFETY: the CQ is live; wcs has room for POLL_BATCH entries.
        let n = unsafe {
            sys::msgr_ibv_poll_cq(self.raw(), POLL_BATCH as i32, wcs.as_mut_ptr().cast())
        };
        if n < 0 {
            return Err(io::Error::other(format!("ibv_poll_cq failed ({n})")));
        }
        let n = usize::try_from(n).unwrap_or(0).min(POLL_BATCH);
        for slot in &wcs[..n] {
            // SAFETY: ibv_poll_cq initialised the first n entries.
            let wc = unsafe { slot.assume_init_ref() };
            let imm = if wc.wc_flags & sys::IBV_WC_WITH_IMM != 0 {
                // SAFETY: with IBV_WC_WITH_IMM set, the union holds imm_data (network order).
                Some(u32::from_be(unsafe { wc.__bindgen_anon_1.imm_data }))
            } else {
                None
            };
            out.push(Completion {
                wr_id: wc.wr_id,
                status: wc.status,
                byte_len: wc.byte_len,
                qp_num: wc.qp_num,
                imm,
            });
        }
        Ok(n)
    }

    /// Arm the CQ: the channel's fd becomes readable on the next completion.
    pub fn req_notify(&self) -> io::Result<()> {
        // SAFETY: the CQ is live.
        let rc = unsafe { sys::msgr_ibv_req_notify_cq(self.raw(), 0) };
        if rc != 0 {
            return Err(errno_error("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Consume one pending channel event, if any (non-blocking). `true` if there was one.
    pub fn take_event(&self) -> io::Result<bool> {
        let mut cq: *mut sys::ibv_cq = ptr::null_mut();
        let mut ctx: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; cq/ctx are valid out-parameters.
        let rc = unsafe { sys::ibv_get_cq_event(self.channel.ch.as_ptr(), &mut cq, &mut ctx) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(false)
            } else {
                Err(os_error("ibv_get_cq_event"))
            };
        }
        self.unacked_events.set(self.unacked_events.get() + 1);
        if self.unacked_events.get() >= 64 {
            self.ack_events();
        }
        Ok(true)
    }

    fn ack_events(&self) {
        let n = self.unacked_events.replace(0);
        if n > 0 {
            // SAFETY: the CQ is live; we ack exactly the events we took.
            unsafe { sys::ibv_ack_cq_events(self.raw(), n) };
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        self.ack_events();
        // SAFETY: every QP using this CQ holds an Rc to it, so none is left; events are acked.
        let rc = unsafe { sys::ibv_destroy_cq(self.raw()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_cq failed");
        }
    }
}

/// An rdma_cm event channel, non-blocking.
pub struct EventChannel {
    ch: NonNull<sys::rdma_event_channel>,
}

/// What an rdma_cm event was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmEventKind {
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    ConnectRequest,
    ConnectResponse,
    ConnectError,
    Unreachable,
    Rejected,
    Established,
    Disconnected,
    DeviceRemoval,
    TimewaitExit,
    Other(u32),
}

impl CmEventKind {
    fn from_raw(raw: u32) -> Self {
        match raw {
            sys::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            sys::RDMA_CM_EVENT_ADDR_ERROR => CmEventKind::AddrError,
            sys::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            sys::RDMA_CM_EVENT_ROUTE_ERROR => CmEventKind::RouteError,
            sys::RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
            sys::RDMA_CM_EVENT_CONNECT_RESPONSE => CmEventKind::ConnectResponse,
            sys::RDMA_CM_EVENT_CONNECT_ERROR => CmEventKind::ConnectError,
            sys::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable,
            sys::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
            sys::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
            sys::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            sys::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            sys::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
            other => CmEventKind::Other(other),
        }
    }
}

/// One rdma_cm event, copied out and acknowledged.
pub struct CmEvent {
    pub kind: CmEventKind,
    /// The token of the CM id it is about (for a connect request: the listener's token).
    pub token: u64,
    pub status: i32,
    /// The peer's private data (connect request, established, rejected).
    pub private_data: Vec<u8>,
    /// For [`CmEventKind::ConnectRequest`]: the new, not yet accepted id (token 0 until set).
    pub new_id: Option<CmId>,
}

impl EventChannel {
    pub fn new() -> io::Result<Rc<EventChannel>> {
        // SAFETY: no arguments; returns NULL on failure.
        let ch = unsafe { sys::rdma_create_event_channel() };
        let ch = NonNull::new(ch).ok_or_else(|| {
            let err = os_error("rdma_create_event_channel");
            io::Error::new(
                err.kind(),
                format!(
                    "{err} (is /dev/infiniband/rdma_cm there? the rdma_ucm module must be loaded)"
                ),
            )
        })?;
        let channel = Rc::new(EventChannel { ch });
        set_nonblocking(channel.fd(), "fcntl(rdma_cm channel)")?;
        Ok(channel)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is live; fd is a plain field.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// The next event, if one is pending (non-blocking).
    pub fn next_event(self: &Rc<Self>) -> io::Result<Option<CmEvent>> {
        let mut event: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; event is a valid out-parameter.
        let rc = unsafe { sys::rdma_get_cm_event(self.ch.as_ptr(), &mut event) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(os_error("rdma_get_cm_event"))
            };
        }
        let Some(event) = NonNull::new(event) else {
            return Ok(None);
        };
        // Rdma_get_cm_event returned a live event; we copy out what we need and ack it once.
        // For a connect request, event.id is a new id that becomes ours (librdmacm hands it to the
        // application; acking the event does not destroy it). Its context was inherited from the listener.
        // SAFETY: the conditions just stated hold here.
        let out = unsafe {
            let ev = &*event.as_ptr();
            let kind = CmEventKind::from_raw(ev.event);
            let conn = &ev.param.conn;
            let private_data = if conn.private_data.is_null() || conn.private_data_len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(
                    conn.private_data.cast::<u8>(),
                    usize::from(conn.private_data_len),
                )
                .to_vec()
            };
            let (token, new_id) = if kind == CmEventKind::ConnectRequest {
                let listener = ev.listen_id;
                let token = if listener.is_null() {
                    0
                } else {
                    (*listener).context as u64
                };
                let new_id = NonNull::new(ev.id).map(|id| {
                    (*id.as_ptr()).context = ptr::null_mut();
                    CmId {
                        channel: self.clone(),
                        id,
                        qp: None,
                    }
                });
                (token, new_id)
            } else if ev.id.is_null() {
                (0, None)
            } else {
                ((*ev.id).context as u64, None)
            };
            let out = CmEvent {
                kind,
                token,
                status: ev.status,
                private_data,
                new_id,
            };
            sys::rdma_ack_cm_event(event.as_ptr());
            out
        };
        Ok(Some(out))
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every CM id on this channel holds an Rc to it, so none is left.
        unsafe { sys::rdma_destroy_event_channel(self.ch.as_ptr()) };
    }
}

/// Sizes for [`CmId::create_qp`].
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    pub send_depth: u32,
    pub recv_depth: u32,
    pub max_inline: u32,
}

/// An RC queue pair (of a [`CmId`], or an [`OwnedQp`] set up by hand) and the buffers posted on it.
pub struct Qp {
    raw: NonNull<sys::ibv_qp>,
    qp_num: u32,
    max_inline: u32,
    /// Identifies this QP's work requests (see [`wr_id`]); never reused by the owner.
    token: u64,
    recv_posted: HashMap<u32, Slot>,
    /// Posted sends, in order: a completion for one means all before it are done too.
    send_posted: VecDeque<(u64, SendBuf)>,
    _pd: Rc<ProtectionDomain>,
    _cq: Rc<CompletionQueue>,
}

impl Qp {
    /// Inline data the QP accepts per SEND (0: none).
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// Post `slot` as a receive buffer. On failure the slot comes back with the error.
    pub fn post_recv(&mut self, slot: Slot) -> Result<(), (Slot, io::Error)> {
        let qp = self;
        let mut sge = slot.sge(slot.capacity());
        let mut wr = sys::ibv_recv_wr {
            wr_id: wr_id(qp.token, false, slot.index()),
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
        // The QP is live; wr and sge are valid for the call; the slot's memory is registered on
        // this QP's PD (one pool per PD) and, moved into recv_posted below, no Rust reference to it exists
        // until the completion or QP destruction gives it back.
        // SAFETY: the conditions just stated hold here.
        let rc = unsafe { sys::msgr_ibv_post_recv(qp.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err((slot, errno_error("ibv_post_recv", rc)));
        }
        qp.recv_posted.insert(slot.index(), slot);
        Ok(())
    }

    /// Post one SEND (with immediate data if `opts.imm` says so): the first `opts.len` bytes of a slot, or a whole pinned chunk.
    /// An inline send's data is copied at post time, so its slot comes straight back (`Ok(Some)`);
    /// otherwise the QP keeps the buffer until a completion covers it.
    pub fn post_send(
        &mut self,
        buf: SendBuf,
        opts: SendOptions,
    ) -> Result<Option<SendBuf>, (SendBuf, io::Error)> {
        let qp = self;
        let mut sges = [sys::ibv_sge::default(); 2];
        let (num_sge, len) = buf.sges(opts.len, &mut sges);
        let is_slot = matches!(buf, SendBuf::Slot(_));
        let inline = is_slot && opts.inline && len <= qp.max_inline;
        let mut flags = 0;
        if opts.signaled {
            flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        if inline {
            flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
        }
        let id = wr_id(qp.token, true, opts.seq);
        let (opcode, imm_data) = match opts.imm {
            Some(imm) => (sys::IBV_WR_SEND_WITH_IMM, imm.to_be()),
            None => (sys::IBV_WR_SEND, 0),
        };
        let mut wr = sys::ibv_send_wr {
            wr_id: id,
            next: ptr::null_mut(),
            sg_list: sges.as_mut_ptr(),
            num_sge,
            opcode,
            send_flags: flags,
            __bindgen_anon_1: sys::ibv_send_wr__bindgen_ty_1 { imm_data },
            ..Default::default()
        };
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        // The QP is live; wr and sges are valid for the call. A slot's memory stays untouched by Rust
        // until a completion gives it back (it moves into send_posted), or, for an inline send, the
        // device has copied it before the call returns. A pinned chunk's SGE lies inside its memory
        // region (checked by PinnedChunk::new), registered on this QP's PD (one cache per worker PD);
        // the chunk, moved into send_posted, keeps the region and its Bytes alive and registered until
        // a completion (or the QP's destruction) gives it back; Bytes are never written through.
        // SAFETY: the conditions just stated hold here.
        let rc = unsafe { sys::msgr_ibv_post_send(qp.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err((buf, errno_error("ibv_post_send", rc)));
        }
        if inline && !opts.signaled {
            return Ok(Some(buf));
        }
        qp.send_posted.push_back((id, buf));
        Ok(None)
    }

    /// A receive completion: the slot it filled, if `c` belongs to this QP.
    pub fn complete_recv(&mut self, c: &Completion) -> Option<Slot> {
        let qp = self;
        if c.qp_num != qp.qp_num || wr_token(c.wr_id) != qp.token || c.wr_id & (1 << 23) != 0 {
            return None;
        }
        qp.recv_posted.remove(&((c.wr_id & 0x7f_ffff) as u32))
    }

    /// A send completion: every buffer of sends up to and including it (RC completes in order).
    pub fn complete_send(&mut self, c: &Completion, out: &mut Vec<SendBuf>) {
        let qp = self;
        if c.qp_num != qp.qp_num || wr_token(c.wr_id) != qp.token || c.wr_id & (1 << 23) == 0 {
            return;
        }
        if !qp.send_posted.iter().any(|(id, _)| *id == c.wr_id) {
            return;
        }
        while let Some((id, slot)) = qp.send_posted.pop_front() {
            out.push(slot);
            if id == c.wr_id {
                break;
            }
        }
    }

    /// Move the QP to the error state: outstanding work requests flush with errors.
    pub fn force_error(&self) -> io::Result<()> {
        let qp = self;
        let mut attr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_ERR,
            ..Default::default()
        };
        // SAFETY: the QP is live; attr is valid and only qp_state is read (mask IBV_QP_STATE).
        let rc = unsafe {
            sys::ibv_modify_qp(
                qp.raw.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
            )
        };
        if rc != 0 {
            return Err(errno_error("ibv_modify_qp(ERR)", rc));
        }
        Ok(())
    }
}

/// What [`OwnedQp::ready`] needs to know about the remote QP (from Ceph's queue-pair record).
#[derive(Clone, Copy, Debug)]
pub struct RemoteQp {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
}

/// An RC queue pair created and moved through its states by hand (`ibv_create_qp`, `ibv_modify_qp`),
/// without rdma_cm: Ceph's async+rdma set-up (see `ceph_wire.rs`). Destroyed with `ibv_destroy_qp`.
pub struct OwnedQp {
    qp: Qp,
    port: u8,
}

/// Ceph's RC values (Infiniband::QueuePair): path MTU 1024, local ACK timeout and minimum RNR timer
/// 0x12, retry count 7, RNR retry 7 (infinite: there are no credits, a full receive queue is waited out).
const CEPH_PATH_MTU: u32 = sys::IBV_MTU_1024;
const CEPH_TIMEOUT: u8 = 0x12;
const CEPH_MIN_RNR_TIMER: u8 = 0x12;
const CEPH_RETRY_COUNT: u8 = 7;
const CEPH_RNR_RETRY: u8 = 7;
/// Hops a RoCE v2 packet may take (the GRH hop limit).
const CEPH_HOP_LIMIT: u8 = 64;

impl OwnedQp {
    /// Create an RC QP on `pd` (completions of both directions to `cq`) and move it to INIT on
    /// `port`. `token` goes into every work-request id posted on it.
    pub fn create(
        pd: &Rc<ProtectionDomain>,
        cq: &Rc<CompletionQueue>,
        caps: QpCaps,
        port: u8,
        token: u64,
    ) -> io::Result<OwnedQp> {
        let mut attr = rc_qp_init_attr(cq, caps);
        // pd and cq are live objects of one device (the worker's); attr is valid and the provider
        // writes the granted caps back into it.
        // SAFETY: the conditions just stated hold here.
        let mut raw = unsafe { sys::ibv_create_qp(pd.raw(), &mut attr) };
        if raw.is_null() && caps.max_inline > 0 {
            attr.cap.max_inline_data = 0;
            // SAFETY: as above.
            raw = unsafe { sys::ibv_create_qp(pd.raw(), &mut attr) };
        }
        let raw = NonNull::new(raw).ok_or_else(|| os_error("ibv_create_qp"))?;
        // SAFETY: the QP is live; qp_num is a plain field.
        let qp_num = unsafe { (*raw.as_ptr()).qp_num };
        let owned = OwnedQp {
            qp: Qp {
                raw,
                qp_num,
                max_inline: attr.cap.max_inline_data,
                token,
                recv_posted: HashMap::new(),
                send_posted: VecDeque::new(),
                _pd: pd.clone(),
                _cq: cq.clone(),
            },
            port,
        };
        let mut init = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: port,
            qp_access_flags: (sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0
                | sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0),
            ..Default::default()
        };
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0
            | sys::ibv_qp_attr_mask::IBV_QP_PKEY_INDEX.0
            | sys::ibv_qp_attr_mask::IBV_QP_PORT.0
            | sys::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0;
        owned.modify(&mut init, mask, "ibv_modify_qp(INIT)")?;
        Ok(owned)
    }

    fn modify(&self, attr: &mut sys::ibv_qp_attr, mask: u32, call: &str) -> io::Result<()> {
        // SAFETY: the QP is live; attr is valid and only the fields named by mask are read.
        let rc = unsafe { sys::ibv_modify_qp(self.qp.raw.as_ptr(), attr, mask as i32) };
        if rc != 0 {
            return Err(errno_error(call, rc));
        }
        Ok(())
    }

    pub fn qp_num(&self) -> u32 {
        self.qp.qp_num
    }

    pub fn qp(&self) -> &Qp {
        &self.qp
    }

    pub fn qp_mut(&mut self) -> &mut Qp {
        &mut self.qp
    }

    /// Move the QP to RTR towards `remote` (reached through our GID at `sgid_index`), then to RTS
    /// with our initial send PSN `psn`: Ceph's values (see the constants).
    pub fn ready(&self, remote: &RemoteQp, sgid_index: u8, psn: u32) -> io::Result<()> {
        let mut rtr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_RTR,
            path_mtu: CEPH_PATH_MTU,
            dest_qp_num: remote.qpn,
            rq_psn: remote.psn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: CEPH_MIN_RNR_TIMER,
            ah_attr: sys::ibv_ah_attr {
                grh: sys::ibv_global_route {
                    dgid: sys::ibv_gid { raw: remote.gid },
                    flow_label: 0,
                    sgid_index,
                    hop_limit: CEPH_HOP_LIMIT,
                    traffic_class: 0,
                },
                dlid: remote.lid,
                sl: 0,
                src_path_bits: 0,
                static_rate: 0,
                is_global: 1,
                port_num: self.port,
            },
            ..Default::default()
        };
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0
            | sys::ibv_qp_attr_mask::IBV_QP_AV.0
            | sys::ibv_qp_attr_mask::IBV_QP_PATH_MTU.0
            | sys::ibv_qp_attr_mask::IBV_QP_DEST_QPN.0
            | sys::ibv_qp_attr_mask::IBV_QP_RQ_PSN.0
            | sys::ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | sys::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0;
        self.modify(&mut rtr, mask, "ibv_modify_qp(RTR)")?;
        let mut rts = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_RTS,
            timeout: CEPH_TIMEOUT,
            retry_cnt: CEPH_RETRY_COUNT,
            rnr_retry: CEPH_RNR_RETRY,
            sq_psn: psn,
            max_rd_atomic: 1,
            ..Default::default()
        };
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0
            | sys::ibv_qp_attr_mask::IBV_QP_TIMEOUT.0
            | sys::ibv_qp_attr_mask::IBV_QP_RETRY_CNT.0
            | sys::ibv_qp_attr_mask::IBV_QP_RNR_RETRY.0
            | sys::ibv_qp_attr_mask::IBV_QP_SQ_PSN.0
            | sys::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC.0;
        self.modify(&mut rts, mask, "ibv_modify_qp(RTS)")
    }

    /// Destroy the QP and return every slot that was posted on it: the device no longer touches them.
    pub fn destroy(self) -> Vec<Slot> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped; its Qp is moved out exactly once.
        let mut qp = unsafe { ptr::read(&this.qp) };
        // SAFETY: we own this QP; after ibv_destroy_qp no work request on it can run.
        let rc = unsafe { sys::ibv_destroy_qp(qp.raw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_qp failed");
        }
        let mut slots: Vec<Slot> = qp.recv_posted.drain().map(|(_, s)| s).collect();
        slots.extend(qp.send_posted.drain(..).filter_map(|(_, b)| b.into_slot()));
        slots
    }
}

impl Drop for OwnedQp {
    fn drop(&mut self) {
        // Slots still posted are leaked (their memory stays registered until the pool's chunk goes);
        // owners call destroy first to get them back.
        // SAFETY: we own this QP; nothing posts on it after drop.
        unsafe { sys::ibv_destroy_qp(self.qp.raw.as_ptr()) };
    }
}

/// Work-request ids: 40 bits of owner token, 1 bit send/recv, 23 bits of sequence or slot.
pub fn wr_id(token: u64, send: bool, low: u32) -> u64 {
    (token << 24) | (u64::from(send) << 23) | u64::from(low & 0x7f_ffff)
}

/// The owner token of a work-request id.
pub fn wr_token(wr_id: u64) -> u64 {
    wr_id >> 24
}

/// How to post one SEND.
#[derive(Clone, Copy, Debug)]
pub struct SendOptions {
    pub len: u32,
    /// Immediate data: `Some` posts a SEND_WITH_IMM (msgr's wire), `None` a plain SEND (Ceph's).
    pub imm: Option<u32>,
    pub signaled: bool,
    pub inline: bool,
    /// Low 23 bits of the work-request id (a sequence number).
    pub seq: u32,
}

/// An rdma_cm id: a listener, or one end of an RC connection with its queue pair.
pub struct CmId {
    channel: Rc<EventChannel>,
    id: NonNull<sys::rdma_cm_id>,
    qp: Option<Qp>,
}

impl CmId {
    /// A new TCP-port-space id on `channel` whose events carry `token`.
    pub fn new(channel: &Rc<EventChannel>, token: u64) -> io::Result<CmId> {
        let mut id: *mut sys::rdma_cm_id = ptr::null_mut();
        // SAFETY: the channel is live; id is a valid out-parameter; the context is an opaque integer.
        let rc = unsafe {
            sys::rdma_create_id(
                self_channel(channel),
                &mut id,
                token as usize as *mut std::ffi::c_void,
                sys::RDMA_PS_TCP,
            )
        };
        if rc != 0 {
            return Err(os_error("rdma_create_id"));
        }
        Ok(CmId {
            channel: channel.clone(),
            id: NonNull::new(id).ok_or_else(|| os_error("rdma_create_id"))?,
            qp: None,
        })
    }

    fn raw(&self) -> *mut sys::rdma_cm_id {
        self.id.as_ptr()
    }

    /// Make this id's events carry `token`.
    pub fn set_token(&mut self, token: u64) {
        // SAFETY: we own the id; context is an opaque field librdmacm hands back in events.
        unsafe { (*self.raw()).context = token as usize as *mut std::ffi::c_void };
    }

    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        let sa = socket2::SockAddr::from(addr);
        // SAFETY: sa is a valid sockaddr for the call; librdmacm copies it.
        let rc = unsafe { sys::rdma_bind_addr(self.raw(), sa.as_ptr() as *mut sys::sockaddr) };
        if rc != 0 {
            return Err(os_error("rdma_bind_addr"));
        }
        Ok(())
    }

    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        // SAFETY: the id is live and bound.
        if unsafe { sys::rdma_listen(self.raw(), backlog) } != 0 {
            return Err(os_error("rdma_listen"));
        }
        Ok(())
    }

    pub fn resolve_addr(&self, dst: SocketAddr, timeout_ms: i32) -> io::Result<()> {
        let sa = socket2::SockAddr::from(dst);
        // SAFETY: sa is a valid sockaddr; a NULL source lets rdma_cm pick by route.
        let rc = unsafe {
            sys::rdma_resolve_addr(
                self.raw(),
                ptr::null_mut(),
                sa.as_ptr() as *mut sys::sockaddr,
                timeout_ms,
            )
        };
        if rc != 0 {
            return Err(os_error("rdma_resolve_addr"));
        }
        Ok(())
    }

    pub fn resolve_route(&self, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: the id is live with its address resolved.
        if unsafe { sys::rdma_resolve_route(self.raw(), timeout_ms) } != 0 {
            return Err(os_error("rdma_resolve_route"));
        }
        Ok(())
    }

    /// Name of the device this id is bound to (known once its address is resolved or bound).
    pub fn device_name(&self) -> Option<String> {
        // SAFETY: verbs is NULL or a live context owned by librdmacm's device list.
        unsafe {
            let verbs = (*self.raw()).verbs;
            if verbs.is_null() {
                return None;
            }
            let name = sys::ibv_get_device_name((*verbs).device);
            (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
        }
    }

    /// Whether this id resolved to the device of `pd` (a QP can only be made on that device's PD).
    pub fn is_on(&self, pd: &ProtectionDomain) -> bool {
        // SAFETY: reading a plain pointer field of a live id.
        unsafe { (*self.raw()).verbs == pd.ctx.raw() }
    }

    /// Create this id's RC queue pair on `pd`, completions to `cq` (both directions). `token` goes into
    /// every work-request id posted on it.
    pub fn create_qp(
        &mut self,
        pd: &Rc<ProtectionDomain>,
        cq: &Rc<CompletionQueue>,
        caps: QpCaps,
        token: u64,
    ) -> io::Result<()> {
        if self.qp.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "rdma_create_qp: id already has a QP",
            ));
        }
        let mut attr = rc_qp_init_attr(cq, caps);
        // Id, pd and cq are live and of one device (checked by the caller with is_on; the call
        // fails otherwise); attr is valid and librdmacm writes the granted caps back into it.
        // SAFETY: the conditions just stated hold here.
        let mut rc = unsafe { sys::rdma_create_qp(self.raw(), pd.raw(), &mut attr) };
        if rc != 0 && caps.max_inline > 0 {
            // Some devices allow no inline data: retry without.
            attr.cap.max_inline_data = 0;
            // SAFETY: as above.
            rc = unsafe { sys::rdma_create_qp(self.raw(), pd.raw(), &mut attr) };
        }
        if rc != 0 {
            return Err(os_error("rdma_create_qp"));
        }
        // SAFETY: on success the id's qp field is the new QP.
        let raw = unsafe { (*self.raw()).qp };
        let raw = NonNull::new(raw).ok_or_else(|| os_error("rdma_create_qp"))?;
        // SAFETY: the QP is live; qp_num is a plain field.
        let qp_num = unsafe { (*raw.as_ptr()).qp_num };
        self.qp = Some(Qp {
            raw,
            qp_num,
            max_inline: attr.cap.max_inline_data,
            token,
            recv_posted: HashMap::new(),
            send_posted: VecDeque::new(),
            _pd: pd.clone(),
            _cq: cq.clone(),
        });
        Ok(())
    }

    pub fn qp(&self) -> io::Result<&Qp> {
        self.qp
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "CM id has no QP"))
    }

    pub fn qp_mut(&mut self) -> io::Result<&mut Qp> {
        self.qp
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "CM id has no QP"))
    }

    fn conn_param(private: &[u8]) -> sys::rdma_conn_param {
        sys::rdma_conn_param {
            private_data: private.as_ptr().cast(),
            private_data_len: u8::try_from(private.len()).unwrap_or(u8::MAX),
            responder_resources: 0,
            initiator_depth: 0,
            flow_control: 0,
            retry_count: 7,
            // 0: a SEND that finds no posted receive fails at once instead of retrying, so a credit
            // accounting bug shows up as an error rather than as a stall.
            rnr_retry_count: 0,
            srq: 0,
            qp_num: 0,
        }
    }

    /// Connect (after the route is resolved and the QP exists), sending `private` (≤ 56 bytes).
    pub fn connect(&self, private: &[u8]) -> io::Result<()> {
        let mut param = Self::conn_param(private);
        // SAFETY: the id is live with a QP; param and the private data live through the call (copied).
        if unsafe { sys::rdma_connect(self.raw(), &mut param) } != 0 {
            return Err(os_error("rdma_connect"));
        }
        Ok(())
    }

    /// Accept a connect request (after creating the QP), sending `private` (≤ 196 bytes).
    pub fn accept(&self, private: &[u8]) -> io::Result<()> {
        let mut param = Self::conn_param(private);
        // SAFETY: as in connect.
        if unsafe { sys::rdma_accept(self.raw(), &mut param) } != 0 {
            return Err(os_error("rdma_accept"));
        }
        Ok(())
    }

    pub fn reject(&self) {
        // SAFETY: the id is a live connect-request id; no private data.
        unsafe { sys::rdma_reject(self.raw(), ptr::null(), 0) };
    }

    pub fn disconnect(&self) {
        // SAFETY: the id is live; disconnecting an unconnected id just fails, which we ignore.
        unsafe { sys::rdma_disconnect(self.raw()) };
    }

    /// Destroy the QP (if any) and return every slot that was posted on it: the device no longer
    /// touches them.
    pub fn destroy_qp(&mut self) -> Vec<Slot> {
        let Some(mut qp) = self.qp.take() else {
            return Vec::new();
        };
        // SAFETY: the id owns this QP; after rdma_destroy_qp no work request on it can run.
        unsafe { sys::rdma_destroy_qp(self.raw()) };
        let mut slots: Vec<Slot> = qp.recv_posted.drain().map(|(_, s)| s).collect();
        // Pinned chunks are simply released (the device no longer reads them).
        slots.extend(qp.send_posted.drain(..).filter_map(|(_, b)| b.into_slot()));
        slots
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the route's address storage is a plain field of the live id.
        unsafe { sockaddr_of(&(*self.raw()).route.addr.__bindgen_anon_1.src_storage) }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as above.
        unsafe { sockaddr_of(&(*self.raw()).route.addr.__bindgen_anon_2.dst_storage) }
    }
}

fn self_channel(channel: &Rc<EventChannel>) -> *mut sys::rdma_event_channel {
    channel.ch.as_ptr()
}

/// # Safety
/// `storage` must point to a readable `sockaddr_storage`.
unsafe fn sockaddr_of(storage: *const sys::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: both are the C sockaddr_storage (128 bytes, same layout); we copy it.
    let copy: libc::sockaddr_storage = unsafe { ptr::read(storage.cast()) };
    match i32::from(copy.ss_family) {
        libc::AF_INET => {
            let sin: libc::sockaddr_in =
                // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
                unsafe { ptr::read((&copy as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            let sin6: libc::sockaddr_in6 =
                // SAFETY: the family says the storage holds a sockaddr_in6, which fits in it.
                unsafe { ptr::read((&copy as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // Slots still posted are leaked (their memory stays registered until the pool's chunk goes);
        // owners call destroy_qp first to get them back.
        drop(self.destroy_qp());
        // The QP is gone and every event we took was acked at once, so rdma_destroy_id does
        // not block; the channel outlives the id (we hold an Rc).
        // SAFETY: the conditions just stated hold here.
        unsafe { sys::rdma_destroy_id(self.raw()) };
    }
}

/// A connect-request id on its way to another worker: parked on an event channel of its own so that it
/// depends on nothing of the worker it left. Dropping it rejects the request.
pub struct DetachedId {
    id: NonNull<sys::rdma_cm_id>,
    channel: NonNull<sys::rdma_event_channel>,
}

// SAFETY: librdmacm ids and event channels may be used from any thread (the library locks internally);
// a DetachedId is owned by one thread at a time and refers to nothing thread-local (no Rc inside).
unsafe impl Send for DetachedId {}

impl CmId {
    /// Park a not-yet-accepted connect-request id for [`DetachedId::attach`] on another worker.
    pub fn detach(self) -> io::Result<DetachedId> {
        if self.qp.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot move a CM id that has a QP",
            ));
        }
        // SAFETY: no arguments; NULL on failure.
        let channel = NonNull::new(unsafe { sys::rdma_create_event_channel() })
            .ok_or_else(|| os_error("rdma_create_event_channel"))?;
        // SAFETY: both live; we are the only user of the id.
        if unsafe { sys::rdma_migrate_id(self.raw(), channel.as_ptr()) } != 0 {
            let err = os_error("rdma_migrate_id");
            // SAFETY: the channel is ours and has no id on it.
            unsafe { sys::rdma_destroy_event_channel(channel.as_ptr()) };
            return Err(err);
        }
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped; we take its Rc out so the old channel is released normally.
        let _old_channel = unsafe { ptr::read(&this.channel) };
        Ok(DetachedId {
            id: this.id,
            channel,
        })
    }
}

impl DetachedId {
    /// Adopt the id on `channel` (this worker's); its events will carry `token`.
    pub fn attach(self, channel: &Rc<EventChannel>, token: u64) -> io::Result<CmId> {
        // SAFETY: both live; the id's pending events move along with it.
        if unsafe { sys::rdma_migrate_id(self.id.as_ptr(), self_channel(channel)) } != 0 {
            return Err(os_error("rdma_migrate_id")); // dropping self rejects and cleans up
        }
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the parking channel has no id left on it (we just moved ours away) and no events.
        unsafe { sys::rdma_destroy_event_channel(this.channel.as_ptr()) };
        let mut id = CmId {
            channel: channel.clone(),
            id: this.id,
            qp: None,
        };
        id.set_token(token);
        Ok(id)
    }
}

impl Drop for DetachedId {
    fn drop(&mut self) {
        // SAFETY: the id is ours, has no QP and no unacked events; it is destroyed before its channel.
        unsafe {
            sys::rdma_reject(self.id.as_ptr(), ptr::null(), 0);
            sys::rdma_destroy_id(self.id.as_ptr());
            sys::rdma_destroy_event_channel(self.channel.as_ptr());
        }
    }
}

/// The init attributes of an RC QP whose completions both go to `cq`, with `caps`.
fn rc_qp_init_attr(cq: &CompletionQueue, caps: QpCaps) -> sys::ibv_qp_init_attr {
    sys::ibv_qp_init_attr {
        qp_context: ptr::null_mut(),
        send_cq: cq.raw(),
        recv_cq: cq.raw(),
        srq: ptr::null_mut(),
        cap: sys::ibv_qp_cap {
            max_send_wr: caps.send_depth,
            max_recv_wr: caps.recv_depth,
            max_send_sge: 2, // a copied head joined to a pinned chunk (pool::SendBuf::Joined)
            max_recv_sge: 1,
            max_inline_data: caps.max_inline,
        },
        qp_type: sys::IBV_QPT_RC,
        sq_sig_all: 0,
    }
}
