package controller

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// The controller does not elect anything: a site's gateways decide among
// themselves and the remote edges follow, through the tunnel, with the
// controller up or down (orchestrator/ha). The controller learns each
// decision from the gateways' heartbeats, records it as an audit event, and
// relays it on bus.SubjectClaims to every edge — a second path, for edges
// the tunnel messages missed.

// claimBook is the newest claim reported for each site. It owns its lock.
type claimBook struct {
	mu     sync.Mutex
	claims map[string]bus.Claim
}

func newClaimBook() *claimBook { return &claimBook{claims: map[string]bus.Claim{}} }

// record keeps cl when it is newer than the claim known for its site,
// returning the one it replaces (known false when there was none) and
// whether it was kept.
func (b *claimBook) record(cl bus.Claim) (old bus.Claim, known, kept bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, known = b.claims[cl.Site]
	if known && !cl.Newer(old) {
		return old, known, false
	}
	b.claims[cl.Site] = cl
	return old, known, true
}

// of returns the known claim of site (the zero Claim when none).
func (b *claimBook) of(site string) bus.Claim {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.claims[site]
}

// sorted returns the known claims of the sites keep accepts, by site name.
func (b *claimBook) sorted(keep func(site string) bool) []bus.Claim {
	b.mu.Lock()
	var out []bus.Claim
	for name, cl := range b.claims {
		if keep(name) {
			out = append(out, cl)
		}
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	return out
}

// observeClaim records a claim a gateway reported, when it is newer than
// the one known for its site: an audit event with the reason, and a relay.
func (c *Controller) observeClaim(cl bus.Claim) {
	if cl.Site == "" || cl.Gateway == "" || cl.Epoch == 0 {
		return
	}
	old, known, kept := c.claims.record(cl)
	if !kept {
		return
	}

	detail := fmt.Sprintf("%s active in site %s at epoch %d", cl.Gateway, cl.Site, cl.Epoch)
	switch {
	case !known:
		detail += " (first report since the controller started)"
	case old.Gateway != cl.Gateway:
		detail += " (was " + old.Gateway + ")"
	}
	if cl.Reason != "" {
		detail += ": " + cl.Reason
	}
	if !cl.Time.IsZero() {
		detail += " at " + cl.Time.UTC().Format(time.RFC3339Nano)
	}
	c.log.Info("site role change", "site", cl.Site, "active", cl.Gateway, "epoch", cl.Epoch, "reason", cl.Reason)
	if c.reporter() {
		c.event(bus.EventRole, cl.Gateway, 0, detail)
	}
	c.publishClaims()
}

// publishClaims relays the known claims of the sites that exist.
func (c *Controller) publishClaims() {
	sites := mesh.Sites(c.view.now().edges)
	out := bus.Claims{Claims: c.claims.sorted(func(site string) bool {
		s, ok := sites[site]
		return ok && s.Explicit()
	})}
	if len(out.Claims) == 0 {
		return
	}
	c.publish(bus.SubjectClaims, out)
}

// roles returns every edge's role: the active gateway of each site under
// its known claim, every other gateway standby.
func (c *Controller) roles(edges map[string]bus.Edge) map[string]string {
	out := make(map[string]string, len(edges))
	for _, s := range mesh.Sites(edges) {
		active := s.Active(c.claims.of(s.Name)).Name
		for _, g := range s.Gateways {
			out[g.Name] = bus.RoleStandby
			if g.Name == active {
				out[g.Name] = bus.RoleActive
			}
		}
	}
	return out
}
