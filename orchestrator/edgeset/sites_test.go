package edgeset

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cframe/cframe/bus"
)

func TestValidateSite(t *testing.T) {
	prio := func(p int) *int { return &p }
	ok := Spec{Name: "sz-1", HostAddr: "198.51.100.10:58423", CIDR: "172.18.0.0/16", Site: "sz"}
	with := func(f func(*Spec)) Spec { s := ok; f(&s); return s }
	tests := []struct {
		name     string
		spec     Spec
		want     string // substring of the error; "" means valid
		priority int
		vip      string
	}{
		{"site only: default priority", ok, "", DefaultPriority, ""},
		{"priority and vip", with(func(s *Spec) { s.Priority, s.VIP = prio(200), "172.18.171.250" }), "", 200, "172.18.171.250"},
		{"lowest priority", with(func(s *Spec) { s.Priority = prio(MinPriority) }), "", MinPriority, ""},
		{"highest priority", with(func(s *Spec) { s.Priority = prio(MaxPriority) }), "", MaxPriority, ""},
		{"no site at all", with(func(s *Spec) { s.Site = "" }), "", 0, ""},
		{"bad site name", with(func(s *Spec) { s.Site = "SZ" }), `site "SZ" is invalid`, 0, ""},
		{"site with a dot", with(func(s *Spec) { s.Site = "sz.a" }), `site "sz.a" is invalid`, 0, ""},
		{"priority zero", with(func(s *Spec) { s.Priority = prio(0) }), "priority 0 is out of range (1-255", 0, ""},
		{"priority negative", with(func(s *Spec) { s.Priority = prio(-5) }), "out of range", 0, ""},
		{"priority too high", with(func(s *Spec) { s.Priority = prio(256) }), "priority 256 is out of range", 0, ""},
		{"priority without site", with(func(s *Spec) { s.Site, s.Priority = "", prio(200) }), "priority needs a site", 0, ""},
		{"vip without site", with(func(s *Spec) { s.Site, s.VIP = "", "172.18.171.250" }), "vip needs a site", 0, ""},
		{"vip outside the cidr", with(func(s *Spec) { s.VIP = "172.19.0.1" }), "vip 172.19.0.1 is not inside the site's primary cidr 172.18.0.0/16", 0, ""},
		{"vip in an extra cidr", with(func(s *Spec) { s.ExtraCIDRs, s.VIP = []string{"10.244.0.0/16"}, "10.244.0.5" }), "not inside the site's primary cidr", 0, ""},
		{"vip garbage", with(func(s *Spec) { s.VIP = "vip" }), `vip "vip" is not an IPv4 address`, 0, ""},
		{"vip ipv6", with(func(s *Spec) { s.VIP = "fd00::1" }), "not an IPv4 address (like \"172.18.171.250\"); an IPv6 VIP is vip6", 0, ""},
		{"vip with prefix", with(func(s *Spec) { s.VIP = "172.18.171.250/32" }), "not an IPv4 address", 0, ""},
		{"vip network address", with(func(s *Spec) { s.VIP = "172.18.0.0" }), "network or broadcast", 0, ""},
		{"vip broadcast address", with(func(s *Spec) { s.VIP = "172.18.255.255" }), "network or broadcast", 0, ""},
		{"vip per family", with(func(s *Spec) {
			s.ExtraCIDRs, s.VIP, s.VIP6 = []string{"2001:db8:18::/48"}, "172.18.171.250", "2001:db8:18::fa"
		}), "", DefaultPriority, "172.18.171.250,2001:db8:18::fa"},
		{"vip6 alone, ipv6-only site", with(func(s *Spec) { s.CIDR, s.VIP6 = "2001:db8:18::/48", "2001:db8:18::fa" }), "", DefaultPriority, "2001:db8:18::fa"},
		{"vip6 in an extra cidr", with(func(s *Spec) { s.ExtraCIDRs, s.VIP6 = []string{"10.244.0.0/16", "2001:db8:18::/48"}, "2001:db8:18::fa" }), "", DefaultPriority, "2001:db8:18::fa"},
		{"vip6 without site", with(func(s *Spec) { s.Site, s.ExtraCIDRs, s.VIP6 = "", []string{"2001:db8:18::/48"}, "2001:db8:18::fa" }), "vip needs a site", 0, ""},
		{"vip6 without an ipv6 cidr", with(func(s *Spec) { s.VIP6 = "2001:db8:18::fa" }), "vip6 2001:db8:18::fa needs an IPv6 cidr of the site to lie in (it has none)", 0, ""},
		{"vip6 outside the cidrs", with(func(s *Spec) { s.ExtraCIDRs, s.VIP6 = []string{"2001:db8:18::/48"}, "2001:db8:19::fa" }), "vip6 2001:db8:19::fa is not inside the site's IPv6 cidrs 2001:db8:18::/48", 0, ""},
		{"vip6 ipv4", with(func(s *Spec) { s.VIP6 = "172.18.171.250" }), `vip6 "172.18.171.250" is not an IPv6 address`, 0, ""},
		{"vip6 mapped", with(func(s *Spec) { s.VIP6 = "::ffff:172.18.171.250" }), "is not an IPv6 address", 0, ""},
		{"vip6 subnet-router anycast", with(func(s *Spec) { s.ExtraCIDRs, s.VIP6 = []string{"2001:db8:18::/48"}, "2001:db8:18::" }), "subnet-router anycast", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Validate(tt.spec)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate(%+v) = %v, want ok", tt.spec, err)
				}
				var vips []string
				for _, a := range []netip.Addr{e.VIP, e.VIP6} {
					if a.IsValid() {
						vips = append(vips, a.String())
					}
				}
				vip := strings.Join(vips, ",")
				if e.Site != tt.spec.Site || e.Priority != tt.priority || vip != tt.vip {
					t.Fatalf("Validate = site %q priority %d vip %q, want %q %d %q", e.Site, e.Priority, vip, tt.spec.Site, tt.priority, tt.vip)
				}
				return
			}
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate(%+v) = %v, want an InvalidError containing %q", tt.spec, err, tt.want)
			}
		})
	}
}

