//! Raft conformance: one test per scenario of CONFORMANCE.md, each citing the paper's § and the
//! scenario's number.
//!
//! Scenarios 1–21 drive one [`Consensus`] by hand: they hand it messages, proposals and timeouts
//! and read what it returns and what it holds. Scenarios 22–28 run a small cluster on an
//! in-memory network (`Cluster`, below) that delivers messages until none are left; there is no
//! clock, so every timeout in these tests is fired by the test itself.
//!
//! The vocabulary: `node`, `node_with_log` and `leader` make one server; `receive`, `fire`,
//! `sync` and `propose` drive it; `append`, `ack`, `request_vote` and `vote` write the messages;
//! `appends`, `append_responses`, `vote_requests` and `vote_responses` read what it sent.
//! `cluster(n)`, `elect`, `time_out`, `heartbeat`, `propose`, `partition`, `isolate`, `heal` and
//! `deliver_until_quiet` tell the cluster stories.
//!
//! Nothing here is random but the election timeouts, and every server's seed is its id, so
//! every run replays the same.

use mioraft::consensus::{
    Actions, AppendEntries, AppendEntriesResponse, BrokenRule, ClientReply, Config, Consensus,
    Envelope, Event, InstallSnapshot, MembershipChange, Message, ProposalId, ProposalOutcome,
    RequestVote, RequestVoteResponse, ResponseMode, SessionRequest, Timer, TimerAction,
};
use mioraft::{
    Entry, EntryKind, KvStateMachine, LogIndex, MemLog, Membership, PersistentLog, Role, ServerId,
    SnapshotMeta, StateMachine, Term,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

type Node = Consensus<MemLog, KvStateMachine>;

/// A log position as (index, term): `(2, 1)` is t1@2.
type Position = (u64, u64);

/// Vote answers in arrival order, as (peer, granted).
type Answers = &'static [(u64, bool)];

/// What an append response says, as (success, conflict_term, conflict_index).
type Verdict = (bool, u64, u64);

// ---- one server ----

fn voters(count: u64) -> Vec<ServerId> {
    (1..=count).map(ServerId).collect()
}

/// Server `id` of voters `1..=voter_count`, started, with its id as its seed.
fn build(id: u64, voter_count: u64, log: MemLog, config: Config) -> Node {
    let mut node = Consensus::new(
        ServerId(id),
        voters(voter_count),
        log,
        KvStateMachine::new(),
        config,
        id,
    )
    .expect("a valid server");
    let _ = node.start();
    node
}

/// The paper's rules alone: no pre-vote and no check-quorum (thesis §9.6), which have their
/// own section below; with them, an election timeout first asks for pre-votes.
fn paper_config() -> Config {
    Config {
        pre_vote: false,
        check_quorum: false,
        ..Config::default()
    }
}

/// A fresh server: follower, term 0, empty log.
fn node(id: u64, voter_count: u64) -> Node {
    build(id, voter_count, MemLog::new(), paper_config())
}

/// A server recovered from a log at `current_term` holding entries of `terms` from index 1.
fn node_with_log(id: u64, voter_count: u64, current_term: u64, terms: &[u64]) -> Node {
    build(
        id,
        voter_count,
        filled_log(current_term, terms),
        paper_config(),
    )
}

fn filled_log(current_term: u64, terms: &[u64]) -> MemLog {
    let mut log = MemLog::new();
    log.set_current_term(Term(current_term)).expect("set term");
    log.append_entries(LogIndex(1), &entries_from(1, terms))
        .expect("append");
    log.sync().expect("sync");
    log
}

/// Commands of `terms` placed from `first_index` on. Each names its index and term, so two logs
/// holding the same (index, term) hold the same entry, as Log Matching demands (§5.3).
fn entries_from(first_index: u64, terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .zip(first_index..)
        .map(|(&term, index)| Entry::command(Term(term), format!("put k{index} t{term}")))
        .collect()
}

/// Wins an election by hand: the timeout fires, the self-vote is synced, peers grant in id
/// order until it leads, and its no-op is synced.
fn win_election(node: &mut Node) {
    let _ = fire(node, Timer::Election);
    let _ = sync(node);
    let term = node.current_term().0;
    let peers: Vec<u64> = node
        .voters()
        .iter()
        .map(|voter| voter.0)
        .filter(|&voter| voter != node.id().0)
        .collect();
    for peer in peers {
        if node.role() == Role::Leader {
            break;
        }
        let _ = receive(node, peer, vote(term, true));
    }
    let _ = sync(node);
    assert_eq!(node.role(), Role::Leader, "won the election");
}

/// Server 1 of `voter_count`, leader of term 1, its no-op `t1@1` acknowledged by every follower
/// and committed: every follower is caught up and replicating.
fn leader(voter_count: u64) -> Node {
    let mut leader = node(1, voter_count);
    win_election(&mut leader);
    for peer in 2..=voter_count {
        let _ = receive(&mut leader, peer, ack(1, 1));
    }
    assert_eq!(leader.commit_index(), LogIndex(1), "the no-op committed");
    leader
}

/// A follower, candidate or leader, of term 1, as server 1 of three.
fn node_in_role(role: Role) -> Node {
    match role {
        Role::Follower => node_with_log(1, 3, 1, &[]),
        Role::Candidate => {
            let mut candidate = node(1, 3);
            let _ = fire(&mut candidate, Timer::Election);
            let _ = sync(&mut candidate);
            candidate
        }
        Role::Leader => leader(3),
        Role::Learner => unreachable!("the paper's scenarios have no learners"),
    }
}

fn receive(node: &mut Node, from: u64, message: Message) -> Actions {
    node.step(Event::Message {
        from: ServerId(from),
        message,
    })
    .expect("step")
}

/// Receives `message` and syncs, releasing whatever waited for durability.
fn receive_and_sync(node: &mut Node, from: u64, message: Message) -> Actions {
    let mut actions = receive(node, from, message);
    actions.merge(sync(node));
    actions
}

fn fire(node: &mut Node, timer: Timer) -> Actions {
    node.step(Event::Timeout(timer)).expect("step")
}

fn sync(node: &mut Node) -> Actions {
    node.sync().expect("sync")
}

fn propose(node: &mut Node, id: u64, command: &str) -> Actions {
    node.step(Event::ClientProposal {
        id: ProposalId(id),
        command: command.as_bytes().to_vec(),
    })
    .expect("step")
}

/// The terms of the log, index 1 first.
fn log_terms(node: &Node) -> Vec<u64> {
    log_entries(node).iter().map(|entry| entry.term.0).collect()
}

fn log_entries(node: &Node) -> Vec<Entry> {
    let log = node.log();
    log.entries(LogIndex(1), log.latest_log_index().next(), u64::MAX)
        .expect("read the log")
}

// ---- messages in ----

fn append(
    term: u64,
    leader: u64,
    (prev_log_index, prev_log_term): Position,
    entries: Vec<Entry>,
    leader_commit: u64,
) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        leader_id: ServerId(leader),
        prev_log_index: LogIndex(prev_log_index),
        prev_log_term: Term(prev_log_term),
        entries,
        leader_commit: LogIndex(leader_commit),
        read_round: 0,
    })
}

/// A successful answer to an append, verifying the log up to `match_index`.
fn ack(term: u64, match_index: u64) -> Message {
    Message::AppendEntriesResponse(AppendEntriesResponse {
        term: Term(term),
        success: true,
        match_index: LogIndex(match_index),
        conflict_term: Term(0),
        conflict_index: LogIndex(0),
        last_log_index: LogIndex(match_index),
        read_round: 0,
    })
}

fn request_vote(term: u64, candidate: u64, last: Position) -> Message {
    Message::RequestVote(vote_request_of(term, candidate, last))
}

fn vote_request_of(
    term: u64,
    candidate: u64,
    (last_log_index, last_log_term): Position,
) -> RequestVote {
    RequestVote {
        term: Term(term),
        candidate_id: ServerId(candidate),
        last_log_index: LogIndex(last_log_index),
        last_log_term: Term(last_log_term),
        pre_vote: false,
        leadership_transfer: false,
    }
}

fn vote(term: u64, vote_granted: bool) -> Message {
    Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(term),
        vote_granted,
        pre_vote: false,
    })
}

// ---- messages out ----

fn sent<T>(actions: &Actions, pick: impl Fn(&Message) -> Option<T>) -> Vec<(u64, T)> {
    actions
        .messages
        .iter()
        .filter_map(|envelope| pick(&envelope.message).map(|picked| (envelope.to.0, picked)))
        .collect()
}

fn appends(actions: &Actions) -> Vec<(u64, AppendEntries)> {
    sent(actions, |message| match message {
        Message::AppendEntries(request) => Some(request.clone()),
        _ => None,
    })
}

fn append_responses(actions: &Actions) -> Vec<(u64, AppendEntriesResponse)> {
    sent(actions, |message| match message {
        Message::AppendEntriesResponse(response) => Some(response.clone()),
        _ => None,
    })
}

fn vote_requests(actions: &Actions) -> Vec<(u64, RequestVote)> {
    sent(actions, |message| match message {
        Message::RequestVote(request) => Some(request.clone()),
        _ => None,
    })
}

fn vote_responses(actions: &Actions) -> Vec<(u64, RequestVoteResponse)> {
    sent(actions, |message| match message {
        Message::RequestVoteResponse(response) => Some(response.clone()),
        _ => None,
    })
}

/// The only append response in `actions`, as (to, success, conflict_term, conflict_index).
fn only_append_response(actions: &Actions) -> (u64, bool, u64, u64) {
    let responses = append_responses(actions);
    let [(to, response)] = responses.as_slice() else {
        panic!("expected one append response, got {responses:?}");
    };
    (
        *to,
        response.success,
        response.conflict_term.0,
        response.conflict_index.0,
    )
}

/// The only vote response in `actions`, as (to, term, granted).
fn only_vote_response(actions: &Actions) -> (u64, u64, bool) {
    let responses = vote_responses(actions);
    let [(to, response)] = responses.as_slice() else {
        panic!("expected one vote response, got {responses:?}");
    };
    (*to, response.term.0, response.vote_granted)
}

fn election_timeouts(actions: &Actions) -> Vec<Duration> {
    actions
        .timers
        .iter()
        .filter_map(|timer| match timer {
            TimerAction::Set {
                timer: Timer::Election,
                after,
            } => Some(*after),
            _ => None,
        })
        .collect()
}

fn applied(index: u64, result: &str) -> ProposalOutcome {
    ProposalOutcome::Applied {
        index: LogIndex(index),
        result: result.as_bytes().to_vec(),
    }
}

// ---- an in-memory cluster ----

/// Most messages one `deliver_until_quiet` may deliver before the test calls it a livelock.
const DELIVERIES_MAX: usize = 100_000;

/// Servers `1..=n` on a network that delivers in order, loses what crosses a cut link, and syncs
/// each server as soon as it asks, so withheld messages flow at once.
struct Cluster {
    nodes: BTreeMap<ServerId, Node>,
    /// (sender, envelope), oldest first.
    in_flight: VecDeque<(ServerId, Envelope)>,
    /// Directed links that lose everything: (from, to).
    cut: BTreeSet<(ServerId, ServerId)>,
    /// Every message delivered, in order: the trace.
    delivered: Vec<(ServerId, Envelope)>,
    /// Every proposal answer, with the server that gave it.
    replies: Vec<(ServerId, ClientReply)>,
    next_proposal: u64,
}

fn cluster(size: u64) -> Cluster {
    let empty: Vec<(u64, &[u64])> = (0..size).map(|_| (0, &[][..])).collect();
    Cluster::with_logs(&empty)
}

impl Cluster {
    /// Server `i + 1` recovers from `logs[i]`: (current term, entry terms from index 1).
    fn with_logs(logs: &[(u64, &[u64])]) -> Self {
        let size = logs.len() as u64;
        let nodes = logs
            .iter()
            .zip(1..)
            .map(|(&(term, terms), id)| {
                let node = build(id, size, filled_log(term, terms), paper_config());
                (ServerId(id), node)
            })
            .collect();
        Cluster {
            nodes,
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
            replies: Vec::new(),
            next_proposal: 1,
        }
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[&ServerId(id)]
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().map(|id| id.0).collect()
    }

    /// `id`'s election timer fires; its vote requests wait in the network.
    fn time_out(&mut self, id: u64) {
        self.step(id, Event::Timeout(Timer::Election));
    }

    /// `id`'s election timer fires and the network runs until quiet.
    fn elect(&mut self, id: u64) {
        self.time_out(id);
        self.deliver_until_quiet();
    }

    /// `id`'s heartbeat timer fires and the network runs until quiet.
    fn heartbeat(&mut self, id: u64) {
        self.step(id, Event::Timeout(Timer::Heartbeat));
        self.deliver_until_quiet();
    }

    /// A client hands `command` to `id`; the network runs until quiet.
    fn propose(&mut self, id: u64, command: &str) -> ProposalId {
        let proposal = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.step(
            id,
            Event::ClientProposal {
                id: proposal,
                command: command.as_bytes().to_vec(),
            },
        );
        self.deliver_until_quiet();
        proposal
    }

    /// Every answer given for `proposal`, by any server.
    fn outcomes(&self, proposal: ProposalId) -> Vec<ProposalOutcome> {
        self.replies
            .iter()
            .filter(|(_, reply)| reply.id == proposal)
            .map(|(_, reply)| reply.outcome.clone())
            .collect()
    }

    /// Puts a message on the wire as if `from` had sent it.
    fn inject(&mut self, from: u64, to: u64, message: Message) {
        let envelope = Envelope {
            to: ServerId(to),
            message,
        };
        self.in_flight.push_back((ServerId(from), envelope));
    }

    /// Cuts every link between a server of `one` and a server of `other`, both ways.
    fn partition(&mut self, one: &[u64], other: &[u64]) {
        for &a in one {
            for &b in other {
                self.cut.insert((ServerId(a), ServerId(b)));
                self.cut.insert((ServerId(b), ServerId(a)));
            }
        }
    }

    /// Makes `id` unreachable: every link to and from it is cut.
    fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.ids().into_iter().filter(|&o| o != id).collect();
        self.partition(&[id], &others);
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Delivers messages, oldest first, until none are left; those crossing a cut are lost.
    fn deliver_until_quiet(&mut self) {
        let mut deliveries = 0;
        while let Some((from, envelope)) = self.in_flight.pop_front() {
            deliveries += 1;
            assert!(
                deliveries <= DELIVERIES_MAX,
                "no quiet after {DELIVERIES_MAX} deliveries"
            );
            if self.cut.contains(&(from, envelope.to)) {
                continue;
            }
            self.delivered.push((from, envelope.clone()));
            let event = Event::Message {
                from,
                message: envelope.message,
            };
            self.step(envelope.to.0, event);
        }
    }

