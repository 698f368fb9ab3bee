//! The connection's side of the test interceptor (feature `interceptor`, see `proto::intercept`):
//! calling it in place, recording deferred steps, and running them when the owner says so.

use super::*;
use crate::proto::intercept::{InterceptAction, InterceptPoint, InterceptStep};

impl Connection {
    /// Give this connection the id its interceptor reports (the messenger uses its connection id).
    pub fn set_intercept_id(&mut self, id: u64) {
        self.intercept.id = id;
    }

    pub fn intercept_id(&self) -> u64 {
        self.intercept.id
    }

    /// Steps recorded and not yet reported: transmission and input processing wait for them.
    pub(super) fn intercept_pending(&self) -> bool {
        !self.intercept.deferred.is_empty()
    }

    /// Report the steps recorded since the last call (see `proto::intercept`); returns whether there were
    /// any. An injected fault is applied here. The owner calls this once it has handled the events the
    /// state change produced, then polls again.
    pub fn run_deferred_intercepts(&mut self, now: Instant) -> bool {
        if self.intercept.deferred.is_empty() {
            return false;
        }
        for step in std::mem::take(&mut self.intercept.deferred) {
            if let Err(e) = self.call_interceptor(step) {
                self.fault(now, e);
                return true;
            }
        }
        // Input that arrived meanwhile.
        if let Err(e) = self.process(now) {
            self.fault(now, e);
        }
        true
    }

    pub(super) fn intercept_now(&mut self, step: InterceptStep) -> Result<(), Error> {
        self.call_interceptor(step)
    }

    pub(super) fn defer_intercept(&mut self, step: InterceptStep) {
        if self.config.interceptor.is_some() {
            self.intercept.deferred.push(step);
        }
    }

    fn call_interceptor(&mut self, step: InterceptStep) -> Result<(), Error> {
        let Some(i) = self.config.interceptor.clone() else {
            return Ok(());
        };
        let peer = match self.role {
            Role::Client => self.target_addr.clone(),
            Role::Server => self
                .peer_addrs
                .msgr2()
                .or_else(|| self.peer_addrs.front())
                .cloned()
                .unwrap_or_else(|| self.target_addr.clone()),
        };
        let at = InterceptPoint {
            id: self.intercept.id,
            role: self.role,
            peer,
            step,
        };
        match i.intercept(&at) {
            InterceptAction::Continue => Ok(()),
            InterceptAction::Fail => Err(Error::Transport(
                format!("interceptor: fault injected at {step:?}").into(),
            )),
            InterceptAction::Stop => Err(Error::Closed),
        }
    }
}
