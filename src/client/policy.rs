//! What a client does, apart from I/O: shared by the blocking [`Client`](super::Client) and the
//! `AsyncClient`, so that both follow one protocol (DESIGN.md §4, thesis §6.3).
//!
//! Nothing here touches a socket or reads a clock. A client tells it what happened (a server's
//! answer, a failed connection) and how much time its call has left; it answers with what to do
//! next: return the answer, try again (at which server, after which pause, on a fresh connection
//! or not), or fail for good. [`Session`] keeps the session id and the sequence numbers.

use crate::consensus::ResponseMode;
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::types::{LogIndex, ServerId};
use crate::wire::{RejectionReason, RequestBody, ResponseBody, SessionProposal};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

/// The first pause after "unknown leader" or a failed connection; it doubles up to
/// [`BACKOFF_MAX`].
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between attempts: well under an election timeout, so a client notices a
/// new leader within a few tens of milliseconds of its election (the pauses run 10, 20, 40,
/// 50, 50, ... ms).
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(50);
/// The longest one connection attempt may take.
pub(super) const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// A random id for a new client, sent in its connection preamble.
pub(super) fn new_client_id() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}

/// How long a connection attempt may take with `remaining` left in the call.
pub(super) fn connect_timeout(remaining: Duration) -> Duration {
    remaining
        .min(CONNECT_TIMEOUT_MAX)
        .max(Duration::from_millis(1))
}

/// The cluster's addresses and the one a client sends to next. It lives as long as the client,
/// so a call starts at the server the previous one ended with (usually the leader).
#[derive(Debug)]
pub(super) struct Route {
    cluster: Vec<SocketAddr>,
    /// Index in `cluster` of the server to try next.
    target: usize,
}

impl Route {
    pub(super) fn new(cluster: impl IntoIterator<Item = SocketAddr>) -> Route {
        Route {
            cluster: cluster.into_iter().collect(),
            target: 0,
        }
    }

    /// The server to send the next attempt to.
    ///
    /// # Panics
    /// If the cluster is empty; [`Call::start`] refuses such a call first.
    /// Every server of the cluster, as given.
    pub(super) fn cluster(&self) -> &[SocketAddr] {
        &self.cluster
    }

    pub(super) fn target(&self) -> SocketAddr {
        self.cluster[self.target % self.cluster.len()]
    }

    fn next_server(&mut self) {
        self.target = (self.target + 1) % self.cluster.len().max(1);
    }

    /// Moves to a hinted leader if `hint` is one of the cluster's addresses other than the
    /// current target; hints elsewhere are never followed (DESIGN.md §4).
    fn follow(&mut self, hint: &str) -> bool {
        let hinted = hint
            .parse::<SocketAddr>()
            .ok()
            .and_then(|hint| self.cluster.iter().position(|&a| a == hint));
        match hinted {
            Some(position) if position != self.target % self.cluster.len() => {
                self.target = position;
                true
            }
            _ => false,
        }
    }
}

/// What a client does after one attempt of a call.
#[derive(Debug)]
pub(super) enum Step {
    /// The call's answer: return it.
    Answer(ResponseBody),
    /// The call failed for good: return the error.
    Fail(Error),
    /// Try again at [`Route::target`]: first close the connection if `close`, then sleep for
    /// `pause` if there is one.
    Retry {
        close: bool,
        pause: Option<Duration>,
    },
}

/// The retry state of one call: its backoff and the last problem met, for the timeout error.
#[derive(Debug)]
pub(super) struct Call {
    timeout: Duration,
    backoff: Duration,
    last_problem: String,
}

impl Call {
    /// Starts a call with the client's `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] at once if the client was given no server to ask.
    pub(super) fn start(route: &Route, timeout: Duration) -> Result<Call> {
        if route.cluster.is_empty() {
            return Err(Error::Timeout {
                timeout: Duration::ZERO,
                last_problem: "the client was given no server addresses".to_owned(),
            });
        }
        Ok(Call {
            timeout,
            backoff: BACKOFF_MIN,
            last_problem: String::from("no attempt finished"),
        })
    }