    fn step(&mut self, id: u64, event: Event) {
        let actions = self.server(id).step(event).expect("step");
        self.absorb(ServerId(id), actions);
    }

    /// Puts `actions`' messages on the wire and keeps its replies; syncs when asked to.
    fn absorb(&mut self, id: ServerId, actions: Actions) {
        let sync_required = actions.sync_required;
        let messages = actions.messages.into_iter().map(|envelope| (id, envelope));
        self.in_flight.extend(messages);
        let replies = actions.replies.into_iter().map(|reply| (id, reply));
        self.replies.extend(replies);
        if sync_required {
            let synced = self.server(id.0).sync().expect("sync");
            self.absorb(id, synced);
        }
    }

    fn server(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&ServerId(id)).expect("a member")
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.role() == Role::Leader)
            .map(|node| node.id().0)
            .collect()
    }

    fn log_terms(&self, id: u64) -> Vec<u64> {
        log_terms(self.node(id))
    }

    /// The `prev_log_index` of every append delivered from `from` to `to`, in order.
    fn append_prev_indexes(&self, from: u64, to: u64) -> Vec<u64> {
        self.delivered
            .iter()
            .filter(|(sender, envelope)| sender.0 == from && envelope.to.0 == to)
            .filter_map(|(_, envelope)| match &envelope.message {
                Message::AppendEntries(request) => Some(request.prev_log_index.0),
                _ => None,
            })
            .collect()
    }

    /// Asserts that every server holds exactly the log of `id`, entry for entry.
    fn assert_logs_match(&self, id: u64) {
        let expected = log_entries(self.node(id));
        for other in self.ids() {
            assert_eq!(
                log_entries(self.node(other)),
                expected,
                "log of {other} differs from log of {id}"
            );
        }
    }
}

// ---- Terms (§5.1) ----

/// §5.1, CONFORMANCE 1: any message of a higher term makes a follower, candidate or leader adopt
/// that term as a follower.
#[test]
fn higher_term_makes_any_role_a_follower_of_that_term() {
    let messages = [
        request_vote(5, 2, (0, 0)),
        vote(5, false),
        append(5, 2, (0, 0), vec![], 0),
        ack(5, 0),
    ];
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        for message in &messages {
            let mut node = node_in_role(role);
            assert_eq!((node.role(), node.current_term()), (role, Term(1)));
            let _ = receive_and_sync(&mut node, 2, message.clone());
            assert_eq!(
                (node.role(), node.current_term()),
                (Role::Follower, Term(5)),
                "a {role:?} receiving {}",
                message.name()
            );
        }
    }
}

/// §5.1, CONFORMANCE 2: a message of a lower term changes nothing; requests are answered with the
/// current term so that their stale sender steps down.
#[test]
fn lower_term_message_is_never_acted_on() {
    // A follower at term 3 holding t1@1.
    let mut follower = node_with_log(1, 3, 3, &[1]);
    let actions = receive(
        &mut follower,
        2,
        append(2, 2, (1, 1), entries_from(2, &[2]), 2),
    );
    let responses = append_responses(&actions);
    assert_eq!(responses.len(), 1);
    assert_eq!(
        (responses[0].0, responses[0].1.term, responses[0].1.success),
        (2, Term(3), false)
    );
    let actions = receive(&mut follower, 2, request_vote(2, 2, (9, 2)));
    assert_eq!(only_vote_response(&actions), (2, 3, false));
    assert_eq!(log_terms(&follower), [1]);
    assert_eq!(follower.current_term(), Term(3));
    assert_eq!(follower.log().voted_for(), None);
    assert_eq!(follower.leader_id(), None);
    assert_eq!(follower.commit_index(), LogIndex(0));
    assert_eq!(follower.role(), Role::Follower);

    // A candidate of term 4 counts no stale grants: two of them would have made it leader.
    let mut candidate = node_with_log(1, 3, 3, &[1]);
    let _ = fire(&mut candidate, Timer::Election);
    let _ = sync(&mut candidate);
    assert_eq!(candidate.current_term(), Term(4));
    let _ = receive_and_sync(&mut candidate, 2, vote(3, true));
    let _ = receive_and_sync(&mut candidate, 3, vote(3, true));
    assert_eq!(candidate.role(), Role::Candidate);
    assert_eq!(candidate.current_term(), Term(4));

    // A leader of term 4 takes neither a stale acknowledgement nor a stale append.
    let mut leader = node_with_log(1, 3, 3, &[1]);
    win_election(&mut leader);
    assert_eq!(log_terms(&leader), [1, 4]);
    let _ = receive_and_sync(&mut leader, 3, ack(3, 2));
    assert_eq!(leader.match_index(ServerId(3)), Some(LogIndex(0)));
    assert_eq!(leader.commit_index(), LogIndex(0));
    let _ = receive_and_sync(&mut leader, 2, append(3, 2, (0, 0), vec![], 0));
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(leader.current_term(), Term(4));
    assert_eq!(log_terms(&leader), [1, 4]);
}

/// §5.1, CONFORMANCE 3: a fresh server is a follower of term 0 with an empty log, no vote, no
/// leader, and its election timer armed.
#[test]
fn fresh_node_is_follower_at_term_zero_with_empty_log() {
    let mut node = Consensus::new(
        ServerId(1),
        voters(3),
        MemLog::new(),
        KvStateMachine::new(),
        Config::default(),
        1,
    )
    .expect("a valid server");
    assert_eq!(node.role(), Role::Follower);
    assert_eq!(node.current_term(), Term(0));
    assert_eq!(node.log().latest_log_index(), LogIndex(0));
    assert_eq!(node.log().latest_log_term(), Term(0));
    assert_eq!(node.log().voted_for(), None);
    assert_eq!(node.leader_id(), None);
    assert_eq!(node.commit_index(), LogIndex(0));
    assert_eq!(node.last_applied(), LogIndex(0));
    let started = node.start();
    let timeouts = election_timeouts(&started);
    assert_eq!(timeouts.len(), 1, "start arms the election timer");
    let range = Config::default().election_timeout_min..=Config::default().election_timeout_max;
    assert!(
        range.contains(&timeouts[0]),
        "{:?} in {range:?}",
        timeouts[0]
    );
    assert!(started.messages.is_empty());
}

// ---- Elections (§5.2) ----

/// §5.2, CONFORMANCE 4: on timeout a follower becomes candidate of the next term, votes for
/// itself durably, then asks every peer once, carrying its last log index and term.
#[test]
fn election_timeout_starts_candidacy_with_durable_self_vote() {
    let mut follower = node_with_log(1, 5, 2, &[1, 2]);
    let actions = fire(&mut follower, Timer::Election);
    assert_eq!(follower.role(), Role::Candidate);
    assert_eq!(follower.current_term(), Term(3));
    assert_eq!(follower.log().voted_for(), Some(ServerId(1)));
    assert_eq!(election_timeouts(&actions).len(), 1, "timer re-armed");
    assert!(
        actions.sync_required,
        "the term and self-vote must be synced"
    );
    assert!(
        vote_requests(&actions).is_empty(),
        "no request before the self-vote is durable"
    );

    let actions = sync(&mut follower);
    let expected: Vec<(u64, RequestVote)> = (2..=5)
        .map(|peer| (peer, vote_request_of(3, 1, (2, 2))))
        .collect();
    assert_eq!(vote_requests(&actions), expected);
}

/// §5.2, CONFORMANCE 5: a candidate whose timer fires again campaigns anew at the next term.
#[test]
fn candidate_timeout_starts_election_at_next_term() {
    let mut candidate = node_in_role(Role::Candidate);
    assert_eq!(candidate.current_term(), Term(1));
    let mut actions = fire(&mut candidate, Timer::Election);
    actions.merge(sync(&mut candidate));
    assert_eq!(candidate.role(), Role::Candidate);
    assert_eq!(candidate.current_term(), Term(2));
    assert_eq!(candidate.log().voted_for(), Some(ServerId(1)));
    let expected: Vec<(u64, RequestVote)> = (2..=3)
        .map(|peer| (peer, vote_request_of(2, 1, (0, 0))))
        .collect();
    assert_eq!(vote_requests(&actions), expected);
}

/// §5.2, CONFORMANCE 6: in one round the candidate leads exactly when its grants and its own vote
/// form a majority, follows when a majority refused, and otherwise keeps campaigning.
#[test]
fn candidate_wins_exactly_with_majority_in_one_round() {
    // (voters, answers in arrival order) → role after the round.
    #[rustfmt::skip]
    let table: &[(u64, Answers, Role)] = &[
        (1, &[], Role::Leader),
        (3, &[(2, true), (3, true)], Role::Leader),
        (3, &[(2, true)], Role::Leader),
        (5, &[(2, true), (3, true), (4, true), (5, true)], Role::Leader),
        (5, &[(2, true), (3, true), (4, true)], Role::Leader),
        (5, &[(2, true), (3, true)], Role::Leader),
        (3, &[(2, false), (3, false)], Role::Follower),
        (5, &[(2, false), (3, false), (4, false), (5, false)], Role::Follower),
        (5, &[(2, true), (3, false), (4, false), (5, false)], Role::Follower),
        (3, &[], Role::Candidate),
        (3, &[(2, false)], Role::Candidate),
        (5, &[(2, true)], Role::Candidate),
        (5, &[(2, false), (3, false)], Role::Candidate),
        (5, &[(2, true), (3, false), (4, false)], Role::Candidate),
        (5, &[], Role::Candidate),
    ];
    for &(voter_count, answers, expected) in table {
        let mut candidate = node(1, voter_count);
        let _ = fire(&mut candidate, Timer::Election);
        let _ = sync(&mut candidate);
        for &(peer, granted) in answers {
            let _ = receive_and_sync(&mut candidate, peer, vote(1, granted));
        }
        assert_eq!(
            candidate.role(),
            expected,
            "{voter_count} voters answering {answers:?}"
        );
        assert_eq!(candidate.current_term(), Term(1));
    }
}

/// §5.2, CONFORMANCE 7: one vote per term, first come first served; the same candidate asking
/// again is granted again; the vote is durable before the grant goes out.
#[test]
fn vote_is_first_come_first_served_and_durable_before_reply() {
    let mut voter = node(1, 3);
    let actions = receive(&mut voter, 2, request_vote(1, 2, (0, 0)));
    assert_eq!(voter.log().voted_for(), Some(ServerId(2)), "vote recorded");
    assert!(actions.sync_required, "the vote must be synced");
    assert!(
        vote_responses(&actions).is_empty(),
        "no grant before the sync"
    );
    let actions = sync(&mut voter);
    assert_eq!(only_vote_response(&actions), (2, 1, true));

    let actions = receive_and_sync(&mut voter, 3, request_vote(1, 3, (0, 0)));
    assert_eq!(only_vote_response(&actions), (3, 1, false), "already voted");
    assert_eq!(voter.log().voted_for(), Some(ServerId(2)));

    let actions = receive_and_sync(&mut voter, 2, request_vote(1, 2, (0, 0)));
    assert_eq!(
        only_vote_response(&actions),
        (2, 1, true),
        "a repeat is granted"
    );
    assert_eq!(voter.log().voted_for(), Some(ServerId(2)));
}

/// §5.2, CONFORMANCE 8: a candidate hearing an append from a leader of its own term or a later one
/// becomes that leader's follower.
#[test]
fn candidate_follows_leader_of_same_or_higher_term() {
    for leader_term in [1, 2] {
        let mut candidate = node_in_role(Role::Candidate);
        let actions =
            receive_and_sync(&mut candidate, 2, append(leader_term, 2, (0, 0), vec![], 0));
        assert_eq!(
            candidate.role(),
            Role::Follower,
            "leader of term {leader_term}"
        );
        assert_eq!(candidate.current_term(), Term(leader_term));
        assert_eq!(candidate.leader_id(), Some(ServerId(2)));
        let (to, success, _, _) = only_append_response(&actions);
        assert_eq!((to, success), (2, true));
    }
}

/// §5.2, CONFORMANCE 9: election timeouts take every value of the configured range, and five
/// servers reset together rarely (here in at most 30 % of rounds) fire in the same millisecond.
#[test]
fn election_timeouts_cover_the_range_and_rarely_collide() {
    const ROUNDS: usize = 1000;
    let narrow = Config {
        election_timeout_min: Duration::from_millis(10),
        election_timeout_max: Duration::from_millis(20),
        heartbeat_interval: Duration::from_millis(5),
        ..Config::default()
    };
    let mut candidate = build(1, 3, MemLog::new(), narrow);
    let mut seen = BTreeSet::new();
    for _ in 0..ROUNDS {
        let actions = fire(&mut candidate, Timer::Election);
        let _ = sync(&mut candidate);
        for timeout in election_timeouts(&actions) {
            seen.insert(timeout);
        }
    }
    let every_millisecond: BTreeSet<Duration> = (10..=20).map(Duration::from_millis).collect();
    assert_eq!(seen, every_millisecond);

    let mut nodes: Vec<Node> = (1..=5).map(|id| node(id, 5)).collect();
    let mut rounds_with_collision = 0;
    for _ in 0..ROUNDS {
        let mut drawn = BTreeSet::new();
        for node in &mut nodes {
            let actions = fire(node, Timer::Election);
            let _ = sync(node);
            let timeouts = election_timeouts(&actions);
            assert_eq!(timeouts.len(), 1);
            drawn.insert(timeouts[0]);
        }
        if drawn.len() < nodes.len() {
            rounds_with_collision += 1;
        }
    }
    assert!(
        rounds_with_collision * 100 <= ROUNDS * 30,
        "two of five fired together in {rounds_with_collision} of {ROUNDS} rounds"
    );
}

/// §5.2, CONFORMANCE 10: every heartbeat interval the leader sends each peer an append without
/// entries whose commit index is no larger than what that peer is known to hold.
#[test]
fn heartbeat_carries_no_entries_and_commit_capped_by_match() {
    let mut leader = leader(3);
    let _ = propose(&mut leader, 1, "put a 1");
    let _ = propose(&mut leader, 2, "put b 2");
    let _ = sync(&mut leader);
    let _ = receive_and_sync(&mut leader, 2, ack(1, 3));
    assert_eq!(leader.commit_index(), LogIndex(3));
    assert_eq!(leader.match_index(ServerId(2)), Some(LogIndex(3)));
    assert_eq!(leader.match_index(ServerId(3)), Some(LogIndex(1)));

    let actions = fire(&mut leader, Timer::Heartbeat);
    assert!(actions.timers.contains(&TimerAction::Set {
        timer: Timer::Heartbeat,
        after: leader.config().heartbeat_interval,
    }));
    let heartbeats = appends(&actions);
    let summary: Vec<(u64, u64, usize, u64)> = heartbeats
        .iter()
        .map(|(to, heartbeat)| {
            (
                *to,
                heartbeat.prev_log_index.0,
                heartbeat.entries.len(),
                heartbeat.leader_commit.0,
            )
        })
        .collect();
    // (to, prev_log_index, entries, leader_commit): server 3 holds only index 1.
    assert_eq!(summary, [(2, 3, 0, 3), (3, 1, 0, 1)]);
    assert!(heartbeats
        .iter()
        .all(|(_, heartbeat)| heartbeat.term == Term(1)));
}

