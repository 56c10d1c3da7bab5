package bus

import (
	"net/netip"
	"strings"
	"time"
)

// SubjectClaims carries the controller's Claims: every site's claim in
// force, on each change and every HelloInterval. It is one of the two
// ways a claim travels (the agents also pass claims to each other through
// the tunnel, which works while the controller is down).
const SubjectClaims = prefix + "sites.claims"

// Gateway roles within a site.
const (
	RoleActive  = "active"
	RoleStandby = "standby"
)

// SiteName is the site the edge is a gateway of: its Site, or for an edge
// without one its own name (a site of its own).
func (e Edge) SiteName() string {
	if e.Site != "" {
		return e.Site
	}
	return e.Name
}

// Claim is a site's decision that Gateway is its active gateway. Every
// decision gets a higher Epoch than the one it replaces, so a receiver
// keeps the newest claim it has seen (Newer) and ignores stale ones: an
// old active gateway's claim can never win back the remote ends.
type Claim struct {
	Site    string `json:"site"`
	Gateway string `json:"gateway"`
	Epoch   uint64 `json:"epoch"`
	// Priority is the gateway's priority when it claimed; it breaks the
	// tie between two claims of one epoch.
	Priority int `json:"priority"`
	// Reason says why the gateway became active, for the audit trail.
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}

// Newer reports whether c replaces o: a higher epoch, or in the same
// epoch a higher priority, then the lower gateway name. Any two claims are
// ordered, so every receiver settles on the same one.
func (c Claim) Newer(o Claim) bool {
	if c.Epoch != o.Epoch {
		return c.Epoch > o.Epoch
	}
	if c.Priority != o.Priority {
		return c.Priority > o.Priority
	}
	return strings.Compare(c.Gateway, o.Gateway) < 0
}

// Claims is the body of SubjectClaims.
type Claims struct {
	Claims []Claim `json:"claims"`
}

// SiteStatus is a gateway's view of its site, part of its Status.
type SiteStatus struct {
	Name string `json:"name"`
	// Role is this gateway's: RoleActive or RoleStandby.
	Role string `json:"role"`
	// Claim is the claim in force as this gateway knows it.
	Claim Claim `json:"claim"`
	// LANAddr is the gateway's address on the site's LAN.
	LANAddr netip.Addr `json:"lan_addr,omitzero"`
	// VIP tells whether the gateway holds the site's VIP.
	VIP bool `json:"vip,omitempty"`
}

// PeerProbe is the data-plane health of one remote gateway: whether it
// answers probes sent through the tunnel, the round-trip time of the last
// answer, and since when Up has had its value.
type PeerProbe struct {
	Name  string        `json:"name"`
	Up    bool          `json:"up"`
	RTT   time.Duration `json:"rtt"`
	Since time.Time     `json:"since"`
}