    /// Checked before every attempt.
    ///
    /// # Errors
    /// [`Error::Timeout`], with the last problem met, once no time is left.
    pub(super) fn check_deadline(&mut self, remaining: Duration) -> Result<()> {
        if remaining.is_zero() {
            return Err(Error::Timeout {
                timeout: self.timeout,
                last_problem: std::mem::take(&mut self.last_problem),
            });
        }
        Ok(())
    }

    /// The [`Error::Timeout`] of one request that ran out of time while the call goes on, for
    /// the [`Pipeline`](super::Pipeline), whose one retry state serves many requests at once.
    pub(super) fn timed_out(&self) -> Error {
        Error::Timeout {
            timeout: self.timeout,
            last_problem: self.last_problem.clone(),
        }
    }

    /// Back to the first, shortest pause: a final answer came, so the next trouble is new
    /// trouble (the [`Pipeline`](super::Pipeline)'s retry state outlives any one request).
    pub(super) fn reset_backoff(&mut self) {
        self.backoff = BACKOFF_MIN;
    }

    /// A connection could not be opened, or a request or its answer was lost with the
    /// connection: move to the next server after a pause. A proposal is resent under its
    /// sequence number, so it is still applied at most once.
    pub(super) fn failed(&mut self, route: &mut Route, error: &Error, remaining: Duration) -> Step {
        self.last_problem = error.to_string();
        route.next_server();
        Step::Retry {
            close: true,
            pause: Some(self.pause(remaining)),
        }
    }

    /// Server `from` answered `body`.
    pub(super) fn answered(
        &mut self,
        route: &mut Route,
        from: SocketAddr,
        body: ResponseBody,
        remaining: Duration,
    ) -> Step {
        match body {
            ResponseBody::NotLeader {
                leader_id,
                leader_address,
            } => {
                if route.follow(&leader_address) {
                    return Step::Retry {
                        close: false,
                        pause: None,
                    };
                }
                self.last_problem = format!(
                    "{from} names leader {leader_id} at {leader_address}, \
                     which is not one of the cluster's addresses"
                );
                route.next_server();
                self.retry_after_pause(remaining)
            }
            ResponseBody::UnknownLeader => {
                // Usually an election under way, which any server will soon know the end of;
                // but a server outside the configuration (removed, or not added yet) may never
                // hear of a leader, so the next attempt goes to the next server.
                self.last_problem = format!("{from} knows no leader (election under way)");
                route.next_server();
                self.retry_after_pause(remaining)
            }
            ResponseBody::Rejected { reason, message } => match reason {
                // Unknown outcome: the request is retried under the same session number, so the
                // session table answers it exactly once.
                RejectionReason::Dropped
                | RejectionReason::Overloaded
                | RejectionReason::OutcomeUnknown => {
                    self.last_problem = format!("{from}: {reason}: {message}");
                    self.retry_after_pause(remaining)
                }
                RejectionReason::ShuttingDown => {
                    self.last_problem = format!("{from}: {reason}: {message}");
                    route.next_server();
                    Step::Retry {
                        close: true,
                        pause: None,
                    }
                }
                RejectionReason::TooLarge
                | RejectionReason::BadRequest
                | RejectionReason::Superseded
                | RejectionReason::TransferFailed
                | RejectionReason::MembershipChangeFailed => Step::Fail(Error::Rejected {
                    reason: reason.to_string(),
                    message,
                }),
            },
            answer => Step::Answer(answer),
        }
    }

    fn retry_after_pause(&mut self, remaining: Duration) -> Step {
        Step::Retry {
            close: false,
            pause: Some(self.pause(remaining)),
        }
    }

    /// The current backoff (never past the deadline); doubles it for next time.
    fn pause(&mut self, remaining: Duration) -> Duration {
        let pause = self.backoff.min(remaining);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        pause
    }
}

/// A client's session (thesis §6.3): its id once the cluster opened it, and the sequence number
/// of the next proposal in it.
#[derive(Debug)]
pub(super) struct Session {
    id: Option<u64>,
    next_sequence: u64,
}

