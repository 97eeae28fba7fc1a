//! The reload rounds as a pure state machine: what happens when a deploy
//! starts a round, when an answer or a DNS resolution comes back, and what
//! is due next.
//!
//! Promises:
//! - No I/O, no clock, no randomness: every transition is handed the time
//!   (and the jitter for a backoff) and returns what the reload task must
//!   do: [`Job`]s to start, [`Effect`]s to log, count and persist.
//! - A result that belongs to a superseded round changes nothing.
//! - A round is confirmed when every URL resolved and every address it has
//!   now answered 2xx; addresses that left DNS no longer count.
//! - A refusal is reported once per round, and only when every address of
//!   every URL answered its first request with a failure status while the
//!   round before had been confirmed everywhere.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Failure, Progress, MAX_BACKOFF};

/// First retry delay.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How often names are re-resolved while a round is unconfirmed.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Backoff before attempt `failures + 1`: doubling from one second, capped
/// at [`MAX_BACKOFF`], scaled into its upper half by `jitter` (0.0 to 1.0)
/// so that replicas do not retry in lockstep.
pub(crate) fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) * 0.5)
}

/// Work the task must start now. `round` travels with the job and comes
/// back with its result, so that a superseded round's results are ignored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Job {
    /// Resolve URL number `url`.
    Resolve { round: u64, url: usize },
    /// Send the reload request of URL number `url` to `ip`.
    Reload { round: u64, url: usize, ip: IpAddr },
}

/// What a transition asks the task to log, count or persist, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// `url` resolved to `count` addresses.
    Resolved { url: usize, count: usize },
    /// A new address joined the round; its reload is pending.
    Joined { url: usize, ip: IpAddr },
    /// An address left DNS; `was_pending` when its reload was unconfirmed.
    Left {
        url: usize,
        ip: IpAddr,
        was_pending: bool,
    },
    /// Resolving `url` failed; it is tried again after `retry_in`, unless
    /// `given_up` (attempt limit reached before it ever resolved).
    ResolveFailed {
        url: usize,
        error: String,
        retry_in: Duration,
        given_up: bool,
    },
    /// `ip` answered 2xx on attempt number `attempt`.
    Reloaded {
        url: usize,
        ip: IpAddr,
        status: u16,
        attempt: u32,
    },
    /// Attempt number `attempt` at `ip` failed; retried after `retry_in`,
    /// or given up when `None`.
    ReloadFailed {
        url: usize,
        ip: IpAddr,
        error: Failure,
        attempt: u32,
        retry_in: Option<Duration>,
    },
    /// Every address refused the round's config on its first request
    /// after a confirmed round: the pipeline should roll back. `ip` and
    /// `error` are one refusing target and its answer.
    Refused { ip: IpAddr, error: String },
    /// Every address of every URL confirmed; `duration` since the round
    /// started.
    Confirmed { targets: usize, duration: Duration },
}

/// What starting a round did to the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Started {
    /// The new round's number.
    pub round: u64,
    /// The commit of the round it superseded while still unconfirmed.
    pub superseded: Option<String>,
}

/// Where one address stands in the current round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TargetState {
    /// Next attempt due at `at`; `failures` so far.
    Due {
        at: Instant,
        failures: u32,
    },
    InFlight {
        failures: u32,
    },
    Confirmed,
    GivenUp,
}

/// One URL in the current round.
#[derive(Debug)]
struct UrlRound {
    targets: BTreeMap<IpAddr, TargetState>,
    /// Resolved at least once this round.
    resolved: bool,
    resolving: bool,
    next_resolve: Instant,
    resolve_failures: u32,
    given_up: bool,
}

impl UrlRound {
    fn new(now: Instant) -> UrlRound {
        UrlRound {
            targets: BTreeMap::new(),
            resolved: false,
            resolving: false,
            next_resolve: now,
            resolve_failures: 0,
            given_up: false,
        }
    }

    fn all_confirmed(&self) -> bool {
        self.resolved
            && self
                .targets
                .values()
                .all(|t| matches!(t, TargetState::Confirmed))
    }

