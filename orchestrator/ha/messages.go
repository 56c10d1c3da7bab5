package ha

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cframe/cframe/bus"
)

// Message kinds.
const (
	// KindHello: a gateway to the other gateways of its site, every
	// Timing.Hello: its LAN address and the claim in force as it knows it.
	// A gateway of a site with several also sends its LAN address to the
	// remote gateways every Timing.Refresh: the address they probe
	// through the site's active gateway (WhyForwarding).
	KindHello = "hello"
	// KindClaim: a candidate asks the witnesses (the remote gateways) to
	// agree that it takes over; Claim is the proposal, Prev the gateway
	// it replaces, Why the trigger.
	KindClaim = "claim"
	// KindVote: a witness's answer to a KindClaim (Accept, Note).
	KindVote = "vote"
	// KindCommit: a decided claim, sent by the new active gateway to
	// every gateway and repeated every Timing.Refresh while it is active.
	KindCommit = "commit"
	// KindCurrent: the answer to a commit, the claim in force at the
	// receiver: an acknowledgement, or news for a gateway that is behind.
	KindCurrent = "current"
	// KindDown: a remote gateway tells a site's other gateways that the
	// site's active gateway (Prev) stopped answering its probes; with Why
	// WhyForwarding it tells one standby that its probes through the
	// active gateway to that standby's LAN address stopped being answered
	// while both answer through the tunnel.
	KindDown = "down"
	// KindSuspect: a standby tells the witnesses that the active gateway
	// (Prev) went quiet on the LAN, before it is sure: they start probing
	// it urgently, so that the proposal that may follow finds its answer
	// ready.
	KindSuspect = "suspect"
)

// Takeover triggers (Message.Why), which decide what a witness checks.
const (
	// WhyInitial: the site has no claim yet.
	WhyInitial = "initial"
	// WhyDeleted: the active gateway is no longer one of the site's.
	WhyDeleted = "deleted"
	// WhyDown: the active gateway stopped answering (on the LAN, or from
	// the remote gateways); a witness agrees only when it cannot reach it
	// either.
	WhyDown = "down"
	// WhyPriority: a gateway with a higher priority takes over from a
	// healthy one; a witness agrees only when it has been stable long
	// enough (no flapping gateway is re-elected in a loop).
	WhyPriority = "priority"
	// WhyForwarding: the active gateway answers but does not forward —
	// the remote gateways' probes through it to the candidate's LAN
	// address go unanswered while both answer through the tunnel, and the
	// candidate reaches it on the LAN; a witness agrees only when its own
	// probes through it to the candidate went unanswered too.
	WhyForwarding = "forwarding"
)

// Message is one HA message between agents, carried through the tunnel
// (Transport) and authenticated with the join secret.
type Message struct {
	Kind  string    `json:"kind"`
	From  string    `json:"from"`
	Claim bus.Claim `json:"claim"`
	// Prev is the gateway a claim replaces (KindClaim), or the one that
	// stopped answering or forwarding (KindDown).
	Prev string `json:"prev,omitempty"`
	// Why is the trigger of a KindClaim, and what a KindDown reports
	// (empty: WhyDown).
	Why string `json:"why,omitempty"`
	// Accept and Note answer a KindClaim.
	Accept bool   `json:"accept,omitempty"`
	Note   string `json:"note,omitempty"`
	// LAN is the sender's LAN address (KindHello).
	LAN netip.Addr `json:"lan,omitzero"`
	// Priority is the sender's priority (KindHello).
	Priority int `json:"priority,omitempty"`
}

// Envelope is a message and the gateway it goes to: through the tunnel,
// or when LAN is valid to that address on the site's LAN (the gateways of
// one site talk both ways, so that one cut off from the others' tunnels
// still hears the news).
type Envelope struct {
	To  string
	LAN netip.Addr
	Msg Message
}

// MaxMessage bounds an encoded message.
const MaxMessage = 2048

const tagLen = sha256.Size

// Codec seals and opens messages with an HMAC-SHA256 under a key derived
// from the join secret: only the agents of one mesh can speak HA to each
// other.
type Codec struct{ key []byte }

// NewCodec derives the message key from the join secret.
func NewCodec(secret string) Codec {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("cframe ha messages v1"))
	return Codec{key: m.Sum(nil)}
}

// Seal encodes m and appends its tag.
func (c Codec) Seal(m Message) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b)+tagLen > MaxMessage {
		return nil, fmt.Errorf("ha: %s message of %d bytes is too long", m.Kind, len(b))
	}
	h := hmac.New(sha256.New, c.key)
	h.Write(b)
	return h.Sum(b), nil
}

// ErrForged is a message whose tag does not match.
var ErrForged = errors.New("ha: message not authenticated by the join secret")

// Open checks b's tag and decodes the message.
func (c Codec) Open(b []byte) (Message, error) {
	var m Message
	if len(b) <= tagLen {
		return m, ErrForged
	}
	body, tag := b[:len(b)-tagLen], b[len(b)-tagLen:]
	h := hmac.New(sha256.New, c.key)
	h.Write(body)
	if !hmac.Equal(tag, h.Sum(nil)) {
		return m, ErrForged
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return m, fmt.Errorf("ha: malformed message: %w", err)
	}
	if bus.CheckName(m.From) != nil {
		return m, fmt.Errorf("ha: message from an invalid name %q", m.From)
	}
	return m, nil
}
