@0x80b35f643731c783;

# The whole mioraft wire protocol. A program written in any language from this file alone can
# talk to a mioraft server.
#
# TRANSPORT
#   One TCP port per server, shared by peers and clients. Every message in either direction is one
#   Cap'n Proto message in the standard, unpacked stream framing:
#     (segment count - 1) as u32 little-endian, then each segment's size in 8-byte words as u32,
#     padding to 8 bytes, then the segments.
#   A server closes a connection whose message is larger than its configured maximum (default
#   16 MiB), or which is not valid Cap'n Proto, or which breaks the conversation below.
#
# CONVERSATION
#   1. The side that opened the connection sends one ConnectionPreamble:
#        - a server dialling a peer: `peer` with its own server id;
#        - a client: `client` with a random 64-bit client id, unique per client process.
#      A server accepts `peer` from any server id other than its own: the membership changes
#      (Raft thesis ch. 4), a server waiting to join knows no peers yet, and a new leader may not
#      be in the configuration this server knows. It answers a peer on the connection it dialled
#      to it, or on the peer's connection when it has none (a joining server knows no addresses).
#   2. Between peers: each side sends `Message`s; there are no per-message replies at this layer
#      (a RequestVote is answered by a RequestVoteResponse Message some time later, which may
#      arrive on either of the two connections between the peers).
#   3. A client sends `ClientRequest`s; the server answers each with exactly one
#      `ClientResponse` carrying the same `requestId`, in any order. A client may have several
#      requests outstanding.
#   A client connection that sends something other than ClientRequest after its preamble, or a
#   peer connection that sends something other than Message, is closed.
#
# A CLIENT, STEP BY STEP
#   connect to any server; send ConnectionPreamble(client = <random id>);
#   send ClientRequest(requestId = 1, propose = "put k v");
#   read ClientResponse(requestId = 1):
#     - applied(result): done; `result` is what the state machine returned.
#     - notLeader(leaderId, leaderAddress): reconnect to leaderAddress and retry.
#     - unknownLeader: an election is under way; wait a little and retry.
#     - rejected(reason, message): see RejectionReason.

# Who opened a connection. Always the first message on it.
struct ConnectionPreamble {
  union {
    # A server: its id (never 0).
    peer @0 :UInt64;
    # A client: its random id.
    client @1 :UInt64;
  }
}

# One log entry (Raft §5.3).
struct Entry {
  # The term of the leader that created the entry.
  term @0 :UInt64;
  kind @1 :EntryKind;
  # The command (empty for a no-op).
  data @2 :Data;
}

enum EntryKind {
  # The empty entry a new leader appends at the start of its term (Raft §8).
  noop @0;
  # An application command.
  command @1;
  # Opens a client session (Raft thesis §6.3); the session id is the entry's index. No data.
  registerSession @2;
  # A command inside a client session: `data` is the session id and the request's sequence
  # number (each a little-endian UInt64), then the command. Applied at most once per
  # (session, sequence).
  sessionCommand @3;
  # A cluster configuration (Raft thesis §4.1): `data` is the configuration in mioraft's
  # Membership byte encoding. It takes effect as soon as it is in a server's log.
  configuration @4;
}

# Raft's RPCs between servers (Figure 2 of the Raft paper). Every field is the paper's.
struct Message {
  union {
    requestVote @0 :RequestVote;
    requestVoteResponse @1 :RequestVoteResponse;
    appendEntries @2 :AppendEntries;
    appendEntriesResponse @3 :AppendEntriesResponse;
    installSnapshot @4 :InstallSnapshot;
    installSnapshotResponse @5 :InstallSnapshotResponse;
    timeoutNow @6 :TimeoutNow;
  }
}

# The leader hands leadership to a caught-up follower: campaign now (Raft thesis §3.10).
struct TimeoutNow {
  term @0 :UInt64;
  leaderId @1 :UInt64;
}

struct RequestVote {
  term @0 :UInt64;
  candidateId @1 :UInt64;
  lastLogIndex @2 :UInt64;
  lastLogTerm @3 :UInt64;
  # A pre-vote (thesis §9.6): would the receiver vote in term `term`? Its term and vote do not
  # change.
  preVote @4 :Bool;
  # The candidate campaigns because the leader handed it leadership (thesis §3.10): voters
  # answer even while they hear from a live leader.
  leadershipTransfer @5 :Bool;
}

struct RequestVoteResponse {
  term @0 :UInt64;
  voteGranted @1 :Bool;
  # The answer to a pre-vote; if granted, `term` is the term asked about.
  preVote @2 :Bool;
}