// ---- Replication (§5.3) ----

/// §5.3, CONFORMANCE 11: a proposal appends one entry of the current term, leaves the commit index
/// alone, and goes to every caught-up peer right after the entry it follows.
#[test]
fn proposal_appends_current_term_entry_and_replicates_it() {
    let mut leader = leader(3);
    let actions = propose(&mut leader, 1, "put x 1");
    let entry = Entry::command(Term(1), "put x 1");
    // The first leader's term-start entry is the initial configuration (thesis §4.1), which
    // serves as its no-op (§8).
    let membership = mioraft::Membership::from_voters((1..=3).map(ServerId));
    let first = Entry::configuration(Term(1), &membership);
    assert_eq!(log_entries(&leader), [first, entry.clone()]);
    assert_eq!(leader.commit_index(), LogIndex(1));
    assert!(actions.replies.is_empty());
    assert!(actions.sync_required);
    let expected = AppendEntries {
        term: Term(1),
        leader_id: ServerId(1),
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: vec![entry],
        leader_commit: LogIndex(1),
        read_round: 0,
    };
    assert_eq!(appends(&actions), [(2, expected.clone()), (3, expected)]);
}

/// §5.3, CONFORMANCE 12: once a majority (the leader included) holds an entry of the current term,
/// the leader commits it and every entry before it, applies them in order, and passes the new
/// commit index on.
#[test]
fn majority_commits_current_term_entry_and_everything_before() {
    let mut leader = leader(3);
    let _ = propose(&mut leader, 1, "put k 1");
    let _ = propose(&mut leader, 2, "put k 2");
    let _ = receive(&mut leader, 2, ack(1, 3));
    assert_eq!(
        leader.commit_index(),
        LogIndex(1),
        "the leader's own copy is not durable yet"
    );

    let actions = sync(&mut leader);
    assert_eq!(leader.commit_index(), LogIndex(3));
    assert_eq!(leader.last_applied(), LogIndex(3));
    assert_eq!(leader.state_machine().get("k"), Some("2"));
    assert_eq!(leader.state_machine().applied_count(), 2);
    let expected = [
        ClientReply {
            id: ProposalId(1),
            outcome: applied(2, ""),
        },
        ClientReply {
            id: ProposalId(2),
            outcome: applied(3, "1"),
        },
    ];
    assert_eq!(actions.replies, expected, "applied in log order");

    let _ = receive_and_sync(&mut leader, 3, ack(1, 3));
    let actions = fire(&mut leader, Timer::Heartbeat);
    let commits: Vec<(u64, u64)> = appends(&actions)
        .iter()
        .map(|(to, request)| (*to, request.leader_commit.0))
        .collect();
    assert_eq!(commits, [(2, 3), (3, 3)]);
}

/// §5.3, CONFORMANCE 13: whether an entry commits depends on cluster size and acknowledgements:
/// a majority including the leader is needed.
#[test]
fn commit_needs_a_majority_for_each_cluster_size() {
    let table: &[(u64, u64, bool)] = &[
        (1, 0, true),
        (3, 0, false),
        (3, 1, true),
        (5, 1, false),
        (5, 2, true),
    ];
    for &(voter_count, acks, committed) in table {
        let mut leader = leader(voter_count);
        let _ = propose(&mut leader, 1, "put x 1");
        let _ = sync(&mut leader);
        for peer in (2..).take(acks as usize) {
            let _ = receive_and_sync(&mut leader, peer, ack(1, 2));
        }
        assert_eq!(
            leader.commit_index() == LogIndex(2),
            committed,
            "{voter_count} voters, {acks} acknowledgements"
        );
    }
}

/// §5.4.2, CONFORMANCE 14: entries left by earlier leaders commit, in order and before the new
/// term's, as soon as an entry of the current term commits.
#[test]
fn earlier_term_entries_commit_under_current_term_entry() {
    let mut leader = node_with_log(1, 3, 1, &[1, 1]);
    win_election(&mut leader);
    assert_eq!(log_terms(&leader), [1, 1, 2]);
    assert_eq!(leader.commit_index(), LogIndex(0));

    let _ = receive_and_sync(&mut leader, 2, ack(2, 3));
    assert_eq!(leader.commit_index(), LogIndex(3));
    assert_eq!(leader.last_applied(), LogIndex(3));
    let mut expected = KvStateMachine::new();
    for entry in entries_from(1, &[1, 1]) {
        expected.apply(&entry.data);
    }
    assert_eq!(leader.state_machine(), &expected, "1 then 2 applied");

    let _ = propose(&mut leader, 1, "put new 3");
    let _ = sync(&mut leader);
    let _ = receive_and_sync(&mut leader, 2, ack(2, 4));
    assert_eq!(leader.commit_index(), LogIndex(4));
    expected.apply(b"put new 3");
    assert_eq!(leader.state_machine(), &expected, "then the new command");
}

/// §5.3, CONFORMANCE 15: a follower's commit index becomes min(leader commit, index of the last
/// new entry), never decreases, and each step applies exactly the newly committed entries.
#[test]
fn follower_commit_follows_leader_within_verified_log() {
    let mut follower = node(2, 3);
    let mut entries = vec![Entry::noop(Term(1))];
    entries
        .extend(["put a 1", "put b 2", "put c 3"].map(|command| Entry::command(Term(1), command)));
    // (append from leader 1 of term 1) → (commit index, commands applied)
    #[rustfmt::skip]
    let steps: [(Message, u64, u64); 5] = [
        (append(1, 1, (0, 0), entries, 2), 2, 1),
        (append(1, 1, (2, 1), vec![], 4), 2, 1),
        (append(1, 1, (2, 1), vec![Entry::command(Term(1), "put b 2")], 4), 3, 2),
        (append(1, 1, (0, 0), vec![], 1), 3, 2),
        (append(1, 1, (4, 1), vec![], 4), 4, 3),
    ];
    for (number, (message, commit_index, applied_count)) in steps.into_iter().enumerate() {
        let actions = receive_and_sync(&mut follower, 1, message);
        assert!(only_append_response(&actions).1, "step {number} accepted");
        assert_eq!(
            follower.commit_index(),
            LogIndex(commit_index),
            "step {number}"
        );
        assert_eq!(
            follower.last_applied(),
            LogIndex(commit_index),
            "step {number}"
        );
        assert_eq!(
            follower.state_machine().applied_count(),
            applied_count,
            "step {number}"
        );
    }
    assert_eq!(follower.state_machine().get("c"), Some("3"));
}

/// §5.3, CONFORMANCE 16: the consistency check accepts an append whose previous entry matches and
/// rejects one that does not, hinting the conflicting term and its first index so the leader can
/// skip a whole term per round trip.
#[test]
fn consistency_check_accepts_matches_and_hints_conflicts_by_term() {
    // (prev_log_index, prev_log_term) → (success, conflict_term, conflict_index), on [t1@1, t2@2].
    let table: &[(Position, Verdict)] = &[
        ((0, 0), (true, 0, 0)),
        ((1, 1), (true, 0, 0)),
        ((2, 2), (true, 0, 0)),
        ((2, 1), (false, 2, 2)),
        ((3, 3), (false, 0, 3)),
    ];
    for &(prev, expected) in table {
        let mut follower = node_with_log(2, 3, 2, &[1, 2]);
        let actions = receive_and_sync(&mut follower, 1, append(2, 1, prev, vec![], 0));
        let (to, success, conflict_term, conflict_index) = only_append_response(&actions);
        assert_eq!(to, 1);
        assert_eq!(
            (success, conflict_term, conflict_index),
            expected,
            "prev {prev:?}"
        );
        assert_eq!(log_terms(&follower), [1, 2], "the log is unchanged");
    }

    // A run of term 2 at 2..=5 is skipped in one answer: the hint points at its first index.
    let mut follower = node_with_log(2, 3, 2, &[1, 2, 2, 2, 2]);
    let actions = receive_and_sync(&mut follower, 1, append(3, 1, (5, 3), vec![], 0));
    assert_eq!(only_append_response(&actions), (1, false, 2, 2));
}

/// §5.3, CONFORMANCE 17: a conflicting entry truncates the log from the conflict on, while entries
/// already present never truncate: a delayed, shorter append cannot delete what a longer one
/// added.
#[test]
fn conflicting_entries_truncate_but_stale_appends_never_do() {
    // Conflict at 2: t1@2 and t1@3 go, t2@2 comes.
    let mut follower = node_with_log(2, 3, 1, &[1, 1, 1]);
    let _ = receive_and_sync(
        &mut follower,
        1,
        append(2, 1, (1, 1), entries_from(2, &[2]), 0),
    );
    assert_eq!(log_terms(&follower), [1, 2]);

    // Matching entries first, then a conflict at 3.
    let mut follower = node_with_log(2, 3, 1, &[1, 1, 1, 1]);
    let entries = entries_from(1, &[1, 1, 2]);
    let _ = receive_and_sync(&mut follower, 1, append(2, 1, (0, 0), entries.clone(), 0));
    assert_eq!(log_entries(&follower), entries);

    // A longer append, then a delayed shorter one of the same leader.
    let mut follower = node(2, 3);
    let entries = entries_from(1, &[1, 1, 1]);
    let _ = receive_and_sync(&mut follower, 1, append(1, 1, (0, 0), entries.clone(), 0));
    let delayed = append(1, 1, (0, 0), entries[..1].to_vec(), 0);
    let actions = receive_and_sync(&mut follower, 1, delayed);
    let responses = append_responses(&actions);
    assert_eq!(responses.len(), 1);
    assert!(responses[0].1.success);
    assert_eq!(responses[0].1.match_index, LogIndex(1), "verified up to 1");
    let delayed_middle = append(1, 1, (1, 1), entries[1..2].to_vec(), 0);
    let _ = receive_and_sync(&mut follower, 1, delayed_middle);
    assert_eq!(log_entries(&follower), entries, "nothing deleted");
}

/// §5.3, Figure 7, CONFORMANCE 18: the leader of term 8 brings each follower (a)–(f) to exactly its
/// own log, filling what is missing and removing what is extra or conflicting, probing back one
/// term per round trip.
#[test]
fn leader_repairs_every_follower_of_figure_7() {
    let leader_log: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let mut cluster = Cluster::with_logs(&[
        (7, leader_log),
        (6, &[1, 1, 1, 4, 4, 5, 5, 6, 6]),          // (a)
        (4, &[1, 1, 1, 4]),                         // (b)
        (6, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),    // (c)
        (7, &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]), // (d)
        (4, &[1, 1, 1, 4, 4, 4, 4]),                // (e)
        (3, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),    // (f)
    ]);
    cluster.elect(1);
    assert_eq!(cluster.leaders(), [1]);
    assert_eq!(cluster.node(1).current_term(), Term(8));
    assert_eq!(cluster.log_terms(1), [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8]);
    cluster.assert_logs_match(1);

    // The probes' prev_log_index per follower: one step back per conflicting term.
    let expected_probes: [(u64, &[u64]); 6] = [
        (2, &[10, 9]),    // (a) too short: resume after its end
        (3, &[10, 4]),    // (b) too short
        (4, &[10]),       // (c) extra t6@11 replaced
        (5, &[10]),       // (d) extra t7@11, t7@12 replaced
        (6, &[10, 7, 5]), // (e) too short, then the t4 run
        (7, &[10, 6, 3]), // (f) the t3 run, then the t2 run
    ];
    for (follower, probes) in expected_probes {
        assert_eq!(
            cluster.append_prev_indexes(1, follower),
            probes,
            "follower {follower}"
        );
    }
}

// ---- Safety (§5.4) ----

/// §5.4.1, CONFORMANCE 19: a vote request carries the candidate's last log index and term.
#[test]
fn vote_request_carries_last_log_index_and_term() {
    let table: &[(&[u64], Position)] = &[
        (&[], (0, 0)),
        (&[1], (1, 1)),
        (&[1, 2, 2], (3, 2)),
        (&[1, 1, 3], (3, 3)),
    ];
    for &(terms, last) in table {
        let mut candidate = node_with_log(1, 3, 3, terms);
        let mut actions = fire(&mut candidate, Timer::Election);
        actions.merge(sync(&mut candidate));
        let requests = vote_requests(&actions);
        assert_eq!(requests.len(), 2);
        for (_, request) in requests {
            assert_eq!(request, vote_request_of(4, 1, last), "log {terms:?}");
        }
    }
}

/// §5.4.1, CONFORMANCE 20: a voter refuses a candidate whose last log term is lower, or equal with
/// a shorter log, and grants one whose last term is higher even with a shorter log.
#[test]
fn voter_grants_only_up_to_date_candidates() {
    // Candidate's (last_log_index, last_log_term) → granted, against a voter holding [t1@1, t2@2].
    let table: &[(Position, bool)] = &[
        ((5, 1), false),
        ((1, 2), false),
        ((2, 2), true),
        ((3, 2), true),
        ((1, 3), true),
    ];
    for &(last, granted) in table {
        let mut voter = node_with_log(1, 3, 2, &[1, 2]);
        let actions = receive_and_sync(&mut voter, 2, request_vote(3, 2, last));
        assert_eq!(
            only_vote_response(&actions),
            (2, 3, granted),
            "candidate {last:?}"
        );
        let voted_for = granted.then_some(ServerId(2));
        assert_eq!(voter.log().voted_for(), voted_for);
    }
}

/// The commit index after peer 2 acknowledges index 1, then 2, then 3, to a leader of term 3 that
/// inherited [t1@1, t2@2] and appended its no-op t3@3 (Figure 8).
fn figure_8_commit_indexes(broken_rule: Option<BrokenRule>) -> Vec<u64> {
    let config = Config {
        testing_broken_rule: broken_rule,
        ..paper_config()
    };
    let mut leader = build(1, 3, filled_log(2, &[1, 2]), config);
    win_election(&mut leader);
    assert_eq!(log_terms(&leader), [1, 2, 3]);
    (1..=3)
        .map(|index| {
            let _ = receive_and_sync(&mut leader, 2, ack(3, index));
            leader.commit_index().0
        })
        .collect()
}

/// §5.4.2, Figure 8, CONFORMANCE 21: a new leader never commits an earlier term's entry by
/// counting replicas; its no-op committing commits them all. With the rule switched off the same
/// acknowledgements do commit, so this test can catch the mistake.
#[test]
fn new_leader_never_commits_earlier_term_by_counting() {
    assert_eq!(figure_8_commit_indexes(None), [0, 0, 3]);
    assert_eq!(
        figure_8_commit_indexes(Some(BrokenRule::CommitPreviousTermByCount)),
        [1, 2, 3],
        "the broken rule commits by count"
    );
}

