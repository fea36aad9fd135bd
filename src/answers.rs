//! Genuine chat requests waiting for their answer. A person waits on each and
//! Slack gives up on it after 3 s, while a card, a thread reply or a publish
//! can come a moment later: while a crowd of them waits, the outbox gives way
//! (see `delivery`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// More chat requests than this waiting at once make a crowd. A person's
/// commands and clicks, even a busy team's, come far fewer at a time; a
/// burst from a whole organisation or a load test, more.
const CROWD: usize = 16;
/// How long a crowd is taken to stay after it was last seen. Its requests are
/// answered in batches (one commit stores a few hundred), so the count drops
/// to nothing between batches while the crowd is still there.
const CROWD_LINGERS: Duration = Duration::from_millis(250);

pub struct AnswersDue {
    waiting: AtomicUsize,
    /// When a crowd was last seen: 1 + milliseconds after `counting_since` (0: never).
    crowd_seen: AtomicU64,
    counting_since: Instant,
}

impl Default for AnswersDue {
    fn default() -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            crowd_seen: AtomicU64::new(0),
            counting_since: Instant::now(),
        }
    }
}

impl AnswersDue {
    /// Counts one request as waiting until the returned guard is dropped.
    pub fn begin(&self) -> AnswerDue<'_> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= CROWD {
            self.saw_crowd();
        }
        AnswerDue(self)
    }

    /// Called as a crowd's member arrives or leaves, so it lingers after the last one has gone.
    fn saw_crowd(&self) {
        // Two threads may read the clock in one order and write in the other.
        self.crowd_seen
            .fetch_max(self.ms_counted(), Ordering::Relaxed);
    }

    /// Whether a crowd waits now or did a moment ago.
    pub fn crowded(&self) -> bool {
        let seen = self.crowd_seen.load(Ordering::Relaxed);
        self.waiting.load(Ordering::Relaxed) > CROWD
            || (seen != 0
                && self.ms_counted().saturating_sub(seen) < CROWD_LINGERS.as_millis() as u64)
    }

    fn ms_counted(&self) -> u64 {
        1 + self.counting_since.elapsed().as_millis() as u64
    }
}

/// One chat request waiting for its answer.
pub struct AnswerDue<'a>(&'a AnswersDue);

impl Drop for AnswerDue<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::Relaxed) > CROWD {
            self.0.saw_crowd();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_is_more_than_a_few_requests_waiting_and_lingers_a_moment_after_it_has_gone() {
        let answers = AnswersDue::default();
        let mut waiting: Vec<AnswerDue> = (0..CROWD).map(|_| answers.begin()).collect();
        assert!(!answers.crowded());
        waiting.push(answers.begin());
        assert!(answers.crowded());
        // Still there long after it came: the lingering counts from when it left.
        std::thread::sleep(CROWD_LINGERS + Duration::from_millis(5));
        assert!(answers.crowded());
        drop(waiting);
        assert_eq!(answers.waiting.load(Ordering::Relaxed), 0);
        assert!(
            answers.crowded(),
            "the next batch of the crowd is on its way"
        );
        std::thread::sleep(CROWD_LINGERS + Duration::from_millis(5));
        assert!(!answers.crowded());
    }
}
