//! The send queue used while the socket is not open: FIFO, bounded.

use alloc::vec::Vec;

/// Messages waiting for an open socket, flushed in order before `open`
/// fires. Bounded by `maxEnqueuedMessages`; a message beyond it is refused.
#[derive(Debug)]
pub struct Outbox<T> {
    items: Vec<T>,
    max: usize,
}

impl<T> Outbox<T> {
    /// An empty queue holding at most `max` messages.
    pub fn new(max: usize) -> Self {
        Outbox {
            items: Vec::new(),
            max,
        }
    }

    /// Queues `item`; gives it back when the queue is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.max {
            return Err(item);
        }
        self.items.push(item);
        Ok(())
    }

    /// Takes everything, oldest first.
    pub fn drain(&mut self) -> Vec<T> {
        core::mem::take(&mut self.items)
    }

    /// Queued messages.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Iterates oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_fifo() {
        let mut q = Outbox::new(2);
        assert_eq!(q.push("a"), Ok(()));
        assert_eq!(q.push("b"), Ok(()));
        assert_eq!(q.push("c"), Err("c"));
        assert_eq!(q.drain(), ["a", "b"]);
        assert!(q.is_empty());
        assert_eq!(q.push("d"), Ok(()));
        assert_eq!(q.len(), 1);
    }
}
