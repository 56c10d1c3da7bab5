package embedded

import (
	"sync"
	"time"
	_ "unsafe" // go:linkname
)

// Raft timings of a controller cluster. JetStream replicates the store and
// its own metadata with Raft; after the leader of a group dies, a follower
// stands for election once it has heard nothing for a random election
// timeout, and the group accepts writes again when a new leader is elected.
// nats-server's defaults (heartbeat 1 s, election timeout 4-9 s, a leader
// gives up after 10 s without a quorum) put the first accepted write 4 to
// 10 s after a controller dies. The server has no option for them (none in
// v2.15): they are package variables (its own test suite lowers them the
// same way), so cframe sets them through go:linkname once, before the first
// clustered server starts. These values suit controllers a few tens of
// milliseconds apart, as across cloud regions.
//
// go:linkname checks nothing: should a nats-server release rename one of
// these variables, the build still succeeds and the name becomes a new
// variable of its own, leaving the defaults in force; should one change
// its type, the write corrupts memory. TestRaftTuningTakesEffect (kill -9
// of the metadata leader of three servers, a new one elected sooner than
// the defaults allow) fails in the first case; read these variables in
// nats-server's raft.go on every upgrade for the second.
const (
	// RaftHeartbeat is how often a leader tells its followers it is alive.
	RaftHeartbeat = 250 * time.Millisecond
	// RaftElectionMin and RaftElectionMax bound the random silence after
	// which a follower stands for election.
	RaftElectionMin = time.Second
	RaftElectionMax = 2 * time.Second
	// RaftLostQuorum is how long a leader without answers from a majority
	// keeps leading; it is checked every RaftLostQuorumCheck.
	RaftLostQuorum      = 3 * time.Second
	RaftLostQuorumCheck = time.Second
)

//go:linkname raftHeartbeat github.com/nats-io/nats-server/v2/server.hbInterval
var raftHeartbeat time.Duration

//go:linkname raftElectionMin github.com/nats-io/nats-server/v2/server.minElectionTimeout
var raftElectionMin time.Duration

//go:linkname raftElectionMax github.com/nats-io/nats-server/v2/server.maxElectionTimeout
var raftElectionMax time.Duration

//go:linkname raftLostQuorum github.com/nats-io/nats-server/v2/server.lostQuorumInterval
var raftLostQuorum time.Duration

//go:linkname raftLostQuorumCheck github.com/nats-io/nats-server/v2/server.lostQuorumCheck
var raftLostQuorumCheck time.Duration

var tuneRaftOnce sync.Once

// tuneRaft applies the cluster's Raft timings (process-wide, once).
func tuneRaft() {
	tuneRaftOnce.Do(func() {
		raftHeartbeat = RaftHeartbeat
		raftElectionMin, raftElectionMax = RaftElectionMin, RaftElectionMax
		raftLostQuorum, raftLostQuorumCheck = RaftLostQuorum, RaftLostQuorumCheck
	})
}
