//! A small pool of logged-in PKCS#11 sessions. A `Session` may move between threads but not be
//! shared, so each operation borrows one exclusively; at most `max` are ever open.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, PoisonError};

use cryptoki::session::Session;

struct State {
    idle: Vec<Session>,
    open: usize,
}

pub(crate) struct Pool {
    state: Mutex<State>,
    freed: Condvar,
    max: usize,
}

impl Pool {
    /// A pool holding `first` (the session that logged in) and allowing `max` sessions in all.
    pub(crate) fn new(first: Session, max: usize) -> Self {
        Self {
            state: Mutex::new(State {
                idle: vec![first],
                open: 1,
            }),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    /// Borrows a session, opening one with `open` if none is idle and the limit allows, and
    /// waiting otherwise.
    pub(crate) fn get<E>(
        &self,
        open: impl FnOnce() -> Result<Session, E>,
    ) -> Result<Pooled<'_>, E> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(Pooled {
                    pool: self,
                    session: Some(s),
                });
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match open() {
                    Ok(s) => Ok(Pooled {
                        pool: self,
                        session: Some(s),
                    }),
                    Err(e) => {
                        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                        st.open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// `(open, in use, max)`.
    pub(crate) fn usage(&self) -> (usize, usize, usize) {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (st.open, st.open.saturating_sub(st.idle.len()), self.max)
    }

    /// Closes every idle session (on drop of the token, before the module is finalized).
    pub(crate) fn close_all(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.idle.clear();
    }
}

/// A borrowed session, returned to the pool on drop.
pub(crate) struct Pooled<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl Deref for Pooled<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // `session` is Some from construction until drop.
        self.session.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut st = self
                .pool
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.idle.push(s);
            self.pool.freed.notify_one();
        }
    }
}