impl Session {
    pub(super) fn new() -> Session {
        Session {
            id: None,
            next_sequence: 1,
        }
    }

    /// The open session's id.
    pub(super) fn id(&self) -> Option<u64> {
        self.id
    }

    /// Records the answer to [`RequestBody::RegisterSession`]; the new session numbers its
    /// proposals from 1.
    ///
    /// # Errors
    /// Any answer other than `SessionRegistered`.
    pub(super) fn registered(&mut self, answer: ResponseBody) -> Result<u64> {
        match answer {
            ResponseBody::SessionRegistered(session) => {
                self.id = Some(session);
                self.next_sequence = 1;
                Ok(session)
            }
            other => Err(unexpected(other)),
        }
    }

    /// The next proposal in `session`, under a new sequence number. Whatever happens to it, the
    /// next one gets the next number: a request that timed out may still be applied, and must
    /// not be mistaken for the next one. Its retries resend this same request.
    pub(super) fn proposal(
        &mut self,
        session: u64,
        command: &[u8],
        respond_when: ResponseMode,
    ) -> RequestBody {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        RequestBody::SessionPropose(SessionProposal {
            session,
            sequence,
            command: command.to_vec(),
            respond_when,
        })
    }

    /// The final answer to a proposal, as the caller sees it.
    ///
    /// # Errors
    /// [`Error::Refused`] with the state machine's error; [`Error::SessionExpired`], after which
    /// the session is forgotten and the next proposal opens a new one.
    pub(super) fn settle(&mut self, answer: ResponseBody) -> Result<ResponseBody> {
        match answer {
            ResponseBody::Refused(error) => Err(Error::Refused { error }),
            ResponseBody::SessionExpired(session) => {
                self.id = None;
                Err(Error::SessionExpired { session })
            }
            answer => Ok(answer),
        }
    }
}

/// The state machine's reply in an answer to `propose` or `query`.
pub(super) fn applied(answer: ResponseBody) -> Result<Vec<u8>> {
    match answer {
        ResponseBody::Applied(result) => Ok(result),
        other => Err(unexpected(other)),
    }
}

/// The log index in an answer to `propose_committed`.
pub(super) fn committed(answer: ResponseBody) -> Result<LogIndex> {
    match answer {
        ResponseBody::Committed(index) => Ok(index),
        // A retry of a request applied since is answered from the session table.
        ResponseBody::Applied(_) => Err(unexpected(ResponseBody::Applied(Vec::new()))),
        other => Err(unexpected(other)),
    }
}

/// The server now leading, in an answer to `transfer_leadership`.
pub(super) fn transferred(answer: ResponseBody) -> Result<ServerId> {
    match answer {
        ResponseBody::Transferred(to) => Ok(to),
        other => Err(unexpected(other)),
    }
}

/// The index of the configuration entry, in an answer to a membership change.
pub(super) fn membership_changed(answer: ResponseBody) -> Result<LogIndex> {
    match answer {
        ResponseBody::MembershipChanged(index) => Ok(index),
        other => Err(unexpected(other)),
    }
}

/// What [`Client::cluster_status`](super::Client::cluster_status) has heard so far: each
/// server's own report by the address it was asked at. It asks every address the client was
/// given, then every member of the configuration that did not answer there, at the address the
/// configuration gives ([`StatusSurvey::members_to_ask`]), then puts each member's report beside
/// what the leader knows of it ([`StatusSurvey::finish`]).
#[derive(Debug, Default)]
pub(super) struct StatusSurvey {
    reports: Vec<(SocketAddr, Result<Metrics>)>,
}

impl StatusSurvey {
    /// Records the answer (or failure) of the server at `address`.
    pub(super) fn record(&mut self, address: SocketAddr, report: Result<Metrics>) {
        self.reports.push((address, report));
    }

    /// The leader that answered, of the highest term if several think they lead.
    fn leader(&self) -> Option<&Metrics> {
        self.answers()
            .filter(|metrics| metrics.role == crate::Role::Leader)
            .max_by_key(|metrics| metrics.current_term)
    }

