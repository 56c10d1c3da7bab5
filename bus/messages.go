package bus

import (
	"net/netip"
	"slices"
	"time"
)

// Edge is one network's gateway as the controller stores and publishes it.
// The JSON names follow the reference walkthrough ("host_addr", "cidr").
type Edge struct {
	Name     string         `json:"name"`
	Comment  string         `json:"comment"`
	CIDR     netip.Prefix   `json:"cidr"`
	HostAddr netip.AddrPort `json:"host_addr"`
	// ExtraCIDRs are further networks behind the same edge (k8s pod and
	// service ranges, secondary VPC ranges).
	ExtraCIDRs []netip.Prefix `json:"extra_cidrs,omitempty"`
	// Site names the network this edge is one gateway of (gateway HA):
	// edges with the same Site carry the same CIDRs and one of them is
	// active at a time. Empty: the edge is a site of its own (SiteName).
	Site string `json:"site,omitempty"`
	// Priority ranks the gateways of a site: a gateway with a higher
	// priority takes over from a healthy active one; 0 without a site.
	Priority int `json:"priority,omitempty"`
	// VIP is the site's virtual IP (the cloud's HaVip), held by its active
	// gateway only; invalid when the site has none.
	VIP netip.Addr `json:"vip,omitzero"`
	// VIP6 is the site's IPv6 virtual IP, the same for IPv6: a site with
	// IPv6 CIDRs may have one beside VIP (a VIP per family), or alone.
	VIP6 netip.Addr `json:"vip6,omitzero"`
	// Mesh is the edge's mesh address (in 240.207.0.0/16), which the
	// controller gives it when it is added and keeps across re-adds: the
	// address its peers' encrypted VXLAN goes to inside WireGuard.
	Mesh netip.Addr `json:"mesh_addr,omitzero"`
	// WireGuardKey is the WireGuard public key pinned for the edge (base64),
	// the first one its heartbeats named; another is refused until the edge
	// is deleted and added again. Empty: none seen yet.
	WireGuardKey string `json:"wireguard_key,omitempty"`
	// Plaintext: the edge's last word was that it does not encrypt
	// (encryption = "none", or no WireGuard in its kernel).
	Plaintext bool `json:"plaintext,omitempty"`
	// Revision is the store revision of the edge's last change.
	Revision uint64 `json:"revision"`
}

// Prefixes returns every network behind the edge, primary CIDR first.
func (e Edge) Prefixes() []netip.Prefix {
	return append([]netip.Prefix{e.CIDR}, e.ExtraCIDRs...)
}

// SnapshotRequest is the body of a request on SubjectSnapshot.
type SnapshotRequest struct {
	// Have is the revision the requester holds, 0 for none: when it is the
	// current one the reply is a short Unchanged snapshot, so a thousand
	// edges reconnecting after a controller restart do not each download
	// the whole set.
	Have uint64 `json:"have,omitempty"`
	// Want is the latest revision the requester has heard of (from a delta
	// or a hello): a controller of a cluster that has not seen it yet waits
	// a moment to catch up before answering, rather than send an older set.
	Want uint64 `json:"want,omitempty"`
	// Accept lists what the requester takes besides a plain whole set:
	// AcceptZstd (the reply compressed, marked by the EncodingHeader) and
	// AcceptDeltas (the changes since Have instead of the whole set, when
	// the controller still has them). A requester that lists nothing (an
	// agent older than these) gets the plain whole set, and so does every
	// requester of a controller older than these: they ignore the field.
	Accept []string `json:"accept,omitempty"`
}

// What a SnapshotRequest may Accept.
const (
	AcceptZstd   = "zstd"
	AcceptDeltas = "deltas"
)

// Accepts reports whether the request lists what.
func (r SnapshotRequest) Accepts(what string) bool { return slices.Contains(r.Accept, what) }

// Snapshot is the whole edge set at one revision, the reply on SubjectSnapshot.
type Snapshot struct {
	Revision uint64 `json:"revision"`
	Edges    []Edge `json:"edges"`
	// Unchanged replies to a request whose Have is Revision: Edges is
	// left out, the requester's set is current.
	Unchanged bool `json:"unchanged,omitempty"`
	// Since is set on a reply to a request that accepted deltas and whose
	// Have the controller still had the changes since: Edges is left out,
	// and Deltas take the requester's set from revision Since (its Have)
	// to Revision, in order.
	Since  uint64  `json:"since,omitempty"`
	Deltas []Delta `json:"deltas,omitempty"`
}

