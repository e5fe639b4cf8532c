//! Timeouts that cost next to nothing per request. tokio's `timeout` puts a timer in the wheel
//! and takes it out again on every wait; a connection waits several times per request, and
//! almost never until the end. A [`Deadline`] is one timer for one kind of wait on one
//! connection: it is armed for the first deadline, and when it fires before the deadline of the
//! wait in progress (a later request moved it on) it is re-armed for that one. A wait that ends
//! in time touches the wheel only when the deadline moved earlier.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{sleep_until, Instant, Sleep};

/// One connection's timer for one kind of wait (see the module). Best when the deadlines it is
/// given seldom move earlier.
#[derive(Default)]
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The timers of one client connection: `client` for waits bounded by `request_timeout` (the
/// next request head, the request as a whole), `member` for a member's answer (`io_timeout`).
#[derive(Default)]
pub struct Timers {
    pub client: Deadline,
    pub member: Deadline,
}

impl Deadline {
    /// `future`'s output, or `None` when `deadline` passes first. (A future of its own rather
    /// than an `async fn`, which would hold `future` twice: as argument and pinned.)
    pub fn run<F: Future>(&mut self, deadline: Instant, future: F) -> Run<'_, F> {
        Run {
            timer: self,
            deadline,
            future,
        }
    }

    /// Completes when `deadline` has passed.
    pub async fn until(&mut self, deadline: Instant) {
        poll_fn(|cx| self.poll_until(deadline, cx)).await
    }

    fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier wait's deadline: this one is later.
            sleep.as_mut().reset(deadline);
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Deadline::run`].
    pub struct Run<'a, F> {
        timer: &'a mut Deadline,
        deadline: Instant,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Run<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        this.timer.poll_until(*this.deadline, cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn each_wait_ends_at_its_own_deadline_whatever_came_before() {
        let mut timer = Deadline::default();
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        // In time: the output.
        assert_eq!(timer.run(ms(100), async { 7 }).await, Some(7));
        // The timer is armed for 100 ms; a later deadline is kept, not cut short.
        assert_eq!(timer.run(ms(300), std::future::pending::<()>()).await, None);
        assert_eq!(Instant::now(), ms(300));
        // An earlier deadline than the armed one is kept too.
        timer.run(ms(10_000), async {}).await;
        timer.until(ms(400)).await;
        assert_eq!(Instant::now(), ms(400));
        // A deadline already past ends the wait at once.
        assert_eq!(timer.run(ms(50), std::future::pending::<()>()).await, None);
        assert_eq!(Instant::now(), ms(400));
        // A future that finishes before the deadline wins even if the timer fires meanwhile.
        let slow = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            "done"
        };
        assert_eq!(timer.run(ms(500), slow).await, Some("done"));
        assert_eq!(Instant::now(), ms(420));
    }
}
