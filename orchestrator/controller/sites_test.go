package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
)

// Gateways of a site: the API's site fields, refusals that store nothing,
// roles from the gateways' reports, audit events and the claims relay.
func TestSites(t *testing.T) {
	r := start(t, testConfig(t))
	addAll(t, r, walkthrough[1:]...) // hk-1, gz-3
	for _, body := range []string{
		`{"name": "sz-1", "hostaddr": "198.51.100.10:58423", "cidr": "172.18.0.0/16", "site": "sz", "vip": "172.18.171.250"}`,
		`{"name": "sz-2", "hostaddr": "198.51.100.11:58423", "cidr": "172.18.0.0/16", "site": "sz", "priority": 100, "vip": "172.18.171.250"}`,
	} {
		if code, resp := post(t, r, api.PathAdd, body); code != http.StatusOK {
			t.Fatalf("add %s: %d %s", body, code, resp)
		}
	}
	before := r.Topology()
	sz2 := `"name": "sz-2", "hostaddr": "198.51.100.11:58423", "cidr": "172.18.0.0/16"`
	for _, tt := range []struct {
		body string
		code int
		want string
	}{
		{`{` + sz2 + `, "site": "sz", "vip": "172.18.171.250", "preempt": true}`, 400, `unknown field "preempt"`},
		{`{` + sz2 + `, "site": "sz", "priority": "high"}`, 400, "malformed JSON"},
		{`{` + sz2 + `, "site": "sz", "priority": 0, "vip": "172.18.171.250"}`, 400, "priority 0 is out of range"},
		{`{` + sz2 + `, "site": "sz", "priority": 1000, "vip": "172.18.171.250"}`, 400, "priority 1000 is out of range"},
		{`{` + sz2 + `, "site": "sz", "vip": "172.19.0.1"}`, 400, "not inside the site's primary cidr 172.18.0.0/16"},
		{`{` + sz2 + `, "site": "Sz", "vip": "172.18.171.250"}`, 400, `site "Sz" is invalid`},
		{`{` + sz2 + `, "vip": "172.18.171.250"}`, 400, "vip needs a site"},
		{`{` + sz2 + `, "site": "sz", "vip": "172.18.171.251"}`, 409, "gives vip 172.18.171.251 but gateway sz-1 has 172.18.171.250"},
		{`{` + sz2 + `, "extra_cidrs": ["10.244.0.0/16"], "site": "sz", "vip": "172.18.171.250"}`, 409,
			"site sz: edge sz-2 must carry the same cidrs as gateway sz-1 (172.18.0.0/16): it has 10.244.0.0/16, which sz-1 has not"},
		{`{"name": "sz-3", "hostaddr": "198.51.100.12:58423", "cidr": "172.18.0.0/17", "site": "sz", "vip": "172.18.71.250"}`, 409,
			"its primary cidr is 172.18.0.0/17, not 172.18.0.0/16"},
		{`{"name": "sz-3", "hostaddr": "198.51.100.12:58423", "cidr": "172.18.0.0/16", "vip": "172.18.171.250", "site": "hk-1"}`, 409,
			"cidr 172.18.0.0/16 of edge sz-3 overlaps cidr 172.18.0.0/16 of edge sz-1"},
	} {
		code, body := post(t, r, api.PathAdd, tt.body)
		var e api.ErrorBody
		if err := json.Unmarshal([]byte(body), &e); err != nil || code != tt.code || !strings.Contains(e.Error, tt.want) {
			t.Errorf("POST %s = %d %s, want %d with error %q", tt.body, code, body, tt.code, tt.want)
		}
	}
	if after := r.Topology(); after.Revision != before.Revision || len(after.Edges) != 4 {
		t.Fatalf("refused requests changed the state: revision %d -> %d", before.Revision, after.Revision)
	}

	role := func(name string) string {
		for _, e := range r.ListEdges() {
			if e.Name == name {
				return e.Role
			}
		}
		return "missing"
	}
	// No claim reported yet: the preferred gateway (equal priorities, first name).
	if role("sz-1") != bus.RoleActive || role("sz-2") != bus.RoleStandby || role("hk-1") != bus.RoleActive {
		t.Fatalf("roles before any claim: %+v", r.ListEdges())
	}
	list, _ := r.api.List(context.Background())
	if e := list[3]; e.Name != "sz-2" || e.Site != "sz" || e.Priority != 100 || e.VIP != "172.18.171.250" {
		t.Fatalf("edge list shows %+v", e)
	}

	// An audit subscriber and an edge following the claims relay.
	creds := r.EventCredentials()
	audit, err := nats.Connect("nats://"+r.NATSAddr().String(), append(bus.ClientOptions(bus.Trust{Secret: r.Secret()}, nil), nats.UserInfo(creds.User, creds.Password))...)
	if err != nil {
		t.Fatal(err)
	}
	defer audit.Close()
	events := make(chan *nats.Msg, 16)
	if _, err := audit.ChanSubscribe(bus.EventSubject(bus.EventRole, "*"), events); err != nil {
		t.Fatal(err)
	}
	hk, _ := followEdge(t, r, "hk-1", t.TempDir())
	relayed := make(chan *nats.Msg, 16)
	if _, err := hk.ChanSubscribe(bus.SubjectClaims, relayed); err != nil {
		t.Fatal(err)
	}
	audit.Flush()
	hk.Flush()

	// sz-2 reports that it took over.
	nc, _ := followEdge(t, r, "sz-2", t.TempDir())
	claim := bus.Claim{Site: "sz", Gateway: "sz-2", Epoch: 2, Priority: 100, Reason: "sz-1 unreachable on the LAN for 150ms", Time: time.Now()}
	report := func(c bus.Claim) {
		st := bus.Status{Name: "sz-2", State: bus.StateReady, Site: &bus.SiteStatus{Name: "sz", Role: bus.RoleActive, Claim: c}}
		if err := bus.Publish(nc, bus.StatusSubject("sz-2"), st); err != nil {
			t.Fatal(err)
		}
	}
	report(claim)
	waitFor(t, 5*time.Second, func() error {
		if role("sz-2") != bus.RoleActive || role("sz-1") != bus.RoleStandby {
			return fmt.Errorf("roles: sz-1 %s, sz-2 %s", role("sz-1"), role("sz-2"))
		}
		return nil
	})
	ev := next(t, events)
	var e bus.Event
	if err := json.Unmarshal(ev.Data, &e); err != nil || e.Kind != bus.EventRole || e.Edge != "sz-2" ||
		!strings.Contains(e.Detail, "sz-2 active in site sz at epoch 2") || !strings.Contains(e.Detail, "unreachable on the LAN") {
		t.Fatalf("role event = %s (%v)", ev.Data, err)
	}
	var cl bus.Claims
	if err := json.Unmarshal(next(t, relayed).Data, &cl); err != nil || len(cl.Claims) != 1 || cl.Claims[0].Gateway != "sz-2" || cl.Claims[0].Epoch != 2 {
		t.Fatalf("relayed claims = %+v (%v)", cl, err)
	}
	topo := r.Topology()
	var site api.TopologySite
	for _, s := range topo.Sites {
		if s.Name == "sz" {
			site = s
		}
	}
	if len(topo.Sites) != 3 || site.Active != "sz-2" || site.Epoch != 2 || site.VIP != "172.18.171.250" || len(site.Gateways) != 2 || site.Since == nil {
		t.Fatalf("topology sites = %+v", topo.Sites)
	}

	// A stale claim (an old active gateway's) changes nothing and is not audited.
	report(bus.Claim{Site: "sz", Gateway: "sz-1", Epoch: 1, Priority: 100})
	// A later one is.
	report(bus.Claim{Site: "sz", Gateway: "sz-1", Epoch: 3, Priority: 100, Reason: "sz-2 deleted"})
	if err := json.Unmarshal(next(t, events).Data, &e); err != nil || e.Edge != "sz-1" || !strings.Contains(e.Detail, "epoch 3 (was sz-2)") {
		t.Fatalf("second role event = %+v (%v)", e, err)
	}
	if role("sz-1") != bus.RoleActive {
		t.Fatalf("sz-1 is %s after the epoch-3 claim", role("sz-1"))
	}
}

func next(t *testing.T, ch <-chan *nats.Msg) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("nothing arrived")
		return nil
	}
}