struct AppendEntries {
  term @0 :UInt64;
  leaderId @1 :UInt64;
  prevLogIndex @2 :UInt64;
  prevLogTerm @3 :UInt64;
  entries @4 :List(Entry);
  leaderCommit @5 :UInt64;
  # The leader's latest read round (ReadIndex, Raft thesis §6.4), echoed in the response: an
  # answer of this term to round r proves the follower still followed this leader after every
  # read assigned to round r arrived.
  readRound @6 :UInt64;
}

struct AppendEntriesResponse {
  term @0 :UInt64;
  success @1 :Bool;
  # On success: prevLogIndex + number of entries, the last index the request verified.
  matchIndex @2 :UInt64;
  # On rejection: the term of the follower's entry at prevLogIndex (0 if its log is shorter) and
  # the first index it holds of that term (or its last index + 1), so the leader skips a whole
  # term per round trip.
  conflictTerm @3 :UInt64;
  conflictIndex @4 :UInt64;
  # The follower's last log index (informational).
  lastLogIndex @5 :UInt64;
  # The request's readRound, echoed.
  readRound @6 :UInt64;
}

# What a snapshot replaces and how to check its bytes (Raft §7).
struct SnapshotMeta {
  # The index of the last entry the snapshot replaces (at least 1).
  lastIndex @0 :UInt64;
  # The term of that entry (at least 1).
  lastTerm @1 :UInt64;
  # The configuration in force at lastIndex, in mioraft's Membership byte encoding (voters,
  # learners and their addresses). Only the chunk at offset 0 carries it; later chunks leave
  # it empty.
  configuration @2 :Data;
  # The length of the snapshot's bytes.
  size @3 :UInt64;
  # crc32c (Castagnoli) of the snapshot's bytes.
  checksum @4 :UInt32;
}

# InstallSnapshot (Raft §7): one chunk of the leader's snapshot, for a follower that needs
# entries the leader has discarded. Chunks go in order of offset; the follower's responses say
# how much it holds, so the leader resumes from there after a lost chunk or a reconnection.
struct InstallSnapshot {
  term @0 :UInt64;
  leaderId @1 :UInt64;
  # Which snapshot (the same in every chunk of it).
  meta @2 :SnapshotMeta;
  # Where `data` starts in the snapshot's bytes; offset + length of data is at most meta.size.
  offset @3 :UInt64;
  # The chunk; the last one ends at meta.size.
  data @4 :Data;
}

struct InstallSnapshotResponse {
  term @0 :UInt64;
  # The lastIndex of the snapshot answered about.
  lastIndex @1 :UInt64;
  # How many leading bytes of that snapshot the follower holds: the next chunk it wants starts
  # here (0: start over).
  received @2 :UInt64;
  # The follower now holds everything up to matchIndex (the snapshot is installed, or its log
  # already covered it).
  done @3 :Bool;
  # When done: the index up to which the follower's log is known to match the leader's.
  matchIndex @4 :UInt64;
}

# A client's request. `requestId` is chosen by the client and echoed in the response.
struct ClientRequest {
  requestId @0 :UInt64;
  union {
    # Append a command to the replicated log outside any session; answered once it is applied.
    # A retry of it may be applied twice: clients that retry use `sessionPropose`.
    propose @1 :Data;
    # Ask the state machine a read-only question. Linearizable: the leader confirms it still
    # leads and waits until it has applied everything committed when the query arrived
    # (ReadIndex, Raft thesis §6.4).
    query @2 :Data;
    # Ask this server about itself (any server answers, leader or not).
    status @3 :Void;
    # Open a client session; answered with `sessionRegistered`.
    registerSession @4 :Void;
    # A command inside a session, applied at most once however often it is retried.
    sessionPropose @5 :SessionProposal;
    # Ask the leader to hand leadership to the server with this id (Raft thesis §3.10);
    # answered with `transferred` once it has, or `rejected` (transferFailed) if it could not.
    transferLeadership @6 :UInt64;
    # Ask the leader to add a server as a voter (Raft thesis §4.1, §4.2.1): it joins as a
    # learner, is caught up in rounds, then promoted. Answered with `membershipChanged` once the
    # promotion is committed, or `rejected` (membershipChangeFailed). Asking for a change already
    # made succeeds at once, so a retry is safe.
    addServer @7 :NewMember;
    # Ask the leader to add a server as a learner: it receives the log but does not vote or
    # count toward commitment. Answered as `addServer` is.
    addLearner @8 :NewMember;
    # Ask the leader to remove the server with this id, voter or learner, possibly the leader
    # itself (it hands over leadership once the change commits, thesis §4.2.2). Answered as
    # `addServer` is.
    removeServer @9 :UInt64;
  }
}