// Delta operations.
const (
	OpPut    = "put"
	OpDelete = "delete"
)

// Delta is one change to the edge set, published on SubjectDelta. A receiver
// at revision Prev applies it and moves to Revision; a receiver at any other
// revision has missed something and fetches a Snapshot instead.
type Delta struct {
	Revision uint64 `json:"revision"`
	Prev     uint64 `json:"prev"`
	Op       string `json:"op"`
	// Edge is the new value for OpPut; only Name is set for OpDelete.
	Edge Edge `json:"edge"`
}

// Hello is the controller's periodic announcement on SubjectHello: edges
// whose applied revision differs fetch a snapshot, so a lost delta is
// repaired within one interval.
type Hello struct {
	Revision uint64    `json:"revision"`
	Started  time.Time `json:"started"`
}

// Edge agent states reported in Status.State.
const (
	StateReady         = "ready"          // applied the current set
	StateNotRegistered = "not-registered" // connected, but no edge of this name exists
	StateError         = "error"          // the last reconcile failed
)

// Status is an edge agent's heartbeat, published on StatusSubject(name)
// every HeartbeatInterval and after each reconcile.
type Status struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// AppliedRevision is the revision of the edge set the kernel matches;
	// AppliedAt is when (the edge's clock) it first did.
	AppliedRevision uint64    `json:"applied_revision"`
	AppliedAt       time.Time `json:"applied_at,omitzero"`
	// Changes is the number of kernel changes the last reconcile made.
	Changes int `json:"changes"`
	// Error is the last reconcile error, empty when it succeeded.
	Error string `json:"error,omitempty"`
	// Conflicts are foreign kernel objects that overlap the mesh and were
	// left alone (e.g. someone else's route to a peer's CIDR).
	Conflicts []string `json:"conflicts,omitempty"`
	// Site is this gateway's view of its site; nil for an edge without one.
	Site *SiteStatus `json:"site,omitempty"`
	// Probes is the data-plane health of every remote gateway, measured
	// through the tunnel, sorted by name.
	Probes []PeerProbe `json:"probes,omitempty"`
	// WireGuardKey is the public key this edge encrypts with (base64);
	// empty when it does not, and then Plaintext says why.
	WireGuardKey string `json:"wireguard_key,omitempty"`
	Plaintext    string `json:"plaintext,omitempty"`
	// RotatingFrom is set while the edge rotates its WireGuard key: the
	// public key it rotates from. The controller moves the pin from that
	// key to WireGuardKey; any other pinned key still refuses it. The
	// heartbeat's subject is the only one the edge's identity may publish
	// on (embedded.EdgePermissions), so it proves who asks.
	RotatingFrom string `json:"rotating_from,omitempty"`
	// Encryption is the edge's encryption setting (prefer, required, none).
	Encryption string `json:"encryption,omitempty"`
	// Links says, for each peer that does not run encrypted with this
	// edge, how the link runs: "plaintext: <why>" or "no path: <why>".
	Links   map[string]string `json:"links,omitempty"`
	Mode    string            `json:"mode,omitempty"`
	Version string            `json:"version,omitempty"`
	Time    time.Time         `json:"time"`
}

// Audit event kinds (the last-but-one token of EventSubject).
const (
	EventEdgeAdded   = "added"
	EventEdgeUpdated = "updated"
	EventEdgeDeleted = "deleted"
	EventEdgeOnline  = "online"
	EventEdgeOffline = "offline"
	EventKeyPinned   = "key-pinned"
	EventKeyRefused  = "key-refused"
	// EventKeyRotated: the pin moved to the key the edge rotated to.
	EventKeyRotated = "key-rotated"
	// EventRole: a site's active gateway changed (Edge is the new active
	// one, Detail the reason).
	EventRole = "role"
)

// Event is one audit record, kept in AuditStream and published on
// EventSubject(kind, edge).
type Event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Edge     string    `json:"edge"`
	Revision uint64    `json:"revision,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	// Actor is who asked for an API change; nil for what the controller
	// saw by itself (heartbeats, key pins).
	Actor *Actor `json:"actor,omitempty"`
	// Seq is the event's sequence in AuditStream, filled in by readers.
	Seq uint64 `json:"seq,omitempty"`
}

// Actor names the client of an API change.
type Actor struct {
	// Remote is the client's address as the API saw it.
	Remote string `json:"remote"`
	// Token names the bearer token presented, by fingerprint (never the
	// token itself); empty when none was presented (loopback).
	Token string `json:"token,omitempty"`
}