    fn finished(&self) -> bool {
        self.given_up
            || (self.resolved
                && self
                    .targets
                    .values()
                    .all(|t| matches!(t, TargetState::Confirmed | TargetState::GivenUp)))
    }
}

/// The round started by one deploy.
#[derive(Debug)]
struct Round {
    no: u64,
    commit: String,
    started: Instant,
    urls: Vec<UrlRound>,
    confirmed: bool,
    /// The round before this one was confirmed everywhere.
    previous_confirmed: bool,
    /// First-attempt outcome per target: `Some(failure)` or `None` (ok).
    first_outcomes: BTreeMap<(usize, IpAddr), Option<Failure>>,
    refusal_sent: bool,
}

/// The rounds of one reloader: the current one and what is needed to judge
/// the next.
#[derive(Debug)]
pub(crate) struct Rounds {
    /// How many URLs each round reloads.
    urls: usize,
    /// Give up on a target (or an unresolvable URL) after this many failed
    /// attempts; `None` retries forever.
    attempts: Option<u32>,
    /// Rounds started so far.
    numbered: u64,
    /// The last finished round was confirmed everywhere.
    last_confirmed: bool,
    current: Option<Round>,
}

impl Rounds {
    /// No round yet. `last_confirmed` is what the persisted record says
    /// about the round before a restart.
    pub(crate) fn new(urls: usize, attempts: Option<u32>, last_confirmed: bool) -> Rounds {
        Rounds {
            urls,
            attempts,
            numbered: 0,
            last_confirmed,
            current: None,
        }
    }

    /// A deploy of `commit`: a new round supersedes the current one.
    pub(crate) fn start(&mut self, commit: String, now: Instant) -> Started {
        self.numbered += 1;
        let superseded = self
            .current
            .take()
            .filter(|old| !old.confirmed)
            .map(|old| old.commit);
        let previous_confirmed = std::mem::replace(&mut self.last_confirmed, false);
        self.current = Some(Round {
            no: self.numbered,
            commit,
            started: now,
            urls: (0..self.urls).map(|_| UrlRound::new(now)).collect(),
            confirmed: false,
            previous_confirmed,
            first_outcomes: BTreeMap::new(),
            refusal_sent: false,
        });
        Started {
            round: self.numbered,
            superseded,
        }
    }

    /// The current round's commit.
    pub(crate) fn commit(&self) -> Option<&str> {
        self.current.as_ref().map(|r| r.commit.as_str())
    }