// ---- Cluster stories ----

/// §5.2, CONFORMANCE 22: a leader is elected exactly when a majority can be reached: 3 servers
/// with none or one unreachable, 5 with two, but not 3 with two.
#[test]
fn cluster_elects_a_leader_exactly_when_majority_reachable() {
    let table: &[(u64, &[u64], bool)] = &[
        (3, &[], true),
        (3, &[3], true),
        (3, &[2, 3], false),
        (5, &[4, 5], true),
    ];
    for &(size, unreachable, elected) in table {
        let mut cluster = cluster(size);
        for &id in unreachable {
            cluster.isolate(id);
        }
        cluster.elect(1);
        let expected: &[u64] = if elected { &[1] } else { &[] };
        assert_eq!(
            cluster.leaders(),
            expected,
            "{size} servers, {unreachable:?} unreachable"
        );
    }
}

/// §5.4.1, CONFORMANCE 23: a server whose log is shorter, with the same last term, loses against a
/// majority holding more.
#[test]
fn stale_log_cannot_win_election() {
    let mut cluster = cluster(3);
    cluster.elect(1);
    cluster.propose(1, "put a 1");
    cluster.isolate(3);
    let missed = cluster.propose(1, "put b 2");
    assert_eq!(cluster.outcomes(missed), [applied(3, "")]);
    cluster.heal();
    assert_eq!(cluster.log_terms(3), [1, 1]);

    cluster.elect(3);
    assert_eq!(cluster.node(3).role(), Role::Follower, "refused by both");
    assert_eq!(cluster.leaders(), Vec::<u64>::new());
    assert_eq!(cluster.log_terms(1), [1, 1, 1]);
    assert_eq!(cluster.log_terms(2), [1, 1, 1]);

    cluster.elect(1);
    assert_eq!(cluster.leaders(), [1]);
    cluster.assert_logs_match(1);
}

/// §5.2, CONFORMANCE 24: each server campaigns in turn and wins; the others follow it.
#[test]
fn leadership_cycles_through_every_node() {
    let mut cluster = cluster(3);
    for (term, candidate) in (1..).zip([1, 2, 3, 1, 2, 3]) {
        cluster.elect(candidate);
        assert_eq!(cluster.leaders(), [candidate]);
        for id in cluster.ids() {
            let node = cluster.node(id);
            assert_eq!(node.current_term(), Term(term), "server {id}");
            assert_eq!(node.leader_id(), Some(ServerId(candidate)), "server {id}");
        }
        cluster.assert_logs_match(candidate);
    }
}

/// §5.2, CONFORMANCE 25: two candidates campaigning at once across a partition, then again after
/// it heals, end with one leader and one log.
#[test]
fn dueling_candidates_settle_on_one_leader_and_one_log() {
    let mut cluster = cluster(3);
    cluster.partition(&[1], &[3]);
    cluster.time_out(1);
    cluster.time_out(3);
    cluster.deliver_until_quiet();
    assert_eq!(cluster.leaders(), [1], "server 2 voted for 1 first");
    assert_eq!(cluster.node(3).role(), Role::Candidate);
    assert_eq!(cluster.node(3).current_term(), Term(1));

    cluster.heal();
    cluster.elect(3);
    assert_eq!(cluster.leaders(), Vec::<u64>::new(), "3's log is behind");
    assert!(cluster
        .ids()
        .iter()
        .all(|&id| cluster.node(id).current_term() == Term(2)));

    cluster.elect(1);
    cluster.heartbeat(1);
    assert_eq!(cluster.leaders(), [1]);
    cluster.assert_logs_match(1);
    assert_eq!(cluster.log_terms(1), [1, 3]);
    for id in cluster.ids() {
        let node = cluster.node(id);
        assert_eq!(node.current_term(), Term(3), "server {id}");
        assert_eq!(node.commit_index(), LogIndex(2), "server {id}");
    }
}

/// §5.3, §5.4, CONFORMANCE 26: a leader cut off from the majority accepts proposals but never
/// commits them; once healed, the new leader's log replaces them and they are reported dropped.
#[test]
fn stale_leader_never_commits_after_partition() {
    let mut cluster = cluster(3);
    cluster.elect(1);
    cluster.propose(1, "put a 1");
    assert_eq!(cluster.node(1).commit_index(), LogIndex(2));

    cluster.partition(&[1], &[2, 3]);
    let lost = [
        cluster.propose(1, "put lost 1"),
        cluster.propose(1, "put lost 2"),
    ];
    assert_eq!(cluster.log_terms(1), [1, 1, 1, 1]);
    assert_eq!(
        cluster.node(1).commit_index(),
        LogIndex(2),
        "never committed"
    );
    assert!(lost
        .iter()
        .all(|&proposal| cluster.outcomes(proposal).is_empty()));

    cluster.elect(2);
    let kept = cluster.propose(2, "put b 2");
    assert_eq!(cluster.outcomes(kept), [applied(4, "")]);

    cluster.heal();
    cluster.heartbeat(2);
    assert_eq!(cluster.leaders(), [2]);
    cluster.assert_logs_match(2);
    assert_eq!(cluster.log_terms(1), [1, 1, 2, 2]);
    assert_eq!(cluster.node(1).commit_index(), LogIndex(4));
    assert_eq!(cluster.node(1).state_machine().get("lost"), None);
    assert_eq!(cluster.node(1).state_machine().get("b"), Some("2"));
    for (proposal, index) in lost.into_iter().zip([3, 4]) {
        let dropped = ProposalOutcome::Dropped {
            index: LogIndex(index),
        };
        assert_eq!(cluster.outcomes(proposal), [dropped]);
    }
}

/// §5.1, CONFORMANCE 27: an append from the leader of an earlier term, arriving late, is ignored by
/// the current leader and its followers.
#[test]
fn stale_messages_from_old_leader_are_ignored() {
    let mut cluster = cluster(3);
    cluster.elect(1);
    cluster.elect(2);
    cluster.elect(1);
    assert_eq!(cluster.log_terms(1), [1, 2, 3]);
    cluster.assert_logs_match(1);

    // Had it been accepted, t2@3 would have replaced the current leader's no-op.
    let stale = append(2, 2, (2, 2), entries_from(3, &[2]), 2);
    cluster.inject(2, 1, stale.clone());
    cluster.inject(2, 3, stale);
    cluster.deliver_until_quiet();
    assert_eq!(cluster.leaders(), [1]);
    assert_eq!(cluster.log_terms(1), [1, 2, 3]);
    assert_eq!(cluster.log_terms(3), [1, 2, 3]);
    assert_eq!(cluster.node(3).leader_id(), Some(ServerId(1)));
    assert_eq!(cluster.node(3).current_term(), Term(3));

    let fresh = cluster.propose(1, "put x 1");
    assert_eq!(cluster.outcomes(fresh), [applied(4, "")]);
    cluster.heartbeat(1);
    for id in cluster.ids() {
        let state_machine = cluster.node(id).state_machine();
        assert_eq!(state_machine.get("k3"), None, "server {id}");
        assert_eq!(state_machine.get("x"), Some("1"), "server {id}");
    }
}

/// §5.3, §8, CONFORMANCE 28: a proposal sent to a follower is redirected to the leader, appends
/// nothing where it landed, and once resent there commits exactly once everywhere.
#[test]
fn proposal_at_follower_is_redirected_and_commits_once() {
    let mut cluster = cluster(3);
    cluster.elect(1);
    let misdirected = cluster.propose(2, "put k v");
    let outcomes = cluster.outcomes(misdirected);
    let [ProposalOutcome::NotLeader {
        leader: Some(leader),
    }] = outcomes[..]
    else {
        panic!("expected a redirect, got {outcomes:?}");
    };
    assert_eq!(leader, ServerId(1));
    assert_eq!(
        cluster.log_terms(2),
        [1],
        "nothing appended at the follower"
    );

    let resent = cluster.propose(leader.0, "put k v");
    assert_eq!(cluster.outcomes(resent), [applied(2, "")]);
    cluster.heartbeat(leader.0);
    for id in cluster.ids() {
        let node = cluster.node(id);
        assert_eq!(node.state_machine().applied_count(), 1, "server {id}");
        assert_eq!(node.state_machine().get("k"), Some("v"), "server {id}");
        let commands: Vec<Entry> = log_entries(node)
            .into_iter()
            .filter(|entry| entry.kind == EntryKind::Command)
            .collect();
        assert_eq!(
            commands,
            [Entry::command(Term(1), "put k v")],
            "server {id}"
        );
    }
}

// ---- Client sessions (thesis §6.3) and reads (thesis §6.4) ----
//
// Beyond CONFORMANCE.md: the rules that make proposals exactly-once and reads linearizable.

/// An acknowledgement of `match_index` that answers read round `round`.
fn ack_round(term: u64, match_index: u64, round: u64) -> Message {
    let Message::AppendEntriesResponse(mut response) = ack(term, match_index) else {
        unreachable!("ack builds a response");
    };
    response.read_round = round;
    Message::AppendEntriesResponse(response)
}

fn step(node: &mut Node, event: Event) -> Actions {
    node.step(event).expect("step")
}

fn session_propose(node: &mut Node, id: u64, request: (u64, u64), command: &str) -> Actions {
    session_propose_when(node, id, request, command, ResponseMode::Applied)
}

fn session_propose_when(
    node: &mut Node,
    id: u64,
    (session, sequence): (u64, u64),
    command: &str,
    respond_when: ResponseMode,
) -> Actions {
    step(
        node,
        Event::Propose {
            id: ProposalId(id),
            command: command.as_bytes().to_vec(),
            session: Some(SessionRequest { session, sequence }),
            respond_when,
        },
    )
}

fn query(node: &mut Node, id: u64, question: &str) -> Actions {
    step(
        node,
        Event::Query {
            id: ProposalId(id),
            query: question.as_bytes().to_vec(),
        },
    )
}

/// The leader's own write is durable and follower 2 acknowledges up to `match_index`: with three
/// servers, that commits it.
fn commit_through(leader: &mut Node, match_index: u64) -> Actions {
    let mut actions = sync(leader);
    actions.merge(receive(leader, 2, ack(1, match_index)));
    actions
}

fn outcomes_of(actions: &Actions) -> Vec<(u64, ProposalOutcome)> {
    actions
        .replies
        .iter()
        .map(|reply| (reply.id.0, reply.outcome.clone()))
        .collect()
}

/// Leader of three with session 2 registered (its entry is t1@2) and committed.
fn leader_with_session() -> Node {
    let mut leader = leader(3);
    let _ = step(&mut leader, Event::RegisterSession { id: ProposalId(1) });
    let actions = commit_through(&mut leader, 2);
    assert_eq!(
        outcomes_of(&actions),
        [(1, ProposalOutcome::SessionRegistered { session: 2 })]
    );
    leader
}

/// §6.3: a retried request that was applied is answered from the session table with the original
/// reply and index, and appends nothing; older requests and unknown sessions are refused.
#[test]
fn session_retry_is_answered_from_the_table_without_appending() {
    let mut leader = leader_with_session();
    let _ = session_propose(&mut leader, 10, (2, 1), "put k a");
    let actions = commit_through(&mut leader, 3);
    assert_eq!(outcomes_of(&actions), [(10, applied(3, ""))]);

    // The reply was lost; the client retries, after "put k b" by someone else changed the value.
    let _ = propose(&mut leader, 11, "put k b");
    let _ = commit_through(&mut leader, 4);
    let actions = session_propose(&mut leader, 12, (2, 1), "put k a");
    assert_eq!(
        outcomes_of(&actions),
        [(12, applied(3, ""))],
        "original reply"
    );
    assert_eq!(leader.last_log_index(), LogIndex(4), "nothing appended");
    assert_eq!(leader.state_machine().get("k"), Some("b"), "not re-applied");

    let _ = session_propose(&mut leader, 13, (2, 2), "put k c");
    let _ = commit_through(&mut leader, 5);
    let actions = session_propose(&mut leader, 14, (2, 1), "put k a");
    assert_eq!(
        outcomes_of(&actions),
        [(
            14,
            ProposalOutcome::Superseded {
                session: 2,
                sequence: 1
            }
        )]
    );
    // An unknown session is not refused from the leader's table (a deposed leader's table may
    // lack newer sessions): the entry is appended, and applying it gives the answer.
    let actions = session_propose(&mut leader, 15, (99, 1), "put k z");
    assert!(actions.replies.is_empty());
    let actions = commit_through(&mut leader, 6);
    assert_eq!(
        outcomes_of(&actions),
        [(15, ProposalOutcome::SessionExpired { session: 99 })]
    );
    assert_eq!(leader.state_machine().get("k"), Some("c"), "not applied");
}

/// §6.3: a retry that arrives while the original is still in flight waits for the same entry.
#[test]
fn retry_of_an_in_flight_request_shares_its_entry() {
    let mut leader = leader_with_session();
    let _ = session_propose(&mut leader, 10, (2, 1), "put k a");
    let _ = session_propose(&mut leader, 11, (2, 1), "put k a");
    assert_eq!(leader.last_log_index(), LogIndex(3), "one entry for both");
    let actions = commit_through(&mut leader, 3);
    assert_eq!(
        outcomes_of(&actions),
        [(10, applied(3, "")), (11, applied(3, ""))]
    );
}

/// §6.3: when a new leader's log holds the same request twice (appended by different leaders),
/// every server applies it once; the session table is rebuilt from the log alone.
#[test]
fn duplicate_session_entries_apply_once_everywhere() {
    let mut follower = node(2, 3);
    let entries = vec![
        Entry::noop(Term(1)),
        Entry::register_session(Term(1)),
        Entry::session_command(Term(1), 2, 1, b"put k a"),
        Entry::session_command(Term(1), 2, 1, b"put k a"),
        Entry::session_command(Term(1), 2, 2, b"cas k a b"),
        Entry::session_command(Term(1), 2, 1, b"put k a"),
    ];
    let _ = receive_and_sync(&mut follower, 1, append(1, 1, (0, 0), entries, 6));
    assert_eq!(follower.last_applied(), LogIndex(6));
    let state_machine = follower.state_machine();
    assert_eq!(state_machine.applied_count(), 2, "each request once");
    assert_eq!(state_machine.get("k"), Some("b"));
}