func TestCheckConflictsSites(t *testing.T) {
	gw := func(name, host, site, vip string, cidrs ...string) bus.Edge {
		t.Helper()
		e, err := Validate(Spec{Name: name, HostAddr: host, CIDR: cidrs[0], ExtraCIDRs: cidrs[1:], Site: site, VIP: vip})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	set := map[string]bus.Edge{}
	for _, e := range []bus.Edge{
		gw("sz-1", "198.51.100.10:58423", "sz", "172.18.171.250", "172.18.0.0/16", "10.244.0.0/16"),
		gw("hk-1", "203.0.113.10:58423", "", "", "172.31.0.0/16"),
	} {
		set[e.Name] = e
	}
	tests := []struct {
		name string
		edge bus.Edge
		want []string // substrings; none means no conflict
	}{
		{"second gateway of the site", gw("sz-2", "198.51.100.11:58423", "sz", "172.18.171.250", "172.18.0.0/16", "10.244.0.0/16"), nil},
		{"the site's cidrs in another site", gw("gz-3", "192.0.2.10:58423", "gz", "", "172.18.0.0/16"),
			[]string{"cidr 172.18.0.0/16 of edge gz-3 overlaps cidr 172.18.0.0/16 of edge sz-1"}},
		{"missing extra cidr", gw("sz-2", "198.51.100.11:58423", "sz", "172.18.171.250", "172.18.0.0/16"),
			[]string{"site sz: edge sz-2 must carry the same cidrs as gateway sz-1 (172.18.0.0/16,10.244.0.0/16): it lacks 10.244.0.0/16"}},
		{"another extra cidr", gw("sz-2", "198.51.100.11:58423", "sz", "172.18.171.250", "172.18.0.0/16", "10.244.0.0/16", "10.96.0.0/12"),
			[]string{"it has 10.96.0.0/12, which sz-1 has not"}},
		{"another primary cidr", gw("sz-2", "198.51.100.11:58423", "sz", "", "172.19.0.0/16", "10.244.0.0/16"),
			[]string{"its primary cidr is 172.19.0.0/16, not 172.18.0.0/16"}},
		{"another vip", gw("sz-2", "198.51.100.11:58423", "sz", "172.18.171.251", "172.18.0.0/16", "10.244.0.0/16"),
			[]string{"site sz: edge sz-2 gives vip 172.18.171.251 but gateway sz-1 has 172.18.171.250"}},
		{"no vip", gw("sz-2", "198.51.100.11:58423", "sz", "", "172.18.0.0/16", "10.244.0.0/16"),
			[]string{"gives vip none but gateway sz-1 has 172.18.171.250"}},
		{"a vip6 the other gateway lacks", func() bus.Edge {
			e := gw("sz-2", "198.51.100.11:58423", "sz", "172.18.171.250", "172.18.0.0/16", "10.244.0.0/16")
			e.VIP6 = netip.MustParseAddr("2001:db8:18::fa")
			return e
		}(), []string{"site sz: edge sz-2 gives vip6 2001:db8:18::fa but gateway sz-1 has none: the gateways of a site share one vip6"}},
		{"same hostaddr as the other gateway", gw("sz-2", "198.51.100.10:58423", "sz", "172.18.171.250", "172.18.0.0/16", "10.244.0.0/16"),
			[]string{"hostaddr 198.51.100.10:58423 of edge sz-2 is already used by edge sz-1"}},
		{"site named like a lone edge", gw("x-1", "192.0.2.10:58423", "hk-1", "", "172.20.0.0/16"),
			[]string{"site hk-1 of edge x-1 is the name of edge hk-1, which is a site of its own"}},
		{"lone edge named like a site", gw("sz", "192.0.2.10:58423", "", "", "172.20.0.0/16"),
			[]string{"edge name sz is the site of edge sz-1"}},
		{"moving the gateway to another site", gw("sz-1", "198.51.100.10:58423", "sz-new", "", "172.18.0.0/16"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckConflicts(set, tt.edge)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("CheckConflicts = %v, want none", err)
				}
				return
			}
			var c *ConflictError
			if !errors.As(err, &c) {
				t.Fatalf("CheckConflicts = %v, want a ConflictError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("CheckConflicts = %q, want it to contain %q", err, w)
				}
			}
		})
	}
	// An edge without a site is encoded (stored, published) as before.
	b, err := json.Marshal(set["hk-1"])
	if err != nil || strings.Contains(string(b), "site") || strings.Contains(string(b), "priority") || strings.Contains(string(b), "vip") {
		t.Fatalf("edge without site encodes as %s (%v)", b, err)
	}
	if b, _ := json.Marshal(set["sz-1"]); !strings.Contains(string(b), `"site":"sz","priority":100,"vip":"172.18.171.250"`) {
		t.Fatalf("gateway encodes as %s", b)
	}
}
