//! The table of RPC calls awaiting an answer.

use crate::text::push_hex;
use alloc::string::String;
use alloc::vec::Vec;

/// One pending call. `T` is whatever settles it (a JS resolver pair, a timer…).
#[derive(Debug)]
pub struct Pending<T> {
    /// The method, for error messages.
    pub method: String,
    /// The socket generation the request was written to; `None` while it
    /// waits in the send queue.
    pub socket: Option<u32>,
    /// Streaming calls get chunks until `done`.
    pub streaming: bool,
    /// The settlers.
    pub handle: T,
}

/// Pending calls by id. A plain vector: a client has few calls in flight,
/// and a hash map would add kilobytes to the WebAssembly.
#[derive(Debug)]
pub struct Calls<T> {
    pending: Vec<(String, Pending<T>)>,
    next: u64,
}

impl<T> Default for Calls<T> {
    fn default() -> Self {
        Calls {
            pending: Vec::new(),
            next: 0,
        }
    }
}

impl<T> Calls<T> {
    /// A new call id: `random` (≥ 64 random bits, hex) plus a counter, so ids
    /// are unique per client without `crypto.randomUUID`.
    pub fn next_id(&mut self, random: u64) -> String {
        self.next += 1;
        let mut id = String::with_capacity(24);
        push_hex(&mut id, random, 16);
        id.push('-');
        push_hex(&mut id, self.next, 1);
        id
    }

    /// Registers a call.
    pub fn insert(&mut self, id: String, pending: Pending<T>) {
        self.take(&id);
        self.pending.push((id, pending));
    }

    /// The call with `id`, if pending.
    pub fn get(&self, id: &str) -> Option<&Pending<T>> {
        self.pending.iter().find(|(i, _)| i == id).map(|(_, p)| p)
    }

    /// Removes and returns the call with `id`.
    pub fn take(&mut self, id: &str) -> Option<Pending<T>> {
        let at = self.pending.iter().position(|(i, _)| i == id)?;
        swap_remove(&mut self.pending, at)
    }

    /// Removes and returns the first call whose handle matches.
    pub fn take_where(&mut self, matches: impl Fn(&T) -> bool) -> Option<Pending<T>> {
        let at = self.pending.iter().position(|(_, p)| matches(&p.handle))?;
        swap_remove(&mut self.pending, at)
    }

    /// Marks the call `id` as written to socket `generation`.
    pub fn mark_one_sent(&mut self, id: &str, generation: u32) {
        if let Some((_, p)) = self.pending.iter_mut().find(|(i, _)| i == id) {
            p.socket = Some(generation);
        }
    }

    /// Marks every queued call as written to socket `generation`.
    pub fn mark_sent(&mut self, generation: u32) {
        for (_, p) in &mut self.pending {
            p.socket.get_or_insert(generation);
        }
    }

    /// Removes the calls written to socket `generation` (it closed, so
    /// their answers can never come); queued calls stay for the next socket.
    pub fn take_sent_on(&mut self, generation: u32) -> Vec<Pending<T>> {
        self.take_all_where(|p| p.socket == Some(generation))
    }

    /// Removes every call.
    pub fn take_all(&mut self) -> Vec<Pending<T>> {
        self.take_all_where(|_| true)
    }

    fn take_all_where(&mut self, matches: impl Fn(&Pending<T>) -> bool) -> Vec<Pending<T>> {
        let mut taken = Vec::new();
        let mut at = 0;
        while let Some((_, p)) = self.pending.get(at) {
            if matches(p) {
                taken.extend(swap_remove(&mut self.pending, at));
            } else {
                at += 1;
            }
        }
        taken
    }

    /// Pending calls.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none are pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// `Vec::swap_remove` of entry `at`'s call, `None` past the end (no panic
/// path in the WebAssembly).
fn swap_remove<T>(pending: &mut Vec<(String, T)>, at: usize) -> Option<T> {
    if at >= pending.len() {
        return None;
    }
    let last = pending.pop()?;
    Some(match pending.get_mut(at) {
        Some(slot) => core::mem::replace(slot, last).1,
        None => last.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, socket: Option<u32>) -> Pending<()> {
        Pending {
            method: method.into(),
            socket,
            streaming: false,
            handle: (),
        }
    }

    #[test]
    fn ids_are_unique() {
        let mut c = Calls::<()>::default();
        let a = c.next_id(7);
        let b = c.next_id(7);
        assert_ne!(a, b);
        assert_eq!(a, "0000000000000007-1");
    }

    #[test]
    fn a_closed_socket_rejects_only_its_calls() {
        let mut c = Calls::default();
        c.insert("sent".into(), p("a", Some(1)));
        c.insert("queued".into(), p("b", None));
        c.insert("old".into(), p("c", Some(0)));
        let gone = c.take_sent_on(1);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].method, "a");
        assert!(c.get("queued").is_some());
        c.mark_sent(2);
        assert_eq!(c.get("queued").unwrap().socket, Some(2));
        assert_eq!(c.get("old").unwrap().socket, Some(0));
        assert_eq!(c.take_all().len(), 2);
        assert!(c.is_empty());
    }
}