    /// Every resolution and request due at `now`, marked as started.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Job> {
        let Some(round) = self.current.as_mut().filter(|r| !r.confirmed) else {
            return Vec::new();
        };
        let no = round.no;
        let mut resolves = Vec::new();
        let mut reloads = Vec::new();
        for (url, url_round) in round.urls.iter_mut().enumerate() {
            if !url_round.resolving && !url_round.given_up && url_round.next_resolve <= now {
                url_round.resolving = true;
                resolves.push(Job::Resolve { round: no, url });
            }
            for (ip, state) in url_round.targets.iter_mut() {
                if let TargetState::Due { at, failures } = *state {
                    if at <= now {
                        *state = TargetState::InFlight { failures };
                        reloads.push(Job::Reload {
                            round: no,
                            url,
                            ip: *ip,
                        });
                    }
                }
            }
        }
        resolves.extend(reloads);
        resolves
    }

    /// When the next job falls due; `None` when nothing is waiting on
    /// time (no round, or the round is confirmed).
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let round = self.current.as_ref().filter(|r| !r.confirmed)?;
        let mut wake = None::<Instant>;
        let mut consider = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        for url in &round.urls {
            if !url.resolving && !url.given_up {
                consider(url.next_resolve);
            }
            for state in url.targets.values() {
                if let TargetState::Due { at, .. } = state {
                    consider(*at);
                }
            }
        }
        wake
    }

    /// A resolution of URL number `url` came back.
    pub(crate) fn resolved(
        &mut self,
        round: u64,
        url: usize,
        result: Result<Vec<IpAddr>, String>,
        now: Instant,
        jitter: f64,
    ) -> Vec<Effect> {
        let attempts = self.attempts;
        let Some(current) = self.round_numbered(round) else {
            return Vec::new();
        };
        let url_round = &mut current.urls[url];
        url_round.resolving = false;
        let mut effects = Vec::new();
        match result {
            Ok(addresses) => {
                url_round.resolved = true;
                url_round.resolve_failures = 0;
                url_round.next_resolve = now + RESOLVE_EVERY;
                effects.push(Effect::Resolved {
                    url,
                    count: addresses.len(),
                });
                let gone: Vec<IpAddr> = url_round
                    .targets
                    .keys()
                    .filter(|ip| !addresses.contains(ip))
                    .copied()
                    .collect();
                for ip in gone {
                    let state = url_round.targets.remove(&ip);
                    effects.push(Effect::Left {
                        url,
                        ip,
                        was_pending: !matches!(state, Some(TargetState::Confirmed)),
                    });
                }
                for ip in addresses {
                    url_round.targets.entry(ip).or_insert_with(|| {
                        effects.push(Effect::Joined { url, ip });
                        TargetState::Due {
                            at: now,
                            failures: 0,
                        }
                    });
                }
            }
            Err(error) => {
                url_round.resolve_failures += 1;
                let retry_in = backoff(url_round.resolve_failures, jitter);
                url_round.next_resolve = now + retry_in;
                let given_up = attempts.is_some_and(|limit| {
                    url_round.resolve_failures >= limit && !url_round.resolved
                });
                url_round.given_up = given_up;
                effects.push(Effect::ResolveFailed {
                    url,
                    error,
                    retry_in,
                    given_up,
                });
            }
        }
        self.judge(now, &mut effects);
        effects
    }

    /// The answer of `ip` (URL number `url`) to a reload request came back.
    pub(crate) fn reloaded(
        &mut self,
        round: u64,
        url: usize,
        ip: IpAddr,
        result: Result<u16, Failure>,
        now: Instant,
        jitter: f64,
    ) -> Vec<Effect> {
        let attempts = self.attempts;
        let Some(current) = self.round_numbered(round) else {
            return Vec::new();
        };
        let Some(state) = current.urls[url].targets.get_mut(&ip) else {
            return Vec::new();
        };
        let TargetState::InFlight { failures } = *state else {
            return Vec::new();
        };
        if failures == 0 {
            current
                .first_outcomes
                .insert((url, ip), result.as_ref().err().cloned());
        }
        let mut effects = Vec::new();
        match result {
            Ok(status) => {
                *state = TargetState::Confirmed;
                effects.push(Effect::Reloaded {
                    url,
                    ip,
                    status,
                    attempt: failures + 1,
                });
            }
            Err(error) => {
                let failures = failures + 1;
                let given_up = attempts.is_some_and(|limit| failures >= limit);
                let delay = backoff(failures, jitter);
                *state = if given_up {
                    TargetState::GivenUp
                } else {
                    TargetState::Due {
                        at: now + delay,
                        failures,
                    }
                };
                effects.push(Effect::ReloadFailed {
                    url,
                    ip,
                    error,
                    attempt: failures,
                    retry_in: (!given_up).then_some(delay),
                });
            }
        }
        self.judge(now, &mut effects);
        effects
    }

    /// The current round if it is number `round`; `None` for a result of a
    /// superseded round.
    fn round_numbered(&mut self, round: u64) -> Option<&mut Round> {
        self.current.as_mut().filter(|r| r.no == round)
    }

    /// Where the current round stands, for whoever waits on it.
    pub(crate) fn progress(&self) -> Option<Progress> {
        let round = self.current.as_ref()?;
        Some(Progress {
            round: round.no,
            confirmed: round.confirmed,
            finished: round.confirmed || round.urls.iter().all(UrlRound::finished),
        })
    }

    /// After a result was recorded: is the round refused, or complete?
    fn judge(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let Some(round) = self.current.as_mut() else {
            return;
        };
        if let Some(refused) = refusal(round) {
            round.refusal_sent = true;
            effects.push(refused);
        }
        if !round.confirmed && round.urls.iter().all(UrlRound::all_confirmed) {
            round.confirmed = true;
            self.last_confirmed = true;
            effects.push(Effect::Confirmed {
                targets: round.urls.iter().map(|u| u.targets.len()).sum(),
                duration: now.saturating_duration_since(round.started),
            });
        }
    }
}