/// §6.3: the session table keeps `sessions_max` sessions; opening one more expires the least
/// recently used, by log position alone, and its next command is not applied.
#[test]
fn the_least_recently_used_session_expires_through_the_log() {
    let config = Config {
        sessions_max: 2,
        ..Config::default()
    };
    let mut follower = build(2, 3, MemLog::new(), config);
    let entries = vec![
        Entry::register_session(Term(1)),                  // session 1
        Entry::register_session(Term(1)),                  // session 2
        Entry::session_command(Term(1), 1, 1, b"put a 1"), // session 1 used last
        Entry::register_session(Term(1)),                  // session 4: session 2 expires
        Entry::session_command(Term(1), 2, 1, b"put b 1"), // refused: expired
        Entry::session_command(Term(1), 1, 2, b"put a 2"),
    ];
    let _ = receive_and_sync(&mut follower, 1, append(1, 1, (0, 0), entries, 6));
    let sessions = follower.sessions();
    assert!(sessions.contains(1) && sessions.contains(4) && !sessions.contains(2));
    let state_machine = follower.state_machine();
    assert_eq!(state_machine.get("b"), None, "an expired session's command");
    assert_eq!(state_machine.get("a"), Some("2"));
}

/// A command the state machine refuses never enters the log; the client gets its error.
#[test]
fn validation_refuses_a_command_before_the_log() {
    let mut leader = leader_with_session();
    let actions = session_propose(&mut leader, 10, (2, 1), "frobnicate k");
    let outcomes = outcomes_of(&actions);
    let [(10, ProposalOutcome::Refused { error })] = &outcomes[..] else {
        panic!("expected a refusal, got {outcomes:?}");
    };
    assert!(String::from_utf8_lossy(error).contains("unknown command"));
    assert!(appends(&actions).is_empty());
    assert_eq!(leader.last_log_index(), LogIndex(2), "nothing appended");
}

/// A proposal may ask to be answered once committed, with its index.
#[test]
fn committed_mode_answers_with_the_index() {
    let mut leader = leader_with_session();
    let _ = session_propose_when(&mut leader, 10, (2, 1), "put k a", ResponseMode::Committed);
    let actions = commit_through(&mut leader, 3);
    assert_eq!(
        outcomes_of(&actions),
        [(10, ProposalOutcome::Committed { index: LogIndex(3) })]
    );
    // A retry is answered the same way, from the session table.
    let actions = session_propose_when(&mut leader, 11, (2, 1), "put k a", ResponseMode::Committed);
    assert_eq!(
        outcomes_of(&actions),
        [(11, ProposalOutcome::Committed { index: LogIndex(3) })]
    );
}

/// §6.4: a read waits for a heartbeat round a majority answers, then sees every committed write.
#[test]
fn a_read_waits_for_a_majority_to_confirm_leadership() {
    let mut leader = leader(3);
    let _ = propose(&mut leader, 1, "put k v");
    let _ = commit_through(&mut leader, 2);
    let actions = query(&mut leader, 7, "get k");
    assert!(actions.replies.is_empty(), "not before the round");
    let rounds: Vec<(u64, u64)> = appends(&actions)
        .into_iter()
        .map(|(to, request)| (to, request.read_round))
        .collect();
    assert_eq!(rounds, [(2, 1), (3, 1)], "one heartbeat per follower");
    // An answer to an older round confirms nothing.
    let actions = receive(&mut leader, 2, ack_round(1, 2, 0));
    assert!(actions.replies.is_empty());
    let actions = receive(&mut leader, 3, ack_round(1, 1, 1));
    assert_eq!(
        outcomes_of(&actions),
        [(
            7,
            ProposalOutcome::Read {
                result: b"v".to_vec()
            }
        )]
    );
}

/// §6.4: reads that arrive while a round is outstanding share the next one.
#[test]
fn reads_arriving_during_a_round_share_the_next_one() {
    let mut leader = leader(3);
    let _ = query(&mut leader, 1, "get k");
    let mut later = query(&mut leader, 2, "get k");
    later.merge(query(&mut leader, 3, "get k"));
    assert!(appends(&later).is_empty(), "round 1 is still outstanding");
    let actions = receive(&mut leader, 2, ack_round(1, 1, 1));
    assert_eq!(actions.replies.len(), 1, "read 1 answered");
    let rounds: BTreeSet<u64> = appends(&actions)
        .into_iter()
        .map(|(_, request)| request.read_round)
        .collect();
    assert_eq!(
        rounds,
        BTreeSet::from([2]),
        "round 2 started for reads 2 and 3"
    );
    let actions = receive(&mut leader, 3, ack_round(1, 1, 2));
    let answered: Vec<u64> = actions.replies.iter().map(|reply| reply.id.0).collect();
    assert_eq!(answered, [2, 3]);
}

/// §6.4: a leader deposed while a read waits never answers it.
#[test]
fn a_deposed_leader_answers_no_read() {
    let mut leader = leader(3);
    let _ = query(&mut leader, 7, "get k");
    let actions = receive(&mut leader, 2, append(2, 2, (1, 1), Vec::new(), 1));
    assert_eq!(
        outcomes_of(&actions),
        [(
            7,
            ProposalOutcome::NotLeader {
                leader: Some(ServerId(2))
            }
        )]
    );
    // A late answer to the old round changes nothing.
    let actions = receive(&mut leader, 3, ack_round(1, 1, 1));
    assert!(actions.replies.is_empty());
}

/// §6.4, §8: until its no-op is applied a new leader may not know what earlier leaders
/// committed, so reads and session requests wait for it.
#[test]
fn reads_and_session_requests_wait_for_the_term_noop() {
    let mut leader = node(1, 3);
    win_election(&mut leader);
    let mut actions = query(&mut leader, 1, "get k");
    actions.merge(session_propose(&mut leader, 2, (5, 1), "put k v"));
    assert!(actions.replies.is_empty());
    assert_eq!(leader.last_log_index(), LogIndex(1), "only the no-op");
    let actions = receive(&mut leader, 2, ack_round(1, 1, 0));
    // The no-op committed: the session request is now appended (at 2) and the read starts its
    // round.
    assert!(actions.replies.is_empty());
    assert_eq!(leader.last_log_index(), LogIndex(2));
    assert!(appends(&actions).iter().any(|(_, r)| r.read_round == 1));
    let actions = receive(&mut leader, 2, ack_round(1, 1, 1));
    assert_eq!(
        outcomes_of(&actions),
        [(1, ProposalOutcome::Read { result: Vec::new() })]
    );
    let actions = commit_through(&mut leader, 2);
    assert_eq!(
        outcomes_of(&actions),
        [(2, ProposalOutcome::SessionExpired { session: 5 })]
    );
}

// ---- Batches: every client request of one event-loop turn at once (§5.3, thesis §6.4) ----

fn proposals(ids: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    ids.map(|id| Event::ClientProposal {
        id: ProposalId(id),
        command: format!("put k{id} v{id}").into_bytes(),
    })
    .collect()
}

fn step_batch(node: &mut Node, events: Vec<Event>) -> Actions {
    node.step_batch(events).expect("step_batch")
}

/// §5.3: a batch of proposals appends one entry each, in order, and sends each follower one
/// AppendEntries carrying all of them, where stepping them one by one sends one per proposal.
#[test]
fn a_batch_of_proposals_reaches_each_follower_in_one_append() {
    let mut one_by_one = leader(3);
    let mut leader = leader(3);
    let actions = step_batch(&mut leader, proposals(1..=10));
    assert!(actions.replies.is_empty());
    assert!(actions.sync_required);
    let sent = appends(&actions);
    assert_eq!(
        sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        [2, 3],
        "one append per follower"
    );
    let expected: Vec<Entry> = (1..=10)
        .map(|id| Entry::command(Term(1), format!("put k{id} v{id}")))
        .collect();
    for (_, request) in &sent {
        assert_eq!(request.prev_log_index, LogIndex(1));
        assert_eq!(request.entries, expected);
    }
    assert_eq!(log_entries(&leader)[1..], expected[..]);
    // Committed together, answered in order.
    let actions = commit_through(&mut leader, 11);
    let answered: Vec<u64> = actions.replies.iter().map(|reply| reply.id.0).collect();
    assert_eq!(answered, (1..=10).collect::<Vec<_>>());
    // One by one, the same proposals would have gone in one append each.
    let mut actions = Actions::default();
    for event in proposals(1..=10) {
        actions.merge(step(&mut one_by_one, event));
    }
    assert_eq!(
        appends(&actions).len(),
        2 * 8,
        "one per proposal, up to the window of 8"
    );
}

/// §5.3: a batch is cut to the AppendEntries limits and the in-flight window like any backlog.
#[test]
fn a_batch_respects_the_append_limits_and_window() {
    let config = Config {
        append_entries_max: 4,
        in_flight_appends_max: 2,
        ..paper_config()
    };
    let mut leader = build(1, 3, MemLog::new(), config);
    win_election(&mut leader);
    for peer in 2..=3 {
        let _ = receive(&mut leader, peer, ack(1, 1));
    }
    let actions = step_batch(&mut leader, proposals(1..=10));
    let to_two: Vec<(u64, usize)> = appends(&actions)
        .into_iter()
        .filter(|(to, _)| *to == 2)
        .map(|(_, request)| (request.prev_log_index.0, request.entries.len()))
        .collect();
    assert_eq!(
        to_two,
        [(1, 4), (5, 4)],
        "two appends of four, then the window is full"
    );
    // An acknowledgement opens the window for the rest.
    let actions = receive(&mut leader, 2, ack(1, 5));
    let rest: Vec<(u64, usize)> = appends(&actions)
        .into_iter()
        .map(|(_, request)| (request.prev_log_index.0, request.entries.len()))
        .collect();
    assert_eq!(rest, [(9, 2)]);
}

/// Thesis §6.4: reads that arrive in one batch share one round, and so do the proposals'
/// appends: a batch with both sends each follower one message.
#[test]
fn reads_in_a_batch_share_one_round() {
    let mut leader = leader(3);
    let mut events = proposals(1..=2);
    events.extend((3..=5).map(|id| Event::Query {
        id: ProposalId(id),
        query: b"get k1".to_vec(),
    }));
    let actions = step_batch(&mut leader, events);
    let sent: Vec<(u64, u64, usize)> = appends(&actions)
        .into_iter()
        .map(|(to, request)| (to, request.read_round, request.entries.len()))
        .collect();
    assert_eq!(sent, [(2, 1, 2), (3, 1, 2)], "one message per follower");
    // The reads were taken before the proposals committed: their read index is 1, so the
    // round alone answers them, with the state as of then.
    let actions = receive(&mut leader, 2, ack_round(1, 1, 1));
    let reads: Vec<(u64, ProposalOutcome)> = outcomes_of(&actions);
    let expected: Vec<(u64, ProposalOutcome)> = (3..=5)
        .map(|id| (id, ProposalOutcome::Read { result: Vec::new() }))
        .collect();
    assert_eq!(reads, expected);
}

/// A batch at a follower redirects every request to the leader and sends nothing.
#[test]
fn a_batch_at_a_follower_redirects_every_request() {
    let mut follower = node_with_log(2, 3, 1, &[1]);
    let _ = receive(&mut follower, 1, append(1, 1, (1, 1), Vec::new(), 1));
    let actions = step_batch(&mut follower, proposals(1..=3));
    assert!(actions.messages.is_empty());
    let expected: Vec<(u64, ProposalOutcome)> = (1..=3)
        .map(|id| {
            (
                id,
                ProposalOutcome::NotLeader {
                    leader: Some(ServerId(1)),
                },
            )
        })
        .collect();
    assert_eq!(outcomes_of(&actions), expected);
    assert_eq!(follower.log().latest_log_index(), LogIndex(1));
}

// ---- Snapshots and log compaction (§7) ----

/// Snapshots every `every` applied entries, keeping none behind, sent in chunks of `chunk`
/// bytes with at most two unacknowledged.
fn snapshot_config(every: u64, chunk: u64) -> Config {
    Config {
        snapshot_entries: every,
        snapshot_keep_entries: 0,
        snapshot_chunk_bytes: chunk,
        snapshot_chunks_in_flight: 2,
        ..Config::default()
    }
}

impl Cluster {
    /// `size` servers with empty logs and `config`.
    fn with_config(size: u64, config: &Config) -> Self {
        let mut cluster = cluster(size);
        for id in 1..=size {
            let node = build(id, size, MemLog::new(), config.clone());
            cluster.nodes.insert(ServerId(id), node);
        }
        cluster
    }

    /// Heartbeats from `leader` until every follower has heard of everything: a lost append is
    /// noticed after a heartbeat interval without acknowledgement, and the commit index travels
    /// with the next message.
    fn catch_up(&mut self, leader: u64) {
        for _ in 0..3 {
            self.heartbeat(leader);
            self.deliver_until_quiet();
        }
    }

    /// The InstallSnapshot chunks delivered from `from` to `to`, as (offset, length).
    fn chunks_delivered(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        self.delivered
            .iter()
            .filter(|(sender, envelope)| sender.0 == from && envelope.to.0 == to)
            .filter_map(|(_, envelope)| match &envelope.message {
                Message::InstallSnapshot(chunk) => Some((chunk.offset, chunk.data.len() as u64)),
                _ => None,
            })
            .collect()
    }
}

/// The snapshot a one-server cluster takes after applying its no-op and `commands`, with the
/// chunks it would send in `chunk`-byte pieces: (meta, whole bytes).
fn snapshot_of(commands: &[&str]) -> (SnapshotMeta, Vec<u8>) {
    let config = Config {
        snapshot_entries: commands.len() as u64 + 1,
        ..Config::default()
    };
    let mut source = build(1, 1, MemLog::new(), config);
    win_election(&mut source);
    for (id, command) in commands.iter().enumerate() {
        let _ = propose(&mut source, id as u64 + 1, command);
        let _ = sync(&mut source);
    }
    let log = source.log();
    let meta = log.snapshot_meta().cloned().expect("took a snapshot");
    let bytes = log.read_snapshot(0, meta.size).expect("read it");
    (meta, bytes)
}

fn install(term: u64, leader: u64, meta: &SnapshotMeta, offset: u64, data: &[u8]) -> Message {
    Message::InstallSnapshot(InstallSnapshot {
        term: Term(term),
        leader_id: ServerId(leader),
        meta: meta.clone(),
        offset,
        data: data.to_vec().into(),
    })
}

/// The only InstallSnapshot answer in `actions`, as (received, done, match_index).
fn only_snapshot_response(actions: &Actions) -> (u64, bool, u64) {
    let responses = sent(actions, |message| match message {
        Message::InstallSnapshotResponse(response) => Some(response.clone()),
        _ => None,
    });
    let [(_, response)] = responses.as_slice() else {
        panic!("expected one snapshot response, got {responses:?}");
    };
    (response.received, response.done, response.match_index.0)
}

