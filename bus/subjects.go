// Package bus is the wire contract between the controller, the edge agents
// and audit subscribers: every NATS subject and message type (versioned under
// "cframe.v1"), how clients trust the controller (Trust: a certificate that
// proves the join secret, a pinned CA or a fingerprint), the edge's
// identity and join proof, and the client-side helpers edges, cframectl and
// audit readers use (Follow, FollowEvents, ClientOptions). The embedded NATS
// server that the controller runs is package bus/embedded: the edge and
// cframectl do not link it.
//
// Flow: the controller answers SubjectSnapshot requests with the whole edge
// set (zstd-compressed for a requester that accepts it) or the changes since
// the revision the requester holds, publishes each change on SubjectDelta
// (linked to the previous revision so a receiver can tell when it missed
// one), announces its current revision on SubjectHello, and follows the
// edges' heartbeats on StatusSubject(name).
// Every change is also an audit Event on EventSubject(kind, name).
package bus

import "time"

// Subjects of protocol version 1.
const (
	prefix = "cframe.v1."

	// QueueControllers is the queue group in which the controllers of a
	// cluster answer requests (snapshots, audit replays): one answers each.
	QueueControllers = "controllers"

	// SubjectSnapshot is a request subject; the reply is a Snapshot.
	SubjectSnapshot = prefix + "set.snapshot"
	// SubjectDelta carries each Delta of the edge set.
	SubjectDelta = prefix + "set.delta"
	// SubjectHello carries the controller's periodic Hello.
	SubjectHello = prefix + "set.hello"
	// SubjectStatusAll matches every edge's status subject.
	SubjectStatusAll = prefix + "status.*"
	// SubjectEventsAll matches every audit event.
	SubjectEventsAll = prefix + "events.>"
)

// StatusSubject is the only subject edge name may publish its Status on.
func StatusSubject(name string) string { return prefix + "status." + name }

// EventSubject is where audit events of one kind about one edge appear.
func EventSubject(kind, edge string) string { return prefix + "events." + kind + "." + edge }

// InboxPrefix is the reply-subject prefix of edge name's requests; an edge
// may subscribe to its own inbox only.
func InboxPrefix(name string) string { return "_INBOX_cframe." + name }

// Timing shared by both ends.
const (
	// HeartbeatInterval is how often an edge publishes its Status.
	HeartbeatInterval = 2 * time.Second
	// StatusJitter bounds the random delay before an edge reports a change
	// it applied, so a thousand edges applying one delta do not all report
	// in the same millisecond while the controller is still delivering it.
	StatusJitter = 200 * time.Millisecond
	// OfflineAfter is how long without a heartbeat makes an edge offline.
	OfflineAfter = 3 * HeartbeatInterval
	// HelloInterval is how often the controller announces its revision.
	HelloInterval = 5 * time.Second
)

// TLSTimeout bounds a TLS handshake on the bus and the API.
const TLSTimeout = 5 * time.Second
