package controller

import (
	"fmt"
	"sort"
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

// observeClaim records a claim a gateway reported, when it is newer than
// the one known for its site: an audit event with the reason, and a relay.
func (c *Controller) observeClaim(cl bus.Claim) {
	if cl.Site == "" || cl.Gateway == "" || cl.Epoch == 0 {
		return
	}
	c.claimMu.Lock()
	old, known := c.claims[cl.Site]
	if known && !cl.Newer(old) {
		c.claimMu.Unlock()
		return
	}
	c.claims[cl.Site] = cl
	c.claimMu.Unlock()

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
	c.mu.RLock()
	sites := mesh.Sites(c.view.edges)
	c.mu.RUnlock()
	var out bus.Claims
	c.claimMu.Lock()
	for name, cl := range c.claims {
		if s, ok := sites[name]; ok && s.Explicit() {
			out.Claims = append(out.Claims, cl)
		}
	}
	c.claimMu.Unlock()
	if len(out.Claims) == 0 {
		return
	}
	sort.Slice(out.Claims, func(i, j int) bool { return out.Claims[i].Site < out.Claims[j].Site })
	c.publish(bus.SubjectClaims, out)
}

// claimOf returns the known claim of site (the zero Claim when none).
func (c *Controller) claimOf(site string) bus.Claim {
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	return c.claims[site]
}

// roles returns every edge's role: the active gateway of each site under
// its known claim, every other gateway standby.
func (c *Controller) roles(edges map[string]bus.Edge) map[string]string {
	out := make(map[string]string, len(edges))
	for _, s := range mesh.Sites(edges) {
		active := s.Active(c.claimOf(s.Name)).Name
		for _, g := range s.Gateways {
			out[g.Name] = bus.RoleStandby
			if g.Name == active {
				out[g.Name] = bus.RoleActive
			}
		}
	}
	return out
}