/// §7: a follower cut off while the leader compacted its log catches up by snapshot, sent in
/// bounded chunks under the flow-control window; afterwards appends flow as before and every
/// state machine is equal.
#[test]
fn lagging_follower_catches_up_by_snapshot_in_bounded_chunks() {
    let config = snapshot_config(5, 16);
    let mut cluster = Cluster::with_config(3, &config);
    cluster.elect(1);
    cluster.isolate(3);
    for n in 0..12 {
        cluster.propose(1, &format!("put k{} v{n}", n % 4));
        cluster.deliver_until_quiet();
    }
    let leader = cluster.node(1);
    assert!(
        leader.metrics().snapshot_index >= LogIndex(10),
        "leader snapshotted"
    );
    assert!(
        leader.log().first_log_index() > LogIndex(2),
        "and compacted"
    );
    assert_eq!(cluster.node(3).last_applied(), LogIndex(0));

    cluster.heal();
    cluster.catch_up(1);
    let chunks = cluster.chunks_delivered(1, 3);
    assert!(
        chunks.len() > 2,
        "the snapshot took many chunks: {chunks:?}"
    );
    assert!(chunks.iter().all(|&(_, length)| length <= 16), "{chunks:?}");
    let follower = cluster.node(3);
    assert!(follower.metrics().snapshot_index >= LogIndex(10));
    assert_eq!(follower.last_applied(), cluster.node(1).last_applied());
    assert_eq!(
        follower.state_machine().snapshot(),
        cluster.node(1).state_machine().snapshot()
    );
    // Flow control: never more than two chunks (32 bytes) ahead of what the follower acknowledged.
    let mut acked = 0;
    for (sender, envelope) in &cluster.delivered {
        match &envelope.message {
            Message::InstallSnapshotResponse(response) if sender.0 == 3 => {
                acked = response.received;
            }
            Message::InstallSnapshot(chunk) if envelope.to.0 == 3 => {
                let end = chunk.offset + chunk.data.len() as u64;
                assert!(
                    end <= acked + 32,
                    "chunk ending at {end} with {acked} acknowledged"
                );
            }
            _ => {}
        }
    }
    // Replication continues by appends from the snapshot on.
    cluster.propose(1, "put after snapshot");
    cluster.catch_up(1);
    let leader_applied = cluster.node(1).last_applied();
    assert_eq!(cluster.node(3).last_applied(), leader_applied);
    assert_eq!(
        cluster.node(3).state_machine().get("after"),
        Some("snapshot")
    );
}

/// §7: a follower whose storage was wiped comes back with an empty log; the leader believes its
/// report over what it had acknowledged and brings it up to date by snapshot.
#[test]
fn a_follower_with_wiped_storage_is_brought_back_by_snapshot() {
    let config = snapshot_config(5, 32);
    let mut cluster = Cluster::with_config(3, &config);
    cluster.elect(1);
    for n in 0..12 {
        cluster.propose(1, &format!("put k{n} v{n}"));
        cluster.deliver_until_quiet();
    }
    assert!(
        cluster.node(1).log().first_log_index() > LogIndex(1),
        "compacted"
    );
    let acknowledged = cluster
        .node(1)
        .match_index(ServerId(3))
        .expect("a follower");
    assert!(acknowledged > LogIndex(10));
    // Server 3 loses its disk and restarts empty.
    cluster
        .nodes
        .insert(ServerId(3), build(3, 3, MemLog::new(), config.clone()));
    cluster.step(1, Event::PeerConnected(ServerId(3)));
    cluster.catch_up(1);
    let restored = cluster.node(3);
    assert!(
        restored.metrics().snapshot_index > LogIndex(0),
        "by snapshot"
    );
    assert_eq!(restored.last_applied(), cluster.node(1).last_applied());
    assert_eq!(
        restored.state_machine().snapshot(),
        cluster.node(1).state_machine().snapshot()
    );
}

/// §7: a follower whose log conflicts with the snapshot discards it entirely; the snapshot's
/// state replaces its state machine.
#[test]
fn install_discards_a_conflicting_log() {
    let (meta, bytes) = snapshot_of(&["put a 1", "put b 2", "put c 3"]);
    // Our log holds an entry of another term at the snapshot's last index, none committed.
    let mut follower = node_with_log(2, 3, 2, &[1, 1, 2, 2, 2, 2]);
    let term = 3;
    let actions = receive_and_sync(&mut follower, 1, install(term, 1, &meta, 0, &bytes));
    let (received, done, match_index) = only_snapshot_response(&actions);
    assert_eq!(
        (received, done, match_index),
        (meta.size, true, meta.last_index.0)
    );
    assert_eq!(follower.last_applied(), meta.last_index);
    assert_eq!(follower.commit_index(), meta.last_index);
    assert_eq!(
        follower.log().latest_log_index(),
        meta.last_index,
        "log discarded"
    );
    assert_eq!(follower.log().latest_log_term(), meta.last_term);
    assert_eq!(follower.state_machine().get("c"), Some("3"));
}

/// §7: chunks arrive out of order or twice; the follower writes only the one it expects and
/// tells the leader where to resume. A transfer it knows nothing of restarts from 0.
#[test]
fn install_resumes_from_the_received_offset() {
    let (meta, bytes) = snapshot_of(&["put a 1", "put b 2"]);
    let mut follower = node(2, 3);
    let term = 5;
    let actions = receive_and_sync(
        &mut follower,
        1,
        install(term, 1, &meta, 10, &bytes[10..20]),
    );
    assert_eq!(
        only_snapshot_response(&actions),
        (0, false, 0),
        "unknown transfer"
    );
    let actions = receive_and_sync(&mut follower, 1, install(term, 1, &meta, 0, &bytes[..10]));
    assert_eq!(only_snapshot_response(&actions), (10, false, 0));
    assert!(follower.receiving_snapshot());
    let actions = receive(
        &mut follower,
        1,
        install(term, 1, &meta, 20, &bytes[20..30]),
    );
    assert_eq!(
        only_snapshot_response(&actions),
        (10, false, 0),
        "gap: resume at 10"
    );
    let actions = receive_and_sync(&mut follower, 1, install(term, 1, &meta, 0, &bytes[..10]));
    assert_eq!(
        only_snapshot_response(&actions),
        (10, false, 0),
        "duplicate ignored"
    );
    let actions = receive_and_sync(&mut follower, 1, install(term, 1, &meta, 10, &bytes[10..]));
    assert_eq!(
        only_snapshot_response(&actions),
        (meta.size, true, meta.last_index.0)
    );
    assert_eq!(follower.state_machine().get("b"), Some("2"));
}

/// §7: a snapshot whose bytes do not match its checksum is not installed; the follower keeps
/// its state and asks for the snapshot again from the start.
#[test]
fn a_snapshot_failing_its_checksum_is_not_installed() {
    let (meta, mut bytes) = snapshot_of(&["put a 1"]);
    bytes[0] ^= 0x40;
    let mut follower = node_with_log(2, 3, 1, &[1]);
    let actions = receive_and_sync(&mut follower, 1, install(3, 1, &meta, 0, &bytes));
    assert_eq!(only_snapshot_response(&actions), (0, false, 0));
    assert!(!follower.receiving_snapshot());
    assert_eq!(follower.log().snapshot_meta(), None, "not installed");
    assert_eq!(follower.last_applied(), LogIndex(0));
    assert_eq!(
        follower.log().latest_log_index(),
        LogIndex(1),
        "log untouched"
    );
}

/// §7: a snapshot covering nothing beyond our commit index is not installed; the answer says
/// how far our log is known to match.
#[test]
fn a_snapshot_already_covered_by_the_commit_index_is_acknowledged_without_install() {
    let (meta, bytes) = snapshot_of(&["put a 1"]);
    let mut follower = node_with_log(2, 3, 1, &[1, 1, 1, 1]);
    let _ = receive_and_sync(&mut follower, 1, append(1, 1, (4, 1), vec![], 4));
    assert_eq!(follower.commit_index(), LogIndex(4));
    let actions = receive_and_sync(&mut follower, 1, install(1, 1, &meta, 0, &bytes));
    assert_eq!(only_snapshot_response(&actions), (meta.size, true, 4));
    assert_eq!(follower.log().snapshot_meta(), None);
}

/// §7: after a restart a server restores its newest snapshot and replays only the log after it.
#[test]
fn restart_restores_the_snapshot_and_replays_only_the_suffix() {
    let config = snapshot_config(10, 1 << 20);
    let mut server = build(1, 1, MemLog::new(), config.clone());
    win_election(&mut server);
    for n in 1..=25 {
        let _ = propose(&mut server, n, &format!("put k{} v{n}", n % 7));
        let _ = sync(&mut server);
    }
    let snapshot_index = server.metrics().snapshot_index;
    assert_eq!(snapshot_index, LogIndex(20), "snapshots at 10 and 20");
    let applied = server.last_applied();
    let before = server.state_machine().snapshot();
    let (log, _) = server.into_parts();

    let mut restarted = build(1, 1, log, config);
    assert_eq!(
        restarted.last_applied(),
        snapshot_index,
        "restored, nothing replayed yet"
    );
    assert_eq!(restarted.state_machine().applied_count(), 0);
    win_election(&mut restarted);
    // The suffix 21..=26 plus the new no-op: only the 6 commands after the snapshot are applied.
    assert_eq!(restarted.last_applied(), applied.next());
    assert_eq!(
        restarted.state_machine().applied_count(),
        applied.0 - snapshot_index.0
    );
    assert_eq!(restarted.state_machine().snapshot(), before);
}

/// §7 with §6.3: the session table travels in the snapshot, so a follower restored from one
/// answers a retried request exactly as the leader would, without applying it again.
#[test]
fn the_session_table_travels_in_the_snapshot() {
    let config = snapshot_config(4, 64);
    let mut cluster = Cluster::with_config(3, &config);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.step(
        1,
        Event::RegisterSession {
            id: ProposalId(900),
        },
    );
    cluster.deliver_until_quiet();
    let session = cluster
        .replies
        .iter()
        .find_map(|(_, reply)| match reply.outcome {
            ProposalOutcome::SessionRegistered { session } => Some(session),
            _ => None,
        })
        .expect("session opened");
    for sequence in 1..=6 {
        cluster.step(
            1,
            Event::Propose {
                id: ProposalId(900 + sequence),
                command: format!("put s{sequence} x").into_bytes(),
                session: Some(SessionRequest { session, sequence }),
                respond_when: ResponseMode::Applied,
            },
        );
        cluster.deliver_until_quiet();
    }
    cluster.heal();
    cluster.catch_up(1);
    let follower = cluster.node(3);
    assert!(
        follower.metrics().snapshot_index > LogIndex(0),
        "installed a snapshot"
    );
    assert_eq!(follower.sessions().len(), 1);
    assert_eq!(
        follower.state_machine().snapshot(),
        cluster.node(1).state_machine().snapshot()
    );
}

/// §7: a late or duplicated append that starts inside the prefix a snapshot replaced is
/// checked from the commit index instead: no compacted entry is read, and the answer is a
/// success up to what is committed. (Found by the simulator, seed 1529.)
#[test]
fn a_late_append_into_the_compacted_prefix_is_answered_from_the_commit_index() {
    let (meta, bytes) = snapshot_of(&["put a 1", "put b 2", "put c 3"]);
    let mut follower = node(2, 3);
    let _ = receive_and_sync(&mut follower, 1, install(3, 1, &meta, 0, &bytes));
    assert_eq!(follower.log().first_log_index(), meta.last_index.next());
    let late = append(3, 1, (0, 0), entries_from(1, &[1, 1]), 0);
    let actions = receive_and_sync(&mut follower, 1, late);
    let responses = append_responses(&actions);
    let [(_, response)] = responses.as_slice() else {
        panic!("expected one append response, got {responses:?}");
    };
    assert!(response.success);
    assert_eq!(response.match_index, meta.last_index);
    assert_eq!(follower.last_applied(), meta.last_index);
}

/// §7: a leader does not compact past a snapshot it is still sending. The chunks of snapshot
/// S1 are on their way when the leader takes S2; once the follower installs S1 it goes on by
/// appends from S1 + 1 instead of needing S2 at once.
#[test]
fn a_leader_keeps_the_log_after_a_snapshot_it_is_sending() {
    // One entry kept behind each snapshot: the follower's first append checks its term.
    let config = Config {
        snapshot_keep_entries: 1,
        ..snapshot_config(5, 1 << 20)
    };
    let mut cluster = Cluster::with_config(3, &config);
    cluster.elect(1);
    cluster.isolate(3);
    for n in 0..8 {
        cluster.propose(1, &format!("put k{n} v{n}"));
        cluster.deliver_until_quiet();
    }
    let first_snapshot = cluster.node(1).metrics().snapshot_index;
    assert!(first_snapshot > LogIndex(1));
    // The whole snapshot leaves in one chunk, which the network holds back for now.
    cluster.heal();
    cluster.step(1, Event::Timeout(Timer::Heartbeat));
    let mut held = Vec::new();
    cluster.in_flight.retain(|(from, envelope)| {
        let chunk = matches!(envelope.message, Message::InstallSnapshot(_));
        if chunk {
            held.push((*from, envelope.clone()));
        }
        !chunk
    });
    assert_eq!(held.len(), 1, "one chunk: {held:?}");
    cluster.isolate(3);
    cluster.deliver_until_quiet();
    for n in 8..20 {
        cluster.propose(1, &format!("put k{n} v{n}"));
        cluster.deliver_until_quiet();
    }
    let leader = cluster.node(1).metrics();
    assert!(
        leader.snapshot_index > first_snapshot,
        "a newer snapshot: {leader:?}"
    );
    cluster.heal();
    for (from, envelope) in held {
        cluster.inject(from.0, envelope.to.0, envelope.message);
    }
    cluster.deliver_until_quiet();
    cluster.catch_up(1);
    assert_eq!(
        cluster.chunks_delivered(1, 3).len(),
        1,
        "installed the first snapshot and needed no other"
    );
    assert_eq!(
        cluster.node(3).last_applied(),
        cluster.node(1).last_applied()
    );
}

// ---- Pre-vote and check-quorum (thesis §9.6, §6.2) ----

fn pre_vote_request(term: u64, candidate: u64, last: Position) -> Message {
    Message::RequestVote(RequestVote {
        pre_vote: true,
        ..vote_request_of(term, candidate, last)
    })
}

fn pre_vote_answer(term: u64, granted: bool) -> Message {
    Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(term),
        vote_granted: granted,
        pre_vote: true,
    })
}

/// The only answer to a vote or pre-vote request in `actions`, as (term, granted, pre-vote);
/// `None` if there is none.
fn vote_answer(actions: &Actions) -> Option<(u64, bool, bool)> {
    let answers = vote_responses(actions);
    match answers.as_slice() {
        [] => None,
        [(_, answer)] => Some((answer.term.0, answer.vote_granted, answer.pre_vote)),
        more => panic!("expected at most one vote answer, got {more:?}"),
    }
}

