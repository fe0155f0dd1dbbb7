//! Room for a request's future, kept per worker thread.
//!
//! The future that serves a request (a few KiB) lives on the heap: an
//! HTTP/1.1 connection holds it so that an idle connection does not carry
//! that space, and an HTTP/2 stream's task holds only the pointer, so that
//! the task hyper spawns per stream is small to move and to allocate. An
//! allocation that large misses the allocator's per-thread cache: taking
//! and freeing one per request cost some 650 instructions. The room is
//! instead kept here once a request is done and serves the next request of
//! its kind on this thread, the future dropped in place (what `Pin::set`
//! is for).

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Rooms kept per thread; more are freed. A room is some 5 KiB: a worker
/// keeps at most 1.25 MiB of them, after that many requests at once (an
/// HTTP/2 client's streams come and go in bursts: with 64 kept, a third of
/// the requests of 160 concurrent streams allocated a room).
const KEPT: usize = 256;

thread_local! {
    static ROOMS: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A future in a room of its own; the room goes back to the thread's
/// pool when this is dropped (the future, finished or not, dropped first).
pub(crate) struct Slot<F: Future + 'static>(Option<Room<F>>);

/// A room as the pool holds it: boxed once more, so that it goes back to
/// the pool as a `Box<dyn Any>` without another allocation.
type Room<F> = Box<Pin<Box<Option<F>>>>;

impl<F: Future + 'static> Slot<F> {
    /// The future `make` returns, in a room. Made in place: a future moved
    /// is copied whole (its every state), while `make` inlined here writes
    /// only its arguments into the room.
    #[inline(always)]
    pub(crate) fn new(make: impl FnOnce() -> F) -> Slot<F> {
        // The last room given back is usually of this kind (a thread serves
        // HTTP/1.1 and HTTP/2 requests alike: rooms of both kinds are kept).
        let kept = ROOMS.with_borrow_mut(|rooms| {
            let at = rooms.iter().rposition(|room| room.is::<Pin<Box<Option<F>>>>())?;
            rooms.swap_remove(at).downcast::<Pin<Box<Option<F>>>>().ok()
        });
        match kept {
            Some(mut room) => {
                room.set(Some(make()));
                Slot(Some(room))
            }
            None => Slot(Some(Box::new(Box::pin(Some(make()))))),
        }
    }
}

impl<F: Future + 'static> Future for Slot<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let room = self.0.as_mut().expect("a slot holds its room until dropped");
        room.as_mut().as_mut().as_pin_mut().expect("a slot holds its future until dropped").poll(cx)
    }
}

impl<F: Future + 'static> Drop for Slot<F> {
    fn drop(&mut self) {
        let Some(mut room) = self.0.take() else { return };
        room.set(None);
        // A slot dropped as its thread ends (after the pool itself) is freed.
        let _ = ROOMS.try_with(|rooms| {
            let mut rooms = rooms.borrow_mut();
            if rooms.len() < KEPT {
                rooms.push(room);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    async fn holding(held: Rc<()>) -> usize {
        std::future::pending::<()>().await;
        Rc::strong_count(&held)
    }

    async fn answer() -> [u8; 512] {
        [7; 512]
    }

    fn room<F: Future + 'static>(slot: &Slot<F>) -> *const Option<F> {
        &***slot.0.as_ref().unwrap()
    }

    #[test]
    fn a_room_serves_the_next_future_and_drops_the_last() {
        ROOMS.with_borrow_mut(Vec::clear);
        let held = Rc::new(());
        let first = Slot::new(|| holding(held.clone()));
        let first_room = room(&first);
        assert_eq!(Rc::strong_count(&held), 2);
        drop(first);
        assert_eq!(Rc::strong_count(&held), 1, "the unfinished future was dropped with its slot");
        assert_eq!(ROOMS.with_borrow(Vec::len), 1, "its room kept");
        let second = Slot::new(|| holding(held.clone()));
        assert_eq!(room(&second), first_room, "the same room");
        assert_eq!(ROOMS.with_borrow(Vec::len), 0);
        let third = Slot::new(|| holding(held.clone()));
        assert_ne!(room(&third), first_room, "a room of its own while the first is taken");
        drop((second, third));
        assert_eq!(Rc::strong_count(&held), 1);
        assert_eq!(ROOMS.with_borrow(Vec::len), 2);
    }

    #[test]
    fn rooms_of_two_kinds_are_kept_and_each_serves_its_kind() {
        ROOMS.with_borrow_mut(Vec::clear);
        let held = Rc::new(());
        let small = Slot::new(|| holding(held.clone()));
        let large = Slot::new(answer);
        let (small_room, large_room) = (room(&small), room(&large).cast::<()>());
        drop((small, large));
        assert_eq!(ROOMS.with_borrow(Vec::len), 2);
        // The room given back last is of the other kind: the first is found.
        let small = Slot::new(|| holding(held.clone()));
        assert_eq!(room(&small), small_room);
        let large = Slot::new(answer);
        assert_eq!(room(&large).cast::<()>(), large_room);
        assert_eq!(ROOMS.with_borrow(Vec::len), 0);
    }

    #[test]
    fn a_finished_future_gives_its_output() {
        let mut slot = Slot::new(|| async { 7 });
        let waker = std::task::Waker::noop();
        let polled = Pin::new(&mut slot).poll(&mut Context::from_waker(waker));
        assert_eq!(polled, Poll::Ready(7));
    }
}