    fn answers(&self) -> impl Iterator<Item = &Metrics> {
        self.reports
            .iter()
            .filter_map(|(_, report)| report.as_ref().ok())
    }

    /// The configuration to report: the leader's, or failing that the one of the server with
    /// the newest log among those that answered.
    fn membership(&self) -> Option<&Membership> {
        let newest = || {
            self.answers()
                .max_by_key(|metrics| (metrics.current_term, metrics.last_log_index))
        };
        self.leader()
            .or_else(newest)
            .map(|metrics| &metrics.membership)
    }

    /// Members of the configuration no answer came from yet, at their address in the
    /// configuration, leaving out addresses already asked (a member that is down is asked
    /// once). Members whose address is not `ip:port` are left to [`StatusSurvey::finish`].
    pub(super) fn members_to_ask(&self) -> Vec<SocketAddr> {
        let Some(membership) = self.membership() else {
            return Vec::new();
        };
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for (id, member) in membership.members() {
            if self.answers().any(|metrics| metrics.id == id) {
                continue;
            }
            let Ok(address) = member.address.parse::<SocketAddr>() else {
                continue;
            };
            let asked = self.reports.iter().any(|&(asked, _)| asked == address);
            if !asked && !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        addresses
    }

    /// Every member of the configuration in ascending id order, then every other server that
    /// was asked (not a member: waiting to be added, or removed; or an address that did not
    /// answer and is no member's), each with the leader's match index for it.
    pub(super) fn finish(self) -> Vec<MemberStatus> {
        let membership = self.membership().cloned().unwrap_or_default();
        let leader = self.leader().cloned();
        let match_index = |id: ServerId| {
            let leader = leader.as_ref()?;
            if leader.id == id {
                Some(leader.last_log_index)
            } else {
                leader.match_indexes.get(&id).copied()
            }
        };
        let mut reports: Vec<Option<(SocketAddr, Result<Metrics>)>> =
            self.reports.into_iter().map(Some).collect();
        let mut statuses = Vec::new();
        for (id, member) in membership.members() {
            let answered = reports.iter().position(|report| {
                report
                    .as_ref()
                    .is_some_and(|(_, report)| report.as_ref().is_ok_and(|m| m.id == id))
            });
            let configured = member.address.parse::<SocketAddr>();
            let failed_there = || {
                let address = configured.as_ref().ok()?;
                reports.iter().position(|report| {
                    report
                        .as_ref()
                        .is_some_and(|(asked, report)| asked == address && report.is_err())
                })
            };
            let (address, metrics) = match answered.or_else(failed_there) {
                Some(position) => reports[position].take().expect("found above"),
                None => (
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    Err(Error::Io {
                        address: member.address.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!(
                                "{id}'s address in the configuration, {:?}, is not ip:port",
                                member.address
                            ),
                        ),
                    }),
                ),
            };
            statuses.push(MemberStatus {
                id: Some(id),
                address,
                voter: Some(member.voter),
                metrics,
                match_index: match_index(id),
            });
        }
        for (address, metrics) in reports.into_iter().flatten() {
            let id = metrics.as_ref().ok().map(|metrics| metrics.id);
            statuses.push(MemberStatus {
                id,
                address,
                voter: None,
                metrics,
                match_index: id.and_then(match_index),
            });
        }
        statuses
    }
}

/// One server of the cluster as [`Client::cluster_status`](super::Client::cluster_status) sees
/// it.
#[derive(Debug)]
pub struct MemberStatus {
    /// Its id: from the configuration, or from its own answer; `None` for an address the client
    /// was given that did not answer and that no member of the configuration has.
    pub id: Option<ServerId>,
    /// Where it was asked: the address the client was given for it, or its address in the
    /// configuration (`0.0.0.0:0` if that is not `ip:port`; the error then says so).
    pub address: SocketAddr,
    /// In the configuration reported (the leader's): `Some(true)` for a voter, `Some(false)` for
    /// a learner; `None` for a server outside it (waiting to be added, or removed).
    pub voter: Option<bool>,
    /// Its own report (role, term, leader, commit and applied index, ...), or why none came.
    pub metrics: Result<Metrics>,
    /// How far the leader knows its log matches the leader's (the leader's own last index for
    /// the leader); `None` when no leader answered or it does not know.
    pub match_index: Option<LogIndex>,
}