/// §9.6: with pre-vote, an election timeout asks for pre-votes for the next term without
/// changing the term or the vote; a majority of yeses then starts the real campaign.
#[test]
fn a_timeout_asks_for_pre_votes_before_campaigning() {
    let mut follower = build(1, 3, filled_log(1, &[1]), Config::default());
    let actions = fire(&mut follower, Timer::Election);
    let requests = vote_requests(&actions);
    assert_eq!(requests.len(), 2);
    for (_, request) in &requests {
        assert!(request.pre_vote);
        assert_eq!(
            (request.term, request.last_log_index),
            (Term(2), LogIndex(1))
        );
    }
    assert_eq!(follower.current_term(), Term(1), "no new term yet");
    assert_eq!(follower.log().voted_for(), None, "no vote cast");
    assert_eq!(follower.role(), Role::Follower);
    assert!(!actions.sync_required, "nothing to make durable");

    let actions = receive_and_sync(&mut follower, 2, pre_vote_answer(2, true));
    assert_eq!(follower.role(), Role::Candidate, "a majority said yes");
    assert_eq!(follower.current_term(), Term(2));
    assert!(vote_requests(&actions)
        .iter()
        .all(|(_, request)| !request.pre_vote && request.term == Term(2)));
}

/// §9.6: a pre-vote changes no term and no vote; it is granted only for a higher term and an
/// up-to-date log; refused pre-votes from a higher term teach the asker that term.
#[test]
fn pre_votes_change_nothing_and_need_an_up_to_date_log() {
    let mut voter = build(2, 3, filled_log(3, &[1, 3]), Config::default());
    let stale = receive(&mut voter, 1, pre_vote_request(4, 1, (1, 1)));
    assert_eq!(vote_answer(&stale), Some((3, false, true)));
    let fresh = receive(&mut voter, 1, pre_vote_request(4, 1, (2, 3)));
    assert_eq!(vote_answer(&fresh), Some((4, true, true)));
    let same_term = receive(&mut voter, 1, pre_vote_request(3, 1, (2, 3)));
    assert_eq!(vote_answer(&same_term), Some((3, false, true)));
    assert_eq!(voter.current_term(), Term(3), "the term did not move");
    assert_eq!(voter.log().voted_for(), None, "no vote was cast");

    let mut asker = build(1, 3, filled_log(1, &[1]), Config::default());
    let _ = fire(&mut asker, Timer::Election);
    let _ = receive(&mut asker, 2, pre_vote_answer(3, false));
    assert_eq!(asker.current_term(), Term(3), "learned the higher term");
    assert_eq!(asker.role(), Role::Follower);
}

/// §9.6, check-quorum: a follower that heard from its leader within the minimum election
/// timeout ignores a request to vote in a higher term, and does not adopt that term; once the
/// lease runs out it answers as usual.
#[test]
fn a_follower_with_a_live_leader_ignores_vote_requests_for_a_higher_term() {
    let mut follower = build(2, 3, filled_log(1, &[1]), Config::default());
    let _ = receive_and_sync(&mut follower, 1, append(1, 1, (1, 1), vec![], 1));
    let actions = receive(&mut follower, 3, request_vote(5, 3, (1, 1)));
    assert_eq!(vote_answer(&actions), None, "ignored");
    assert_eq!(follower.current_term(), Term(1));
    let actions = receive(&mut follower, 3, pre_vote_request(2, 3, (1, 1)));
    assert_eq!(
        vote_answer(&actions),
        Some((1, false, true)),
        "pre-vote refused"
    );

    let _ = fire(&mut follower, Timer::Quorum);
    let actions = receive_and_sync(&mut follower, 3, request_vote(5, 3, (1, 1)));
    assert_eq!(vote_answer(&actions), Some((5, true, false)));
}

/// Check-quorum: a leader that heard from no majority during an election timeout steps down;
/// one that did stays.
#[test]
fn a_leader_cut_off_from_the_majority_steps_down() {
    let config = Config {
        pre_vote: false,
        ..Config::default()
    };
    let mut leader = build(1, 5, MemLog::new(), config);
    win_election(&mut leader);
    let _ = receive(&mut leader, 2, ack(1, 1));
    let _ = receive(&mut leader, 3, ack(1, 1));
    let _ = fire(&mut leader, Timer::Quorum);
    assert_eq!(leader.role(), Role::Leader, "heard from 3 of 5");
    let _ = receive(&mut leader, 2, ack(1, 1));
    let _ = fire(&mut leader, Timer::Quorum);
    assert_eq!(leader.role(), Role::Follower, "heard from 2 of 5");
    assert_eq!(leader.current_term(), Term(1));
}

/// The story §9.6 is for: a server cut off for many election timeouts keeps timing out. With
/// pre-vote its term never rises, so when it comes back the leader carries on and the
/// majority's term is unchanged. Without pre-vote and check-quorum the same story deposes the
/// leader, so this test can tell the difference.
#[test]
fn a_server_rejoining_after_a_partition_does_not_disrupt_the_cluster() {
    let rejoin = |config: Config| {
        let mut cluster = Cluster::with_config(3, &config);
        cluster.elect(1);
        cluster.propose(1, "put k v");
        cluster.deliver_until_quiet();
        cluster.isolate(3);
        for _ in 0..10 {
            cluster.time_out(3);
            cluster.deliver_until_quiet();
        }
        cluster.heal();
        cluster.heartbeat(1);
        cluster.heartbeat(1);
        (
            cluster.leaders(),
            cluster.node(1).current_term().0,
            cluster.node(3).current_term().0,
            cluster.node(3).last_applied(),
        )
    };
    let (leaders, leader_term, rejoined_term, applied) = rejoin(Config::default());
    assert_eq!(leaders, [1], "the leader kept leading");
    assert_eq!((leader_term, rejoined_term), (1, 1), "no term was raised");
    assert_eq!(applied, LogIndex(2), "the rejoined server caught up");

    let (_, leader_term, _, _) = rejoin(paper_config());
    assert!(
        leader_term > 1,
        "without pre-vote the rejoin forces an election"
    );
}

// ---- Leadership transfer (thesis §3.10) ----

impl Cluster {
    /// An operator asks `leader` to hand leadership to `to`; the network is left alone.
    fn ask_transfer(&mut self, leader: u64, to: u64) -> ProposalId {
        let proposal = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.step(
            leader,
            Event::TransferLeadership {
                id: proposal,
                to: ServerId(to),
            },
        );
        proposal
    }
}

/// §3.10: the leader stops taking proposals, brings the target up to date, and tells it to
/// campaign; the target wins although the other follower's leader lease still holds, and the
/// old leader answers the operator once it has stepped down.
#[test]
fn leadership_goes_to_the_chosen_follower_once_it_is_caught_up() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, "put a 1");
    cluster.propose(1, "put b 2");
    cluster.heal();
    let transfer = cluster.ask_transfer(1, 3);
    // Meanwhile proposals are turned away, towards the server about to lead.
    let refused = cluster.propose(1, "put c 3");
    assert!(
        matches!(
            cluster.outcomes(refused).as_slice(),
            [ProposalOutcome::NotLeader {
                leader: Some(ServerId(3))
            }]
        ),
        "{:?}",
        cluster.outcomes(refused)
    );
    // The appends 3 missed are noticed lost within a heartbeat interval or two and sent again.
    cluster.catch_up(1);
    assert_eq!(cluster.leaders(), [3]);
    assert_eq!(cluster.node(3).current_term(), Term(2));
    assert_eq!(
        cluster.outcomes(transfer),
        [ProposalOutcome::LeadershipTransferred { to: ServerId(3) }]
    );
    cluster.propose(3, "put c 3");
    cluster.heartbeat(3);
    assert_eq!(cluster.node(1).state_machine().get("c"), Some("3"));
    assert_eq!(
        cluster.node(3).state_machine().get("b"),
        Some("2"),
        "nothing was lost"
    );
}

/// §3.10: a transfer whose target does not take over within an election timeout is abandoned;
/// the leader answers the operator and takes proposals again.
#[test]
fn a_transfer_to_an_unreachable_follower_is_abandoned_after_an_election_timeout() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.isolate(3);
    let transfer = cluster.ask_transfer(1, 3);
    cluster.deliver_until_quiet();
    for _ in 0..10 {
        cluster.heartbeat(1);
    }
    assert_eq!(cluster.leaders(), [1]);
    assert!(
        matches!(
            cluster.outcomes(transfer).as_slice(),
            [ProposalOutcome::TransferFailed { .. }]
        ),
        "{:?}",
        cluster.outcomes(transfer)
    );
    let accepted = cluster.propose(1, "put k v");
    assert!(matches!(
        cluster.outcomes(accepted).as_slice(),
        [ProposalOutcome::Applied { .. }]
    ));
}

/// §3.10: a transfer to a server that is not a voter fails at once; a transfer to the leader
/// itself is already done; only one transfer runs at a time.
#[test]
fn a_transfer_names_a_voter_and_runs_alone() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    let stranger = cluster.ask_transfer(1, 9);
    let itself = cluster.ask_transfer(1, 1);
    cluster.isolate(2);
    let first = cluster.ask_transfer(1, 2);
    let second = cluster.ask_transfer(1, 3);
    assert!(matches!(
        cluster.outcomes(stranger).as_slice(),
        [ProposalOutcome::TransferFailed { reason }] if reason.contains("not a voting member")
    ));
    assert_eq!(
        cluster.outcomes(itself),
        [ProposalOutcome::LeadershipTransferred { to: ServerId(1) }]
    );
    assert!(cluster.outcomes(first).is_empty(), "still under way");
    assert!(matches!(
        cluster.outcomes(second).as_slice(),
        [ProposalOutcome::TransferFailed { reason }] if reason.contains("already under way")
    ));
}

// ---- Membership changes (thesis chapter 4) ----

impl Cluster {
    /// Adds server `id`, started to join an existing cluster: an empty configuration, so it
    /// stays passive until a leader adds it.
    fn add_joiner(&mut self, id: u64, config: &Config) {
        let mut node = Consensus::with_membership(
            ServerId(id),
            Membership::default(),
            MemLog::new(),
            KvStateMachine::new(),
            config.clone(),
            id,
        )
        .expect("a joining server");
        let actions = node.start();
        self.nodes.insert(ServerId(id), node);
        self.absorb(ServerId(id), actions);
    }

    /// An operator asks `leader` for `change`; the network runs until quiet.
    fn change(&mut self, leader: u64, change: MembershipChange) -> ProposalId {
        let proposal = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.step(
            leader,
            Event::ChangeMembership {
                id: proposal,
                change,
            },
        );
        self.deliver_until_quiet();
        proposal
    }

    fn membership(&self, id: u64) -> &Membership {
        self.node(id).membership()
    }
}

fn add_server(id: u64) -> MembershipChange {
    MembershipChange::AddServer {
        id: ServerId(id),
        address: format!("127.0.0.1:{}", 7000 + id),
    }
}

fn add_learner(id: u64) -> MembershipChange {
    MembershipChange::AddLearner {
        id: ServerId(id),
        address: format!("127.0.0.1:{}", 7000 + id),
    }
}

fn remove_server(id: u64) -> MembershipChange {
    MembershipChange::RemoveServer { id: ServerId(id) }
}

fn ids(list: &[u64]) -> Vec<ServerId> {
    list.iter().copied().map(ServerId).collect()
}

/// The reason of a refused change, or a panic naming what came instead.
fn refusal(outcomes: &[ProposalOutcome]) -> String {
    match outcomes {
        [ProposalOutcome::MembershipChangeFailed { reason }] => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn changed(outcomes: &[ProposalOutcome]) -> bool {
    matches!(outcomes, [ProposalOutcome::MembershipChanged { .. }])
}

/// Thesis §4.1: servers started with the same member list form the cluster; the first leader
/// writes that configuration as the first log entry, where every server then finds it.
#[test]
fn the_first_leader_writes_the_initial_configuration_as_entry_one() {
    let mut cluster = Cluster::with_config(3, &paper_config());
    for id in 1..=3 {
        assert_eq!(cluster.node(id).membership_index(), LogIndex(0));
    }
    cluster.elect(1);
    cluster.catch_up(1);
    for id in 1..=3 {
        let first = cluster.node(id).log().entry(LogIndex(1)).expect("read");
        let first = first.expect("entry 1");
        assert_eq!(first.kind, EntryKind::Configuration);
        assert_eq!(
            first.membership(),
            Some(Ok(Membership::from_voters(ids(&[1, 2, 3]))))
        );
        assert_eq!(cluster.node(id).membership_index(), LogIndex(1));
        assert_eq!(cluster.node(id).commit_index(), LogIndex(1));
    }
    // A later leader writes a plain no-op: the configuration is in the log already.
    cluster.time_out(2);
    cluster.deliver_until_quiet();
    assert_eq!(cluster.leaders(), [2]);
    let start = cluster.node(2).log().entry(LogIndex(2)).expect("read");
    assert_eq!(start.expect("entry 2").kind, EntryKind::Noop);
}

/// Thesis §4.2.1: a server started to join is passive: its timer fires but it never campaigns
/// (its term stays 0) until a leader adds it.
#[test]
fn a_joining_server_never_campaigns() {
    let mut cluster = Cluster::with_config(1, &Config::default());
    cluster.add_joiner(2, &Config::default());
    for _ in 0..5 {
        cluster.time_out(2);
        cluster.deliver_until_quiet();
    }
    let joiner = cluster.node(2);
    assert_eq!(joiner.current_term(), Term(0));
    assert_eq!(joiner.role(), Role::Learner);
    assert!(joiner.membership().is_empty());
    assert!(cluster.delivered.is_empty(), "it sent nothing");
}

/// Thesis §4.2.1, §4.1: adding a server makes it a learner, catches it up (one fast round
/// here), then promotes it; each step is its own configuration entry, in force as soon as it
/// is in a log, and the operator hears once the promotion is committed.
#[test]
fn an_added_server_is_caught_up_as_a_learner_then_promoted() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    for n in 0..20 {
        cluster.propose(1, &format!("put k{n} v{n}"));
    }
    cluster.add_joiner(4, &Config::default());
    let add = cluster.change(1, add_server(4));
    cluster.catch_up(1);
    assert!(
        changed(&cluster.outcomes(add)),
        "{:?}",
        cluster.outcomes(add)
    );
    let expected =
        Membership::from_voters(ids(&[1, 2, 3])).with_voter(ServerId(4), "127.0.0.1:7004");
    for id in 1..=4 {
        assert_eq!(cluster.membership(id), &expected, "server {id}");
    }
    assert_eq!(cluster.node(4).role(), Role::Follower);
    assert_eq!(cluster.node(4).state_machine().get("k19"), Some("v19"));
    // The learner configuration came first, then the promotion.
    let kinds: Vec<Membership> = log_entries(cluster.node(4))
        .iter()
        .filter_map(|entry| entry.membership().map(|m| m.expect("well formed")))
        .collect();
    assert_eq!(kinds.len(), 3, "initial, learner, voter: {kinds:?}");
    assert!(kinds[1].is_learner(ServerId(4)) && kinds[2].is_voter(ServerId(4)));
    // Idempotent: asking again succeeds at once without a new entry.
    let last = cluster.node(1).last_log_index();
    let again = cluster.change(1, add_server(4));
    assert!(changed(&cluster.outcomes(again)));
    assert_eq!(cluster.node(1).last_log_index(), last);
}

/// Learners receive the log but neither count toward commitment nor vote; they never
/// campaign.
#[test]
fn a_learner_receives_the_log_but_does_not_count() {
    let mut cluster = Cluster::with_config(2, &Config::default());
    cluster.elect(1);
    cluster.add_joiner(3, &Config::default());
    let add = cluster.change(1, add_learner(3));
    cluster.catch_up(1);
    assert!(changed(&cluster.outcomes(add)));
    assert_eq!(cluster.node(3).role(), Role::Learner);
    cluster.propose(1, "put a 1");
    cluster.catch_up(1);
    assert_eq!(cluster.node(3).state_machine().get("a"), Some("1"));
    // Voter 2 gone: the learner's acknowledgement cannot make a majority of {1, 2}.
    cluster.isolate(2);
    let stuck = cluster.propose(1, "put b 2");
    cluster.catch_up(1);
    assert!(cluster.outcomes(stuck).is_empty(), "not committed");
    assert_eq!(
        cluster.node(3).log().latest_log_index(),
        cluster.node(1).last_log_index()
    );
    let term = cluster.node(3).current_term();
    cluster.time_out(3);
    cluster.deliver_until_quiet();
    assert_eq!(
        cluster.node(3).current_term(),
        term,
        "a learner never campaigns"
    );
}

/// Thesis §4.1: one change at a time. A second change while the first is uncommitted is
/// refused with words saying so; a leader makes no change before an entry of its own term is
/// committed. Removing the only voter is refused; removing a non-member is already done.
#[test]
fn changes_go_one_at_a_time_and_refusals_say_why() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.time_out(1);
    // Votes are in flight: once it leads, its first entry is not committed yet.
    cluster.deliver_until_quiet();
    cluster.isolate(2);
    cluster.isolate(3);
    cluster.add_joiner(4, &Config::default());
    cluster.isolate(4);
    let first = cluster.change(1, add_learner(4));
    assert!(cluster.outcomes(first).is_empty(), "under way");
    let second = cluster.change(1, remove_server(3));
    assert!(refusal(&cluster.outcomes(second)).contains("in progress"));
    cluster.heal();
    cluster.catch_up(1);
    assert!(changed(&cluster.outcomes(first)));
    let stranger = cluster.change(1, remove_server(9));
    assert!(
        changed(&cluster.outcomes(stranger)),
        "not a member: nothing to do"
    );

    let mut single = Cluster::with_config(1, &Config::default());
    single.elect(1);
    let last = single.change(1, remove_server(1));
    assert!(refusal(&single.outcomes(last)).contains("only voter"));
    let nobody = single.change(
        1,
        MembershipChange::AddServer {
            id: ServerId(5),
            address: String::new(),
        },
    );
    assert!(refusal(&single.outcomes(nobody)).contains("needs an address"));
}

