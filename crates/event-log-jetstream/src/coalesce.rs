//! Shares one lookup of the stream's last sequence among the reads that wait for it at once.
//!
//! A read must learn a last sequence that was current *after* it arrived (read-your-writes: a
//! write answered before the read must be included). So a caller never takes the answer of a
//! round that was already under way when it came; it takes the answer of the next round, which
//! one of the waiting callers starts as soon as the current one ends. With many reads in flight
//! there is then at most one round trip under way and one queued, however many reads there are.

use std::sync::{Condvar, Mutex, PoisonError};

/// The rounds so far.
#[derive(Default)]
struct Rounds {
    /// Rounds started, and whether the last one is still under way.
    started: u64,
    running: bool,
    /// The last round finished, and its answer.
    finished: u64,
    answer: Option<Result<u64, String>>,
    /// Callers waiting for a round.
    waiting: usize,
}

/// The gate the reads go through.
#[derive(Default)]
pub(crate) struct Coalescer {
    rounds: Mutex<Rounds>,
    ended: Condvar,
}

impl Coalescer {
    /// The answer of a round that started after this call began: run by this caller when no
    /// round is under way, else by the first waiter once the one under way ends.
    pub(crate) fn ask(&self, round_trip: impl Fn() -> Result<u64, String>) -> Result<u64, String> {
        let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        // The first round that may answer this caller.
        let wanted = rounds.started + 1;
        loop {
            if rounds.finished >= wanted {
                return rounds
                    .answer
                    .clone()
                    .unwrap_or_else(|| Err("no answer".into()));
            }
            if !rounds.running {
                rounds.started += 1;
                rounds.running = true;
                let this = rounds.started;
                drop(rounds);
                let answer = round_trip();
                let mut finished = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                finished.running = false;
                finished.finished = this;
                finished.answer = Some(answer.clone());
                self.ended.notify_all();
                return answer;
            }
            rounds.waiting += 1;
            rounds = self
                .ended
                .wait(rounds)
                .unwrap_or_else(PoisonError::into_inner);
            rounds.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_answer_comes_from_a_round_that_began_after_its_caller() {
        let coalescer = Arc::new(Coalescer::default());
        // The "stream": a counter that grows; a caller notes it before asking, and the
        // answer must be at least that (a round that began after it).
        let head = Arc::new(AtomicU64::new(0));
        let trips = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (coalescer, head, trips) = (coalescer.clone(), head.clone(), trips.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let before = head.fetch_add(1, Ordering::SeqCst) + 1;
                        let answer = coalescer
                            .ask(|| {
                                trips.fetch_add(1, Ordering::SeqCst);
                                std::thread::yield_now();
                                Ok(head.load(Ordering::SeqCst))
                            })
                            .expect("an answer");
                        assert!(answer >= before, "{answer} < {before}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a reader");
        }
    }

    #[test]
    fn readers_that_arrive_during_a_round_share_the_next_one() {
        let coalescer = Arc::new(Coalescer::default());
        let trips = Arc::new(AtomicU64::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // The first reader's round blocks until released.
        let first = {
            let (coalescer, trips, release_rx) =
                (coalescer.clone(), trips.clone(), release_rx.clone());
            std::thread::spawn(move || {
                coalescer.ask(|| {
                    trips.fetch_add(1, Ordering::SeqCst);
                    release_rx.lock().unwrap().recv().unwrap();
                    Ok(1)
                })
            })
        };
        while trips.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // Ten more arrive while it is under way: none may take its answer.
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (coalescer, trips) = (coalescer.clone(), trips.clone());
                std::thread::spawn(move || {
                    coalescer.ask(|| {
                        trips.fetch_add(1, Ordering::SeqCst);
                        Ok(2)
                    })
                })
            })
            .collect();
        while coalescer.rounds.lock().unwrap().waiting < 10 {
            std::thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(1));
        for waiter in waiters {
            assert_eq!(
                waiter.join().unwrap(),
                Ok(2),
                "an answer from after it came"
            );
        }
        assert_eq!(
            trips.load(Ordering::SeqCst),
            2,
            "ten readers, one round trip"
        );
    }

    #[test]
    fn a_failed_round_fails_its_waiters_and_the_next_one_runs_again() {
        let coalescer = Coalescer::default();
        assert_eq!(coalescer.ask(|| Err("down".into())), Err("down".into()));
        assert_eq!(coalescer.ask(|| Ok(7)), Ok(7));
    }
}