/// The refusal of `round`, when every target of every (resolved) URL
/// answered its first request with a failure status and the previous
/// config had been accepted everywhere. One replica refusing while others
/// accept is not a refusal: it stays pending.
fn refusal(round: &Round) -> Option<Effect> {
    if round.refusal_sent || !round.previous_confirmed || round.confirmed {
        return None;
    }
    if !round.urls.iter().all(|u| u.resolved) {
        return None;
    }
    let mut first = None;
    for (url, url_round) in round.urls.iter().enumerate() {
        for ip in url_round.targets.keys() {
            match round.first_outcomes.get(&(url, *ip)) {
                Some(Some(failure @ Failure::Status { .. })) => {
                    first.get_or_insert((*ip, failure.to_string()));
                }
                // Not answered yet, accepted, or unreachable: no verdict.
                _ => return None,
            }
        }
    }
    first.map(|(ip, error)| Effect::Refused { ip, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The three answers a replica can give to its first request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Answer {
        Accepts,
        Refuses,
        TimesOut,
    }

    impl Answer {
        fn result(self) -> Result<u16, Failure> {
            match self {
                Answer::Accepts => Ok(200),
                Answer::Refuses => Err(Failure::Status {
                    code: 500,
                    body: "scrape_configz: unknown field".into(),
                }),
                Answer::TimesOut => Err(Failure::Transport("no answer within 1s".into())),
            }
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn ips(lasts: &[u8]) -> Vec<IpAddr> {
        lasts.iter().map(|l| ip(*l)).collect()
    }

    fn resolve_job(round: u64, url: usize) -> Job {
        Job::Resolve { round, url }
    }

    fn reload_job(round: u64, url: usize, last: u8) -> Job {
        Job::Reload {
            round,
            url,
            ip: ip(last),
        }
    }

    /// Every permutation of `items`, by Heap's algorithm.
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        fn heap<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
            if k <= 1 {
                out.push(items.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, items, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                items.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(items.len(), &mut items.to_vec(), &mut out);
        out
    }

    /// A round for one URL whose name resolved to `addresses`, with every
    /// request sent: the state just before the first answers arrive.
    fn round_in_flight(addresses: &[u8], previous_confirmed: bool, now: Instant) -> Rounds {
        let mut rounds = Rounds::new(1, None, previous_confirmed);
        assert_eq!(rounds.start("c1".into(), now).round, 1);
        assert_eq!(rounds.due(now), [resolve_job(1, 0)]);
        let effects = rounds.resolved(1, 0, Ok(ips(addresses)), now, 0.0);
        assert_eq!(
            effects[0],
            Effect::Resolved {
                url: 0,
                count: addresses.len()
            }
        );
        let jobs = rounds.due(now);
        assert_eq!(
            jobs,
            addresses
                .iter()
                .map(|l| reload_job(1, 0, *l))
                .collect::<Vec<_>>()
        );
        rounds
    }

    #[test]
    fn backoff_doubles_from_one_second_with_jitter_in_the_upper_half_and_a_cap() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(7, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF / 2);
        for failures in 1..40 {
            assert!(backoff(failures + 1, 0.5) >= backoff(failures, 0.5));
        }
    }

    /// Every order of answers from three addresses, for every mix of
    /// accept / refuse / time out: the verdict depends on the answers
    /// alone, never on their order, and is given with the last answer.
    #[test]
    fn every_answer_order_of_three_addresses_gives_the_same_verdict() {
        let kinds = [Answer::Accepts, Answer::Refuses, Answer::TimesOut];
        let addresses = [2u8, 3, 4];
        let orders: BTreeSet<Vec<u8>> = permutations(&addresses).into_iter().collect();
        assert_eq!(orders.len(), 6, "{orders:?}");
        let mut cases = 0;
        for previous_confirmed in [true, false] {
            for a in kinds {
                for b in kinds {
                    for c in kinds {
                        let answers = BTreeMap::from([(2u8, a), (3, b), (4, c)]);
                        // The oracle: counted from the answers, not the code.
                        let accepted = answers.values().filter(|x| **x == Answer::Accepts).count();
                        let refused = answers.values().filter(|x| **x == Answer::Refuses).count();
                        let expect_confirmed = accepted == 3;
                        let expect_refusal = previous_confirmed && refused == 3;
                        for order in permutations(&addresses) {
                            cases += 1;
                            let t0 = Instant::now();
                            let mut rounds = round_in_flight(&addresses, previous_confirmed, t0);
                            let mut verdicts = Vec::new();
                            for (n, last) in order.iter().enumerate() {
                                let answer = answers[last];
                                let now = t0 + Duration::from_millis(10 * n as u64);
                                let effects =
                                    rounds.reloaded(1, 0, ip(*last), answer.result(), now, 0.0);
                                let what = format!("{answers:?} in order {order:?}");
                                match answer {
                                    Answer::Accepts => assert_eq!(
                                        effects[0],
                                        Effect::Reloaded {
                                            url: 0,
                                            ip: ip(*last),
                                            status: 200,
                                            attempt: 1
                                        },
                                        "{what}"
                                    ),
                                    _ => assert_eq!(
                                        effects[0],
                                        Effect::ReloadFailed {
                                            url: 0,
                                            ip: ip(*last),
                                            error: answer.result().unwrap_err(),
                                            attempt: 1,
                                            retry_in: Some(Duration::from_millis(500)),
                                        },
                                        "{what}"
                                    ),
                                }
                                for e in &effects[1..] {
                                    verdicts.push((n, e.clone()));
                                }
                            }
                            let what = format!("{answers:?} in order {order:?}");
                            let mut expected = Vec::new();
                            if expect_refusal {
                                expected.push(2);
                            }
                            if expect_confirmed {
                                expected.push(2);
                            }
                            assert_eq!(
                                verdicts.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                                expected,
                                "verdicts come with the last answer: {what}: {verdicts:?}"
                            );
                            for (_, verdict) in &verdicts {
                                match verdict {
                                    Effect::Refused { ip: at, error } => {
                                        assert!(expect_refusal, "{what}");
                                        assert!(addresses.iter().any(|l| ip(*l) == *at), "{what}");
                                        assert!(
                                            error.starts_with("HTTP 500: scrape_configz"),
                                            "{error}"
                                        );
                                    }
                                    Effect::Confirmed { targets, duration } => {
                                        assert!(expect_confirmed, "{what}");
                                        assert_eq!(*targets, 3);
                                        assert_eq!(*duration, Duration::from_millis(20));
                                    }
                                    other => panic!("unexpected {other:?}: {what}"),
                                }
                            }
                            let progress = rounds.progress().unwrap();
                            assert_eq!(progress.round, 1);
                            assert_eq!(progress.confirmed, expect_confirmed, "{what}");
                            assert_eq!(progress.finished, expect_confirmed, "{what}");
                            // Failed addresses are retried after their
                            // backoff; nothing else is waited for once the
                            // round is confirmed.
                            let retry_at = order
                                .iter()
                                .position(|l| answers[l] != Answer::Accepts)
                                .map(|n| t0 + Duration::from_millis(10 * n as u64 + 500));
                            if expect_confirmed {
                                assert_eq!(rounds.next_wake(), None, "{what}");
                            } else {
                                let wake = rounds.next_wake().unwrap();
                                // Re-resolution (every second) or the first retry.
                                assert_eq!(
                                    wake,
                                    retry_at.unwrap().min(t0 + RESOLVE_EVERY),
                                    "{what}"
                                );
                                let retried: BTreeSet<Job> = rounds
                                    .due(t0 + Duration::from_millis(520))
                                    .into_iter()
                                    .filter(|j| matches!(j, Job::Reload { .. }))
                                    .collect();
                                let failed: BTreeSet<Job> = answers
                                    .iter()
                                    .filter(|(_, a)| **a != Answer::Accepts)
                                    .map(|(l, _)| reload_job(1, 0, *l))
                                    .collect();
                                assert_eq!(retried, failed, "{what}");
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 27 * 6);
    }

    /// Under `--once` (an attempt limit), a failed address is given up and
    /// the round is finished but not confirmed.
    #[test]
    fn attempt_limit_gives_up_a_failing_address_and_finishes_the_round_unconfirmed() {
        let t0 = Instant::now();
        let mut rounds = Rounds::new(1, Some(2), true);
        rounds.start("c1".into(), t0);
        rounds.due(t0);
        rounds.resolved(1, 0, Ok(ips(&[2, 3])), t0, 0.0);
        rounds.due(t0);
        rounds.reloaded(1, 0, ip(2), Ok(200), t0, 0.0);
        let first = rounds.reloaded(1, 0, ip(3), Answer::TimesOut.result(), t0, 0.0);
        assert!(matches!(
            first[0],
            Effect::ReloadFailed {
                attempt: 1,
                retry_in: Some(_),
                ..
            }
        ));
        assert!(!rounds.progress().unwrap().finished);
        let later = t0 + Duration::from_millis(500);
        assert!(rounds.due(later).contains(&reload_job(1, 0, 3)));
        let second = rounds.reloaded(1, 0, ip(3), Answer::TimesOut.result(), later, 0.0);
        assert!(matches!(
            second[0],
            Effect::ReloadFailed {
                attempt: 2,
                retry_in: None,
                ..
            }
        ));
        assert_eq!(
            rounds.progress().unwrap(),
            Progress {
                round: 1,
                confirmed: false,
                finished: true
            }
        );
    }

    /// A refused address that accepts a retry confirms the round; the
    /// refusal was reported once.
    #[test]
    fn a_retry_that_succeeds_after_a_refusal_confirms_the_round_without_a_second_refusal() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2], true, t0);
        let refused = rounds.reloaded(1, 0, ip(2), Answer::Refuses.result(), t0, 0.0);
        assert!(matches!(refused[1], Effect::Refused { .. }), "{refused:?}");
        let later = t0 + Duration::from_millis(500);
        assert_eq!(rounds.due(later), [reload_job(1, 0, 2)]);
        let again = rounds.reloaded(1, 0, ip(2), Answer::Refuses.result(), later, 1.0);
        assert_eq!(again.len(), 1, "refusal reported twice: {again:?}");
        assert!(
            matches!(again[0], Effect::ReloadFailed { attempt: 2, retry_in: Some(d), .. } if d == Duration::from_secs(2))
        );
        let last = later + Duration::from_secs(2);
        assert_eq!(rounds.due(last), [resolve_job(1, 0), reload_job(1, 0, 2)]);
        let ok = rounds.reloaded(1, 0, ip(2), Ok(200), last, 0.0);
        assert_eq!(
            ok[0],
            Effect::Reloaded {
                url: 0,
                ip: ip(2),
                status: 200,
                attempt: 3
            }
        );
        assert!(
            matches!(ok[1], Effect::Confirmed { targets: 1, .. }),
            "{ok:?}"
        );
        assert_eq!(ok.len(), 2);
    }

    /// The verdict is read from first answers only: a replica that was
    /// unreachable at first and refuses on a retry does not make a round
    /// refused (its config may have changed since).
    #[test]
    fn a_refusal_on_a_retry_is_no_verdict() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2], true, t0);
        let first = rounds.reloaded(1, 0, ip(2), Answer::TimesOut.result(), t0, 0.0);
        assert_eq!(first.len(), 1, "{first:?}");
        let later = t0 + Duration::from_millis(500);
        assert_eq!(rounds.due(later), [reload_job(1, 0, 2)]);
        let retry = rounds.reloaded(1, 0, ip(2), Answer::Refuses.result(), later, 0.0);
        assert!(
            matches!(retry[..], [Effect::ReloadFailed { attempt: 2, .. }]),
            "{retry:?}"
        );
    }

    #[test]
    fn address_that_appears_mid_round_is_reloaded_and_awaited() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2, 3], true, t0);
        rounds.reloaded(1, 0, ip(2), Ok(200), t0, 0.0);
        // Before .3 answers, the name is resolved again and .4 has joined.
        let t1 = t0 + RESOLVE_EVERY;
        assert_eq!(rounds.due(t1), [resolve_job(1, 0)]);
        let effects = rounds.resolved(1, 0, Ok(ips(&[2, 3, 4])), t1, 0.0);
        assert_eq!(
            effects,
            [
                Effect::Resolved { url: 0, count: 3 },
                Effect::Joined { url: 0, ip: ip(4) }
            ]
        );
        assert_eq!(
            rounds.due(t1),
            [reload_job(1, 0, 4)],
            "only the new address is sent a request"
        );
        let effects = rounds.reloaded(1, 0, ip(3), Ok(200), t1, 0.0);
        assert_eq!(
            effects.len(),
            1,
            "confirmed without the new address: {effects:?}"
        );
        assert!(!rounds.progress().unwrap().confirmed);
        let effects = rounds.reloaded(1, 0, ip(4), Ok(200), t1, 0.0);
        assert_eq!(
            effects[1],
            Effect::Confirmed {
                targets: 3,
                duration: RESOLVE_EVERY
            }
        );
        assert_eq!(rounds.due(t1 + Duration::from_secs(60)), []);
    }

    #[test]
    fn address_that_leaves_dns_mid_round_is_dropped_and_no_longer_awaited() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2, 3, 4], true, t0);
        rounds.reloaded(1, 0, ip(2), Ok(200), t0, 0.0);
        rounds.reloaded(1, 0, ip(3), Ok(200), t0, 0.0);
        // .4 hangs: its request is still in flight when it leaves DNS, and
        // .2 (already confirmed) leaves too.
        let t1 = t0 + RESOLVE_EVERY;
        assert_eq!(rounds.due(t1), [resolve_job(1, 0)]);
        let effects = rounds.resolved(1, 0, Ok(ips(&[3])), t1, 0.0);
        assert_eq!(
            effects,
            [
                Effect::Resolved { url: 0, count: 1 },
                Effect::Left {
                    url: 0,
                    ip: ip(2),
                    was_pending: false
                },
                Effect::Left {
                    url: 0,
                    ip: ip(4),
                    was_pending: true
                },
                Effect::Confirmed {
                    targets: 1,
                    duration: RESOLVE_EVERY
                },
            ]
        );
        // The hung request finally times out: it changes nothing.
        assert_eq!(
            rounds.reloaded(1, 0, ip(4), Answer::TimesOut.result(), t1, 0.0),
            []
        );
        assert_eq!(rounds.next_wake(), None);
        assert_eq!(rounds.due(t1 + Duration::from_secs(60)), []);
    }

    /// An address whose first answer was a timeout blocks the refusal
    /// verdict only while it is in DNS.
    #[test]
    fn unreachable_address_leaving_dns_lets_the_others_refusal_stand() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2, 3, 4], true, t0);
        rounds.reloaded(1, 0, ip(2), Answer::Refuses.result(), t0, 0.0);
        rounds.reloaded(1, 0, ip(3), Answer::Refuses.result(), t0, 0.0);
        let effects = rounds.reloaded(1, 0, ip(4), Answer::TimesOut.result(), t0, 0.0);
        assert_eq!(effects.len(), 1, "{effects:?}");
        let t1 = t0 + RESOLVE_EVERY;
        rounds.due(t1);
        let effects = rounds.resolved(1, 0, Ok(ips(&[2, 3])), t1, 0.0);
        assert!(
            matches!(effects.last(), Some(Effect::Refused { ip: at, .. }) if *at == ip(2)),
            "{effects:?}"
        );
    }

    #[test]
    fn a_url_that_never_resolves_holds_the_round_and_is_given_up_only_with_a_limit() {
        let t0 = Instant::now();
        for limit in [None, Some(2)] {
            let mut rounds = Rounds::new(2, limit, true);
            rounds.start("c1".into(), t0);
            assert_eq!(rounds.due(t0), [resolve_job(1, 0), resolve_job(1, 1)]);
            let failed = rounds.resolved(1, 0, Err("tasks.missing: NXDOMAIN".into()), t0, 1.0);
            assert_eq!(
                failed,
                [Effect::ResolveFailed {
                    url: 0,
                    error: "tasks.missing: NXDOMAIN".into(),
                    retry_in: Duration::from_secs(1),
                    given_up: false,
                }]
            );
            rounds.resolved(1, 1, Ok(ips(&[2])), t0, 0.0);
            assert_eq!(rounds.due(t0), [reload_job(1, 1, 2)]);
            let ok = rounds.reloaded(1, 1, ip(2), Ok(200), t0, 0.0);
            assert_eq!(ok.len(), 1, "confirmed with a URL unresolved: {ok:?}");
            let t1 = t0 + Duration::from_secs(1);
            assert_eq!(rounds.due(t1), [resolve_job(1, 0), resolve_job(1, 1)]);
            let again = rounds.resolved(1, 0, Err("tasks.missing: NXDOMAIN".into()), t1, 1.0);
            assert!(
                matches!(again[0], Effect::ResolveFailed { retry_in, given_up, .. }
                    if retry_in == Duration::from_secs(2) && given_up == limit.is_some()),
                "{again:?}"
            );
            let progress = rounds.progress().unwrap();
            assert!(!progress.confirmed);
            assert_eq!(progress.finished, limit.is_some());
            let resolving_again = rounds
                .due(t1 + Duration::from_secs(2))
                .contains(&resolve_job(1, 0));
            assert_eq!(resolving_again, limit.is_none());
        }
    }

    #[test]
    fn a_newer_round_supersedes_the_pending_one_and_ignores_its_late_answers() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2, 3], true, t0);
        rounds.reloaded(1, 0, ip(2), Ok(200), t0, 0.0);
        let started = rounds.start("c2".into(), t0);
        assert_eq!(
            started,
            Started {
                round: 2,
                superseded: Some("c1".into())
            }
        );
        assert_eq!(rounds.commit(), Some("c2"));
        // Round 1's pending answer and resolution arrive late.
        assert_eq!(rounds.reloaded(1, 0, ip(3), Ok(200), t0, 0.0), []);
        assert_eq!(rounds.resolved(1, 0, Ok(ips(&[2, 3])), t0, 0.0), []);
        assert_eq!(
            rounds.progress().unwrap(),
            Progress {
                round: 2,
                confirmed: false,
                finished: false
            }
        );
        // Round 2 starts from scratch: every address is asked again.
        assert_eq!(rounds.due(t0), [resolve_job(2, 0)]);
        rounds.resolved(2, 0, Ok(ips(&[2, 3])), t0, 0.0);
        assert_eq!(rounds.due(t0), [reload_job(2, 0, 2), reload_job(2, 0, 3)]);
        // An answer of round 1 to an address that round 2 has in flight
        // does not count for round 2.
        assert_eq!(rounds.reloaded(1, 0, ip(2), Ok(200), t0, 0.0), []);
        rounds.reloaded(2, 0, ip(2), Answer::Refuses.result(), t0, 0.0);
        let effects = rounds.reloaded(2, 0, ip(3), Answer::Refuses.result(), t0, 0.0);
        assert_eq!(
            effects.len(),
            1,
            "a refusal after an unconfirmed round is not a verdict: {effects:?}"
        );
    }

    #[test]
    fn superseding_a_confirmed_round_reports_nothing_and_arms_the_refusal() {
        let t0 = Instant::now();
        let mut rounds = round_in_flight(&[2], false, t0);
        let ok = rounds.reloaded(1, 0, ip(2), Ok(200), t0, 0.0);
        assert!(matches!(ok[1], Effect::Confirmed { .. }));
        assert_eq!(
            rounds.start("c2".into(), t0),
            Started {
                round: 2,
                superseded: None
            }
        );
        rounds.due(t0);
        rounds.resolved(2, 0, Ok(ips(&[2])), t0, 0.0);
        rounds.due(t0);
        let refused = rounds.reloaded(2, 0, ip(2), Answer::Refuses.result(), t0, 0.0);
        assert!(
            matches!(&refused[1], Effect::Refused { ip: at, .. } if *at == ip(2)),
            "{refused:?}"
        );
    }

    #[test]
    fn no_round_means_nothing_due_and_no_progress() {
        let mut rounds = Rounds::new(1, None, true);
        assert_eq!(rounds.due(Instant::now()), []);
        assert_eq!(rounds.next_wake(), None);
        assert_eq!(rounds.progress(), None);
        assert_eq!(rounds.commit(), None);
    }
}