/// Thesis §4.1: a change is refused until the leader has committed an entry of its term.
#[test]
fn a_new_leader_changes_nothing_before_its_first_entry_commits() {
    let mut log = MemLog::new();
    log.set_current_term(Term(1)).expect("term");
    let initial = Entry::configuration(Term(1), &Membership::from_voters(voters(3)));
    log.append_entries(LogIndex(1), &[initial, Entry::command(Term(1), "put a 1")])
        .expect("append");
    let mut leader = build(1, 3, log, paper_config());
    win_election(&mut leader);
    assert_eq!(leader.current_term(), Term(2));
    let actions = leader
        .step(Event::ChangeMembership {
            id: ProposalId(7),
            change: remove_server(3),
        })
        .expect("step");
    let [ClientReply { outcome, .. }] = actions.replies.as_slice() else {
        panic!("{:?}", actions.replies);
    };
    let reason = refusal(std::slice::from_ref(outcome));
    assert!(
        reason.contains("not committed an entry of its term"),
        "{reason}"
    );
}

/// Thesis §4.2.1: a server that does not answer at all is given up on after a number of
/// election timeouts without progress; it stays a learner, and the words say what to do.
#[test]
fn adding_an_unreachable_server_gives_up_with_a_clear_error() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.isolate(4);
    let add = cluster.change(1, add_server(4));
    for _ in 0..9 {
        cluster.step(1, Event::Timeout(Timer::CatchUp));
        cluster.deliver_until_quiet();
    }
    assert!(
        cluster.outcomes(add).is_empty(),
        "still trying after 9 timeouts"
    );
    cluster.step(1, Event::Timeout(Timer::CatchUp));
    let reason = refusal(&cluster.outcomes(add));
    assert!(reason.contains("made no progress"), "{reason}");
    assert!(reason.contains("stays a learner"), "{reason}");
    assert!(cluster.membership(1).is_learner(ServerId(4)));
    // The next change may go ahead.
    let remove = cluster.change(1, remove_server(4));
    assert!(changed(&cluster.outcomes(remove)));
}

/// Thesis §4.2.1: a round that runs past an election timeout is followed by another, to the
/// leader's new last index; the server is promoted after a round that finishes in time.
#[test]
fn a_slow_round_is_followed_by_another() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.add_joiner(4, &Config::default());
    cluster.isolate(4);
    let add = cluster.change(1, add_server(4));
    cluster.step(1, Event::Timeout(Timer::CatchUp)); // round 1 is slow
    cluster.propose(1, "put during 1");
    cluster.heal();
    cluster.catch_up(1); // round 1 ends late; round 2 starts and ends in time
    assert!(
        changed(&cluster.outcomes(add)),
        "{:?}",
        cluster.outcomes(add)
    );
    assert!(cluster.membership(2).is_voter(ServerId(4)));
    assert_eq!(cluster.node(4).state_machine().get("during"), Some("1"));
}

/// Thesis §4.2.2: the leader may remove itself. It leads, not counting itself, until the change
/// commits, answers the operator, then hands leadership to a caught-up voter at once and
/// steps down; it never campaigns again.
#[test]
fn a_leader_that_removes_itself_hands_over_after_the_change_commits() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.propose(1, "put a 1");
    let remove = cluster.change(1, remove_server(1));
    cluster.catch_up(1);
    assert!(changed(&cluster.outcomes(remove)));
    let leaders = cluster.leaders();
    assert!(leaders == [2] || leaders == [3], "{leaders:?}");
    let leader = leaders[0];
    assert_eq!(cluster.node(leader).current_term(), Term(2), "one election");
    assert_eq!(cluster.node(1).role(), Role::Learner);
    cluster.propose(leader, "put b 2");
    cluster.heartbeat(leader);
    let term = cluster.node(1).current_term();
    cluster.time_out(1);
    cluster.deliver_until_quiet();
    assert_eq!(
        cluster.node(1).current_term(),
        term,
        "a removed server stays quiet"
    );
    for id in [2, 3] {
        assert_eq!(cluster.membership(id).voters(), ids(&[2, 3]));
        assert_eq!(cluster.node(id).state_machine().get("b"), Some("2"));
    }
}

/// Thesis §4.1: a follower uses a configuration as soon as it is in its log, before it
/// commits; when a new leader overwrites the entry, the previous configuration is back.
#[test]
fn a_configuration_takes_effect_when_appended_and_is_undone_by_truncation() {
    let mut cluster = Cluster::with_config(5, &Config::default());
    cluster.elect(1);
    cluster.catch_up(1);
    // Only 2 hears of the change; it cannot commit, but 2 uses it already.
    for id in [3, 4, 5] {
        cluster.isolate(id);
    }
    let remove = cluster.change(1, remove_server(5));
    assert!(
        cluster.outcomes(remove).is_empty(),
        "{:?}",
        cluster.outcomes(remove)
    );
    assert_eq!(
        cluster.membership(2).voters(),
        ids(&[1, 2, 3, 4]),
        "in force when appended"
    );
    assert!(cluster.node(2).commit_index() < cluster.node(2).membership_index());

    // A follower given such an entry, then a new leader's conflicting entry in its place.
    let mut follower = node_with_log(2, 3, 1, &[1]);
    let removal = Entry::configuration(Term(1), &Membership::from_voters(ids(&[1, 2])));
    let _ = receive_and_sync(&mut follower, 1, append(1, 1, (1, 1), vec![removal], 1));
    assert_eq!(follower.membership().voters(), ids(&[1, 2]));
    assert_eq!(follower.membership_index(), LogIndex(2));
    let replacement = Entry::command(Term(2), "put x y");
    let _ = receive_and_sync(&mut follower, 3, append(2, 3, (1, 1), vec![replacement], 1));
    assert_eq!(follower.membership().voters(), ids(&[1, 2, 3]), "undone");
    assert_eq!(follower.membership_index(), LogIndex(0));
}

/// A configuration entry a leader sends must be well formed; a malformed one is refused before
/// it enters the log, never a panic.
#[test]
fn a_malformed_configuration_entry_is_refused() {
    let mut follower = node_with_log(2, 3, 1, &[1]);
    let mut bad = Entry::configuration(Term(1), &Membership::from_voters(ids(&[1, 2])));
    bad.data = bad.data.slice(..bad.data.len() - 1);
    let actions = receive(&mut follower, 1, append(1, 1, (1, 1), vec![bad], 1));
    assert!(append_responses(&actions).is_empty(), "ignored");
    assert_eq!(follower.last_log_index(), LogIndex(1));
}

/// Thesis §4.2.3 with §9.6: a removed server that keeps running, and never heard it was
/// removed, times out again and again; pre-vote and the leader lease keep it from raising
/// anyone's term or deposing the leader.
#[test]
fn a_removed_server_cannot_disrupt_the_cluster() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.catch_up(1);
    cluster.isolate(3);
    let remove = cluster.change(1, remove_server(3));
    cluster.catch_up(1);
    assert!(changed(&cluster.outcomes(remove)));
    cluster.heal();
    assert!(
        cluster.node(3).membership().is_voter(ServerId(3)),
        "it does not know"
    );
    for _ in 0..5 {
        cluster.time_out(3);
        cluster.deliver_until_quiet();
        cluster.heartbeat(1);
    }
    assert_eq!(cluster.leaders(), [1]);
    for id in [1, 2] {
        assert_eq!(cluster.node(id).current_term(), Term(1), "server {id}");
    }
    // Without pre-vote, its higher-term vote requests are still ignored by leased servers.
    let mut plain = Cluster::with_config(
        3,
        &Config {
            pre_vote: false,
            ..Config::default()
        },
    );
    plain.elect(1);
    plain.catch_up(1);
    plain.isolate(3);
    let remove = plain.change(1, remove_server(3));
    plain.catch_up(1);
    assert!(changed(&plain.outcomes(remove)));
    plain.heal();
    plain.time_out(3);
    plain.deliver_until_quiet();
    plain.heartbeat(1);
    assert_eq!(plain.leaders(), [1]);
    assert_eq!(plain.node(2).current_term(), Term(1));
}

/// §7 with thesis §4.1: a snapshot carries the whole configuration; a server that joins and
/// catches up by snapshot learns it from there, learners and addresses included.
#[test]
fn a_snapshot_carries_the_configuration_to_a_new_server() {
    let config = Config {
        snapshot_entries: 5,
        snapshot_keep_entries: 0,
        ..Config::default()
    };
    let mut cluster = Cluster::with_config(3, &config);
    cluster.elect(1);
    cluster.add_joiner(4, &config);
    let learner = cluster.change(1, add_learner(4));
    assert!(changed(&cluster.outcomes(learner)));
    for n in 0..20 {
        cluster.propose(1, &format!("put k{n} v{n}"));
    }
    cluster.catch_up(1);
    cluster.add_joiner(5, &config);
    let add = cluster.change(1, add_server(5));
    cluster.catch_up(1);
    assert!(
        changed(&cluster.outcomes(add)),
        "{:?}",
        cluster.outcomes(add)
    );
    assert!(
        !cluster.chunks_delivered(1, 5).is_empty(),
        "caught up by snapshot"
    );
    let snapshot = cluster
        .node(5)
        .log()
        .snapshot_meta()
        .expect("installed")
        .clone();
    assert!(snapshot.membership.is_learner(ServerId(4)));
    assert_eq!(
        snapshot.membership.address(ServerId(4)),
        Some("127.0.0.1:7004")
    );
    assert_eq!(cluster.membership(5), cluster.membership(1));
    assert_eq!(cluster.node(5).state_machine().get("k19"), Some("v19"));
}

/// Thesis §4.1: after a restart a server uses the configuration in its log, not the member list
/// it was started with.
#[test]
fn a_restarted_server_uses_the_configuration_in_its_log() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    let remove = cluster.change(1, remove_server(3));
    cluster.catch_up(1);
    assert!(changed(&cluster.outcomes(remove)));
    let node = cluster.nodes.remove(&ServerId(2)).expect("server 2");
    let (log, _) = node.into_parts();
    let restarted = Consensus::new(
        ServerId(2),
        voters(3),
        log,
        KvStateMachine::new(),
        Config::default(),
        2,
    )
    .expect("restart");
    assert_eq!(restarted.voters(), ids(&[1, 2]));
    assert_eq!(restarted.membership_index(), LogIndex(2));
}

/// Thesis §4.2.2: proposals a leader appended after its own removal are committed and answered
/// before it steps down; none is left waiting on a server that will hear no more.
#[test]
fn a_leaving_leader_answers_every_proposal_before_it_steps_down() {
    let mut cluster = Cluster::with_config(3, &Config::default());
    cluster.elect(1);
    cluster.catch_up(1);
    cluster.step(
        1,
        Event::ChangeMembership {
            id: ProposalId(100),
            change: remove_server(1),
        },
    );
    let after = ProposalId(101);
    cluster.step(
        1,
        Event::ClientProposal {
            id: after,
            command: b"put late 1".to_vec(),
        },
    );
    cluster.catch_up(1);
    assert!(changed(&cluster.outcomes(ProposalId(100))));
    assert!(
        matches!(
            cluster.outcomes(after).as_slice(),
            [ProposalOutcome::Applied { .. }]
        ),
        "{:?}",
        cluster.outcomes(after)
    );
    assert_eq!(cluster.node(1).role(), Role::Learner);
    let leader = cluster.leaders()[0];
    assert_eq!(cluster.node(leader).state_machine().get("late"), Some("1"));
}