# A server to add to the configuration.
struct NewMember {
  # Its server id (never 0).
  id @0 :UInt64;
  # Where it listens for peers and clients, as "ip:port" (at most 255 bytes). Servers that were
  # not configured with an address for it dial it there.
  address @1 :Text;
}

# Exactly-once proposals (Raft thesis §6.3). A client opens a session, then numbers its requests
# 1, 2, 3, ... and sends one at a time, retrying each with the same number until it gets an answer.
# The cluster remembers, per session, the last number applied and its reply: a retry of an applied
# request is answered from that memory and not applied again.
struct SessionProposal {
  # The id from `sessionRegistered`.
  session @0 :UInt64;
  # 1 for the session's first request, then one more for each next request.
  sequence @1 :UInt64;
  command @2 :Data;
  # When to answer.
  respondWhen @3 :ResponseMode;
}

enum ResponseMode {
  # Once applied, with the state machine's reply (`applied`).
  applied @0;
  # Once committed (durable on a majority), with its index (`committed`); sooner, no reply.
  committed @1;
}

# Why a request was refused.
enum RejectionReason {
  # The leader has too many uncommitted entries (a majority is slow or unreachable): retry later.
  overloaded @0;
  # The command was appended but replaced by another leader's entry: it was not applied, and
  # retrying is safe.
  dropped @1;
  # The request was larger than the server accepts.
  tooLarge @2;
  # The server is shutting down.
  shuttingDown @3;
  # The request could not be understood.
  badRequest @4;
  # The session has already applied a higher sequence number: this request is an old duplicate.
  superseded @5;
  # The server cannot tell whether the command was applied: it installed a snapshot that covers
  # the command's entry. Retrying in the same session is safe (answered exactly once).
  outcomeUnknown @6;
  # A leadership transfer could not be done; the message says why.
  transferFailed @7;
  # A configuration change could not be made (another change is in progress, the new server did
  # not catch up, it would remove the only voter, ...); the message says why and what holds now.
  membershipChangeFailed @8;
}

# A server's view of itself (the fields of mioraft's Metrics).
struct Status {
  serverId @0 :UInt64;
  role @1 :Role;
  currentTerm @2 :UInt64;
  # 0 when no leader is known.
  leaderId @3 :UInt64;
  lastLogIndex @4 :UInt64;
  commitIndex @5 :UInt64;
  lastApplied @6 :UInt64;
  # On the leader: each follower's match index.
  peers @7 :List(PeerStatus);
  # The last index covered by the server's newest snapshot (0: none, Raft §7).
  snapshotIndex @8 :UInt64;
  # The first index its log still holds (1 until compacted).
  firstLogIndex @9 :UInt64;
  # The configuration in force on the server, in mioraft's Membership byte encoding.
  configuration @10 :Data;
}

struct PeerStatus {
  serverId @0 :UInt64;
  matchIndex @1 :UInt64;
}

enum Role {
  follower @0;
  candidate @1;
  leader @2;
  # Receives the log but does not vote: a learner, or a server outside the configuration.
  learner @3;
}

# The answer to one ClientRequest.
struct ClientResponse {
  # The requestId of the request this answers.
  requestId @0 :UInt64;
  union {
    # The command was committed and applied (or the query answered): the state machine's reply.
    applied @1 :Data;
    # This server is not the leader; the leader is `leaderId`, reachable by clients at
    # `leaderAddress` ("host:port"). Nothing was done: retry there.
    notLeader @2 :LeaderHint;
    # No leader is known right now (an election is under way): retry after a short pause.
    unknownLeader @3 :Void;
    # Refused; see the reason. `message` explains in words.
    rejected @4 :Rejection;
    # The answer to a `status` request.
    status @5 :Status;
    # The answer to `registerSession`: the new session's id.
    sessionRegistered @6 :UInt64;
    # A `sessionPropose` with `respondWhen = committed` is committed at this log index.
    committed @7 :UInt64;
    # The state machine refused the command before it entered the log; the bytes are its error.
    # Nothing was appended.
    refused @8 :Data;
    # The session is unknown: it expired (the cluster keeps a bounded number of sessions and
    # drops the least recently used) or never existed. The command was not applied; open a new
    # session to go on.
    sessionExpired @9 :UInt64;
    # Leadership went to the server with this id, as asked.
    transferred @10 :UInt64;
    # The configuration change asked for is committed; its configuration entry is at this log
    # index (for `addServer`: the server now votes).
    membershipChanged @11 :UInt64;
  }
}

struct LeaderHint {
  leaderId @0 :UInt64;
  leaderAddress @1 :Text;
}

struct Rejection {
  reason @0 :RejectionReason;
  message @1 :Text;
}