/// The metrics in an answer to `status`.
pub(super) fn status(answer: ResponseBody) -> Result<Metrics> {
    match answer {
        ResponseBody::Status(metrics) => Ok(metrics),
        other => Err(unexpected(other)),
    }
}

fn unexpected(body: ResponseBody) -> Error {
    Error::Rejected {
        reason: "unexpected answer".to_owned(),
        message: format!("{body:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ServerId;

    fn addresses(count: u16) -> Vec<SocketAddr> {
        (0..count)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], 9001 + port)))
            .collect()
    }

    fn not_leader(address: &str) -> ResponseBody {
        ResponseBody::NotLeader {
            leader_id: ServerId(3),
            leader_address: address.to_owned(),
        }
    }

    const PLENTY: Duration = Duration::from_secs(5);

    #[test]
    fn an_empty_cluster_fails_at_once() {
        let error = Call::start(&Route::new([]), PLENTY).unwrap_err();
        assert!(error.to_string().contains("no server addresses"), "{error}");
    }

    #[test]
    fn a_hint_to_a_cluster_address_is_followed_at_once() {
        let cluster = addresses(3);
        let mut route = Route::new(cluster.clone());
        let mut call = Call::start(&route, PLENTY).unwrap();
        let step = call.answered(&mut route, cluster[0], not_leader("127.0.0.1:9003"), PLENTY);
        assert!(
            matches!(
                step,
                Step::Retry {
                    close: false,
                    pause: None
                }
            ),
            "{step:?}"
        );
        assert_eq!(route.target(), cluster[2]);
    }

    #[test]
    fn a_hint_outside_the_cluster_or_to_itself_moves_on_after_a_pause() {
        let cluster = addresses(2);
        let mut route = Route::new(cluster.clone());
        let mut call = Call::start(&route, PLENTY).unwrap();
        for hint in ["10.9.9.9:9001", "not an address", "127.0.0.1:9001"] {
            let from = route.target();
            let step = call.answered(&mut route, from, not_leader(hint), PLENTY);
            assert!(
                matches!(
                    step,
                    Step::Retry {
                        close: false,
                        pause: Some(_)
                    }
                ),
                "{step:?}"
            );
            assert_ne!(route.target(), from, "{hint}");
        }
        let error = call.check_deadline(Duration::ZERO).unwrap_err().to_string();
        assert!(
            error.contains("not one of the cluster's addresses"),
            "{error}"
        );
    }

    /// A server that knows no leader may never learn of one (removed from the configuration, or
    /// not added yet): the next attempt, after a pause, goes to the next server.
    #[test]
    fn an_unknown_leader_moves_on_to_the_next_server_after_a_pause() {
        let cluster = addresses(3);
        let mut route = Route::new(cluster.clone());
        let mut call = Call::start(&route, PLENTY).unwrap();
        for expected in [1, 2, 0] {
            let from = route.target();
            let step = call.answered(&mut route, from, ResponseBody::UnknownLeader, PLENTY);
            assert!(
                matches!(
                    step,
                    Step::Retry {
                        close: false,
                        pause: Some(_)
                    }
                ),
                "{step:?}"
            );
            assert_eq!(route.target(), cluster[expected]);
        }
    }

    #[test]
    fn membership_changes_answer_with_their_index_and_refusals_carry_the_reason() {
        let mut route = Route::new(addresses(1));
        let mut call = Call::start(&route, PLENTY).unwrap();
        let from = route.target();
        let refusal = ResponseBody::Rejected {
            reason: RejectionReason::MembershipChangeFailed,
            message: "a configuration change is in progress (adding n4)".to_owned(),
        };
        let Step::Fail(error) = call.answered(&mut route, from, refusal, PLENTY) else {
            panic!("a refused change is final");
        };
        assert!(matches!(error, Error::Rejected { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("membership change failed"), "{text}");
        assert!(text.contains("in progress (adding n4)"), "{text}");
        assert_eq!(
            membership_changed(ResponseBody::MembershipChanged(LogIndex(9))).unwrap(),
            LogIndex(9)
        );
        assert!(membership_changed(ResponseBody::Transferred(ServerId(2))).is_err());
    }

    /// Metrics of server `id` in `role` at `term`, with `membership` in force.
    fn metrics(id: u64, role: crate::Role, term: u64, membership: &Membership) -> Metrics {
        Metrics {
            id: ServerId(id),
            role,
            current_term: crate::Term(term),
            current_leader: None,
            last_log_index: LogIndex(10 * id),
            commit_index: LogIndex(0),
            last_applied: LogIndex(id),
            match_indexes: Default::default(),
            snapshot_index: LogIndex(0),
            first_log_index: LogIndex(1),
            membership: membership.clone(),
        }
    }

    fn unreachable(address: SocketAddr) -> Result<Metrics> {
        Err(Error::Io {
            address: address.to_string(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        })
    }

    /// `cluster_status` asks the members the client was not given at their configured
    /// addresses (a member that did not answer at an address already asked is not asked
    /// again), and lists every member, learners and down ones included, in id order, then the
    /// servers outside the configuration, each with the leader's match index.
    #[test]
    fn the_status_survey_follows_the_leaders_configuration() {
        use crate::Role::{Follower, Leader, Learner};
        let [a1, a2, a3, a4, a5] = <[SocketAddr; 5]>::try_from(addresses(5)).unwrap();
        let stale = Membership::default()
            .with_voter(ServerId(1), a1.to_string())
            .with_voter(ServerId(2), a2.to_string());
        let current = stale
            .clone()
            .with_voter(ServerId(3), a3.to_string())
            .with_learner(ServerId(4), a4.to_string())
            .with_voter(ServerId(6), "not an address");
        let mut leader = metrics(2, Leader, 5, &current);
        leader.match_indexes = [(ServerId(1), LogIndex(7)), (ServerId(4), LogIndex(3))].into();
        let mut survey = StatusSurvey::default();
        // The client was given n1 (stale, older term), n2 (the leader), n3's address (down)
        // and n5 (a removed server).
        survey.record(a1, Ok(metrics(1, Follower, 4, &stale)));
        survey.record(a2, Ok(leader));
        survey.record(a3, unreachable(a3));
        survey.record(a5, Ok(metrics(5, Learner, 3, &stale)));
        assert_eq!(survey.members_to_ask(), vec![a4]);
        survey.record(a4, Ok(metrics(4, Learner, 5, &current)));
        assert!(survey.members_to_ask().is_empty());
        let statuses = survey.finish();
        let summary: Vec<_> = statuses
            .iter()
            .map(|status| {
                (
                    status.id.map(|id| id.0),
                    status.address,
                    status.voter,
                    status.metrics.as_ref().ok().map(|m| m.role),
                    status.match_index.map(|index| index.0),
                )
            })
            .collect();
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        assert_eq!(
            summary,
            [
                (Some(1), a1, Some(true), Some(Follower), Some(7)),
                (Some(2), a2, Some(true), Some(Leader), Some(20)),
                (Some(3), a3, Some(true), None, None),
                (Some(4), a4, Some(false), Some(Learner), Some(3)),
                (Some(6), nowhere, Some(true), None, None),
                (Some(5), a5, None, Some(Learner), None),
            ]
        );
        let error = statuses[4].metrics.as_ref().unwrap_err().to_string();
        assert!(
            error.contains("\"not an address\", is not ip:port"),
            "{error}"
        );
    }

    #[test]
    fn backoff_starts_at_10ms_doubles_to_50ms_and_never_passes_the_deadline() {
        let mut route = Route::new(addresses(1));
        let mut call = Call::start(&route, PLENTY).unwrap();
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let from = route.target();
            match call.answered(&mut route, from, ResponseBody::UnknownLeader, PLENTY) {
                Step::Retry {
                    close: false,
                    pause: Some(pause),
                } => pauses.push(pause.as_millis()),
                step => panic!("{step:?}"),
            }
        }
        assert_eq!(pauses, [10, 20, 40, 50, 50, 50]);
        let short = Duration::from_millis(3);
        let step = call.failed(&mut route, &Error::ServerStopped("x".into()), short);
        assert!(matches!(step, Step::Retry { close: true, pause: Some(p) } if p == short));
    }

    #[test]
    fn retryable_rejections_pause_and_final_ones_fail() {
        let mut route = Route::new(addresses(2));
        let mut call = Call::start(&route, PLENTY).unwrap();
        let rejected = |reason| ResponseBody::Rejected {
            reason,
            message: "because".to_owned(),
        };
        for reason in [
            RejectionReason::Dropped,
            RejectionReason::Overloaded,
            RejectionReason::OutcomeUnknown,
        ] {
            let from = route.target();
            let step = call.answered(&mut route, from, rejected(reason), PLENTY);
            assert!(matches!(
                step,
                Step::Retry {
                    close: false,
                    pause: Some(_)
                }
            ));
            assert_eq!(route.target(), from, "stays with the leader");
        }
        let from = route.target();
        let step = call.answered(
            &mut route,
            from,
            rejected(RejectionReason::ShuttingDown),
            PLENTY,
        );
        assert!(matches!(
            step,
            Step::Retry {
                close: true,
                pause: None
            }
        ));
        assert_ne!(route.target(), from);
        for reason in [
            RejectionReason::TooLarge,
            RejectionReason::BadRequest,
            RejectionReason::Superseded,
        ] {
            let from = route.target();
            let step = call.answered(&mut route, from, rejected(reason), PLENTY);
            assert!(
                matches!(step, Step::Fail(Error::Rejected { .. })),
                "{step:?}"
            );
        }
    }

    #[test]
    fn the_timeout_names_the_last_problem() {
        let cluster = addresses(1);
        let mut route = Route::new(cluster.clone());
        let mut call = Call::start(&route, Duration::from_millis(200)).unwrap();
        call.answered(&mut route, cluster[0], ResponseBody::UnknownLeader, PLENTY);
        let error = call.check_deadline(Duration::ZERO).unwrap_err().to_string();
        assert!(error.contains("within 200ms"), "{error}");
        assert!(error.contains("127.0.0.1:9001 knows no leader"), "{error}");
    }

    #[test]
    fn sessions_number_proposals_and_forget_an_expired_session() {
        let mut session = Session::new();
        assert_eq!(session.id(), None);
        assert_eq!(
            session
                .registered(ResponseBody::SessionRegistered(7))
                .unwrap(),
            7
        );
        let sequence = |body: RequestBody| match body {
            RequestBody::SessionPropose(proposal) => (proposal.session, proposal.sequence),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            sequence(session.proposal(7, b"a", ResponseMode::Applied)),
            (7, 1)
        );
        assert_eq!(
            sequence(session.proposal(7, b"b", ResponseMode::Committed)),
            (7, 2)
        );
        assert!(matches!(
            session.settle(ResponseBody::Refused(b"no".to_vec())),
            Err(Error::Refused { .. })
        ));
        assert_eq!(session.id(), Some(7));
        assert!(matches!(
            session.settle(ResponseBody::SessionExpired(7)),
            Err(Error::SessionExpired { session: 7 })
        ));
        assert_eq!(session.id(), None);
        assert_eq!(
            session
                .registered(ResponseBody::SessionRegistered(9))
                .unwrap(),
            9
        );
        assert_eq!(
            sequence(session.proposal(9, b"c", ResponseMode::Applied)),
            (9, 1)
        );
        assert!(session.registered(ResponseBody::UnknownLeader).is_err());
    }
}
