//! The scheduler on a virtual clock: `t0` plus offsets, no sleeps.

use super::*;

fn row(n: u64) -> Row {
    Row {
        number: n,
        line: n + 1,
        email: format!("r{n}@example.net"),
        fields: Vec::new(),
        problem: None,
    }
}

trait FinalVerdict {
    fn final_verdict(self) -> Verdict;
}

impl FinalVerdict for Handled {
    fn final_verdict(self) -> Verdict {
        match self {
            Self::Final(v) => v,
            Self::Retry(at) => panic!("expected a final verdict, got a retry at {at:?}"),
        }
    }
}

fn job(n: u64) -> Job {
    Job::new(row(n))
}

fn schedule(cfg: ScheduleConfig) -> Schedule {
    Schedule::new(cfg)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Takes the next job's row number, or panics with what came instead.
fn take(s: &mut Schedule, now: Instant) -> u64 {
    match s.poll_job(now, 0) {
        Poll::Job { job, .. } => job.row.number,
        other => panic!("expected a job at {now:?}, got {other:?}"),
    }
}

#[test]
fn backoff_doubles_and_caps() {
    let s = Duration::from_secs(1);
    assert_eq!(backoff(s, 1), s);
    assert_eq!(backoff(s, 2), 2 * s);
    assert_eq!(backoff(s, 4), 8 * s);
    assert_eq!(backoff(s, 30), Duration::from_secs(60));
}

#[test]
fn fresh_jobs_go_in_list_order_then_done() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig::default());
    for n in 1..=3 {
        s.push(job(n)).expect("not stopped");
    }
    s.producer_done();
    let mut taken = Vec::new();
    for _ in 0..3 {
        let Poll::Job { job, not_before } = s.poll_job(t0, 0) else {
            panic!("expected a job")
        };
        assert_eq!(not_before, t0, "no rate limit: send at once");
        taken.push(job.row.number);
        assert!(matches!(
            s.handle_outcome(job, Delivery::Sent, t0),
            Handled::Final(_)
        ));
    }
    assert_eq!(taken, [1, 2, 3]);
    assert_eq!(s.poll_job(t0, 0), Poll::Done);
    assert!(s.is_finished());
}

#[test]
fn waits_while_the_list_is_still_being_read() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig::default());
    assert_eq!(s.poll_job(t0, 0), Poll::Wait(None));
    s.producer_done();
    assert_eq!(s.poll_job(t0, 0), Poll::Done);
}

#[test]
fn deferred_jobs_come_back_after_backoff_before_fresh_ones() {
    let t0 = Instant::now();
    let cfg = ScheduleConfig {
        retries: 3,
        retry_delay: ms(100),
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    for n in 1..=4 {
        s.push(job(n)).expect("not stopped");
    }
    s.producer_done();
    let Poll::Job { job: j1, .. } = s.poll_job(t0, 0) else {
        panic!()
    };
    assert_eq!(
        s.handle_outcome(j1, Delivery::Deferred, t0),
        Handled::Retry(t0 + ms(100))
    );
    assert_eq!(s.poll_timeout(), Some(t0 + ms(100)));
    // Not due yet: fresh jobs go first.
    assert_eq!(take(&mut s, t0 + ms(99)), 2);
    // Due: the retry beats the fresh row 3.
    let Poll::Job { job: j1, .. } = s.poll_job(t0 + ms(100), 0) else {
        panic!()
    };
    assert_eq!((j1.row.number, j1.attempts), (1, 1));
    // Second deferral: the delay doubles.
    let t1 = t0 + ms(100);
    assert_eq!(
        s.handle_outcome(j1, Delivery::Deferred, t1),
        Handled::Retry(t1 + ms(200))
    );
    assert_eq!(s.poll_timeout(), Some(t1 + ms(200)));
}

#[test]
fn retries_in_due_order_ties_first_deferred_first() {
    let t0 = Instant::now();
    let cfg = ScheduleConfig {
        retry_delay: ms(10),
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    for n in 1..=3 {
        s.push(job(n)).expect("not stopped");
    }
    s.producer_done();
    let jobs: Vec<Job> = (0..3)
        .map(|_| match s.poll_job(t0, 0) {
            Poll::Job { job, .. } => job,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut it = jobs.into_iter();
    let (j1, j2, j3) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    // Row 3 deferred first, then 1 at the same instant, then 2 later.
    assert!(matches!(
        s.handle_outcome(j3, Delivery::Deferred, t0),
        Handled::Retry(_)
    ));
    assert!(matches!(
        s.handle_outcome(j1, Delivery::Unknown, t0),
        Handled::Retry(_)
    ));
    assert!(matches!(
        s.handle_outcome(j2, Delivery::Deferred, t0 + ms(5)),
        Handled::Retry(_)
    ));
    assert_eq!(s.poll_job(t0 + ms(9), 0), Poll::Wait(Some(t0 + ms(10))));
    let later = t0 + ms(60);
    assert_eq!(
        [
            take(&mut s, later),
            take(&mut s, later),
            take(&mut s, later)
        ],
        [3, 1, 2]
    );
}

#[test]
fn retries_exhausted_end_deferred_failed_or_unknown() {
    let t0 = Instant::now();
    let cfg = ScheduleConfig {
        retries: 1,
        retry_delay: ms(1),
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    for n in 1..=3 {
        s.push(job(n)).expect("not stopped");
    }
    s.producer_done();
    // 5xx: final at once.
    let Poll::Job { job, .. } = s.poll_job(t0, 0) else {
        panic!()
    };
    let v = s
        .handle_outcome(job, Delivery::Rejected, t0)
        .final_verdict();
    assert_eq!((v.status, v.job.attempts), (Status::Failed, 1));
    // 4xx twice: retried once, then deferred.
    let Poll::Job { job, .. } = s.poll_job(t0, 0) else {
        panic!()
    };
    assert!(matches!(
        s.handle_outcome(job, Delivery::Deferred, t0),
        Handled::Retry(_)
    ));
    let Poll::Job { job, .. } = s.poll_job(t0 + ms(1), 0) else {
        panic!()
    };
    assert_eq!(job.row.number, 2);
    let v = s
        .handle_outcome(job, Delivery::Deferred, t0)
        .final_verdict();
    assert_eq!((v.status, v.job.attempts), (Status::Deferred, 2));
    // unknown, then 5xx: the first copy may have arrived, so never `failed`.
    let Poll::Job { job, .. } = s.poll_job(t0 + ms(1), 0) else {
        panic!()
    };
    assert!(matches!(
        s.handle_outcome(job, Delivery::Unknown, t0),
        Handled::Retry(_)
    ));
    let Poll::Job { job, .. } = s.poll_job(t0 + ms(2), 0) else {
        panic!()
    };
    assert!(job.uncertain);
    let v = s
        .handle_outcome(job, Delivery::Rejected, t0)
        .final_verdict();
    assert_eq!(v.status, Status::Unknown);
    assert!(v.was_uncertain);
    assert!(s.is_finished());
}

#[test]
fn max_per_connection_rotates_the_session() {
    let t0 = Instant::now();
    let cfg = ScheduleConfig {
        max_per_connection: 2,
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    for n in 1..=3 {
        s.push(job(n)).expect("not stopped");
    }
    assert!(matches!(s.poll_job(t0, 0), Poll::Job { .. }));
    assert!(matches!(s.poll_job(t0, 1), Poll::Job { .. }));
    assert_eq!(s.poll_job(t0, 2), Poll::Rotate);
    // A fresh session starts counting again.
    assert!(matches!(s.poll_job(t0, 0), Poll::Job { .. }));
}

#[test]
fn rate_limit_spaces_messages_over_all_sessions() {
    let t0 = Instant::now();
    let cfg = ScheduleConfig {
        rate: Some(10.0),
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    for n in 1..=4 {
        s.push(job(n)).expect("not stopped");
    }
    let slot = |s: &mut Schedule, now| match s.poll_job(now, 0) {
        Poll::Job { not_before, .. } => not_before,
        other => panic!("{other:?}"),
    };
    assert_eq!(slot(&mut s, t0), t0);
    assert_eq!(slot(&mut s, t0), t0 + ms(100));
    assert_eq!(slot(&mut s, t0 + ms(1)), t0 + ms(200));
    // After an idle spell the slot is `now`, with no burst to catch up.
    assert_eq!(slot(&mut s, t0 + ms(1000)), t0 + ms(1000));
}

#[test]
fn stop_ends_sessions_refuses_pushes_and_drains_the_rest() {
    let t0 = Instant::now();
    let cfg = ScheduleConfig {
        retry_delay: Duration::from_secs(30),
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    for n in 1..=3 {
        s.push(job(n)).expect("not stopped");
    }
    let Poll::Job { job: in_flight, .. } = s.poll_job(t0, 0) else {
        panic!()
    };
    let Poll::Job { job: deferred, .. } = s.poll_job(t0, 0) else {
        panic!()
    };
    assert!(matches!(
        s.handle_outcome(deferred, Delivery::Deferred, t0),
        Handled::Retry(_)
    ));
    s.stop();
    assert_eq!(s.poll_job(t0, 0), Poll::Done);
    assert_eq!(s.push(job(4)), Err(job(4)));
    // The message in flight finishes; no retry once stopped.
    let v = s
        .handle_outcome(in_flight, Delivery::Deferred, t0)
        .final_verdict();
    assert_eq!(v.status, Status::Deferred);
    // The rest comes back, retries first and whatever their time.
    s.producer_done();
    let drained: Vec<u64> = std::iter::from_fn(|| s.drain())
        .map(|j| j.row.number)
        .collect();
    assert_eq!(drained, [2, 3]);
    assert!(s.is_finished());
}

#[test]
fn a_full_queue_asks_the_list_reader_to_wait() {
    let cfg = ScheduleConfig {
        queue_cap: 2,
        ..ScheduleConfig::default()
    };
    let mut s = schedule(cfg);
    s.push(job(1)).expect("not stopped");
    assert!(!s.is_full());
    s.push(job(2)).expect("not stopped");
    assert!(s.is_full());
    assert_eq!(s.queued(), 2);
    assert!(s.has_ready_job(Instant::now()));
}
