package edgeset

import (
	"errors"
	"strings"
	"testing"

	"github.com/cframe/cframe/bus"
)

func TestValidate(t *testing.T) {
	ok := Spec{Name: "sz-1", HostAddr: "198.51.100.10:58423", CIDR: "172.18.0.0/16"}
	with := func(f func(*Spec)) Spec { s := ok; f(&s); return s }
	tests := []struct {
		name string
		spec Spec
		want string // substring of the error; "" means valid
	}{
		{"walkthrough", ok, ""},
		{"extra cidrs", with(func(s *Spec) { s.ExtraCIDRs = []string{"10.244.0.0/16", "10.96.0.0/12"} }), ""},
		{"comment", with(func(s *Spec) { s.Comment = "aliyun shenzhen" }), ""},
		{"empty name", with(func(s *Spec) { s.Name = "" }), "name is empty"},
		{"upper case name", with(func(s *Spec) { s.Name = "SZ-1" }), "lowercase"},
		{"dot in name", with(func(s *Spec) { s.Name = "sz.1" }), "invalid"},
		{"wildcard name", with(func(s *Spec) { s.Name = "sz*" }), "invalid"},
		{"space in name", with(func(s *Spec) { s.Name = "sz 1" }), "invalid"},
		{"leading hyphen", with(func(s *Spec) { s.Name = "-sz" }), "invalid"},
		{"trailing hyphen", with(func(s *Spec) { s.Name = "sz-" }), "invalid"},
		{"long name", with(func(s *Spec) { s.Name = strings.Repeat("a", 33) }), "longer than 32"},
		{"32 char name", with(func(s *Spec) { s.Name = strings.Repeat("a", 32) }), ""},
		{"missing hostaddr", with(func(s *Spec) { s.HostAddr = "" }), "hostaddr is required"},
		{"hostaddr without port", with(func(s *Spec) { s.HostAddr = "198.51.100.10" }), "not IP:port"},
		{"hostaddr hostname", with(func(s *Spec) { s.HostAddr = "edge.example.com:58423" }), "not IP:port"},
		{"hostaddr bad port", with(func(s *Spec) { s.HostAddr = "198.51.100.10:70000" }), "not IP:port"},
		{"hostaddr port zero", with(func(s *Spec) { s.HostAddr = "198.51.100.10:0" }), "port 0"},
		{"hostaddr ipv6", with(func(s *Spec) { s.HostAddr = "[2001:db8::1]:58423" }), ""},
		{"hostaddr ipv6 link-local", with(func(s *Spec) { s.HostAddr = "[fe80::1]:58423" }), "link-local"},
		{"hostaddr ipv6 zone", with(func(s *Spec) { s.HostAddr = "[fe80::1%eth0]:58423" }), "link-local"},
		{"hostaddr ipv6 loopback", with(func(s *Spec) { s.HostAddr = "[::1]:58423" }), "not a unicast"},
		{"hostaddr ipv6 multicast", with(func(s *Spec) { s.HostAddr = "[ff02::1]:58423" }), "not a unicast"},
		{"hostaddr ipv6 without brackets", with(func(s *Spec) { s.HostAddr = "2001:db8::1:58423" }), "not IP:port"},
		{"hostaddr inside own ipv6 cidr", with(func(s *Spec) {
			s.HostAddr, s.ExtraCIDRs = "[2001:db8:18::10]:58423", []string{"2001:db8:18::/48"}
		}), "inside the edge's own cidr"},
		{"hostaddr unspecified", with(func(s *Spec) { s.HostAddr = "0.0.0.0:58423" }), "not a unicast"},
		{"hostaddr loopback", with(func(s *Spec) { s.HostAddr = "127.0.0.1:58423" }), "not a unicast"},
		{"hostaddr multicast", with(func(s *Spec) { s.HostAddr = "239.1.1.1:58423" }), "not a unicast"},
		{"hostaddr inside own cidr", with(func(s *Spec) { s.HostAddr = "172.18.171.245:58423" }), "inside the edge's own cidr"},
		{"missing cidr", with(func(s *Spec) { s.CIDR = "" }), "cidr is required"},
		{"cidr garbage", with(func(s *Spec) { s.CIDR = "172.18.0.0" }), "not a network in CIDR notation"},
		{"cidr bad length", with(func(s *Spec) { s.CIDR = "172.18.0.0/33" }), "not a network in CIDR notation"},
		{"cidr host bits", with(func(s *Spec) { s.CIDR = "172.18.171.245/16" }), "did you mean 172.18.0.0/16"},
		{"cidr ipv6", with(func(s *Spec) { s.CIDR = "fd00::/64" }), ""},
		{"dual stack", with(func(s *Spec) { s.ExtraCIDRs = []string{"2001:db8:18::/48", "10.244.0.0/16"} }), ""},
		{"ipv6 host bits", with(func(s *Spec) { s.ExtraCIDRs = []string{"2001:db8:18::1/48"} }), "did you mean 2001:db8:18::/48"},
		{"ipv6 default", with(func(s *Spec) { s.ExtraCIDRs = []string{"::/0"} }), "everything"},
		{"ipv6 link-local", with(func(s *Spec) { s.ExtraCIDRs = []string{"fe80::/64"} }), "IPv6 link-local"},
		{"ipv6 multicast", with(func(s *Spec) { s.ExtraCIDRs = []string{"ff02::/16"} }), "IPv6 multicast"},
		{"ipv6 loopback", with(func(s *Spec) { s.ExtraCIDRs = []string{"::1/128"} }), "IPv6 loopback"},
		{"ipv4-mapped", with(func(s *Spec) { s.ExtraCIDRs = []string{"::ffff:10.0.0.0/104"} }), "IPv4-mapped"},
		{"ipv6 overlaps own", with(func(s *Spec) { s.ExtraCIDRs = []string{"2001:db8:18::/48", "2001:db8:18:5::/64"} }), "overlaps 2001:db8:18::/48 of the same edge"},
		{"cidr default", with(func(s *Spec) { s.CIDR = "0.0.0.0/0" }), "everything"},
		{"cidr loopback", with(func(s *Spec) { s.CIDR = "127.0.0.0/8" }), "loopback"},
		{"cidr covering loopback", with(func(s *Spec) { s.CIDR = "64.0.0.0/2" }), "loopback"},
		{"cidr multicast", with(func(s *Spec) { s.CIDR = "239.0.0.0/8" }), "multicast"},
		{"cidr link-local", with(func(s *Spec) { s.CIDR = "169.254.0.0/16" }), "link-local"},
		{"bad extra cidr", with(func(s *Spec) { s.ExtraCIDRs = []string{"10.244.0.1/16"} }), "did you mean 10.244.0.0/16"},
		{"extra overlaps own", with(func(s *Spec) { s.ExtraCIDRs = []string{"172.18.5.0/24"} }), "overlaps 172.18.0.0/16 of the same edge"},
		{"too many extras", with(func(s *Spec) {
			for i := 0; i < MaxCIDRs; i++ {
				s.ExtraCIDRs = append(s.ExtraCIDRs, "10.0.0.0/8")
			}
		}), "too many"},
		{"long comment", with(func(s *Spec) { s.Comment = strings.Repeat("x", MaxCommentLen+1) }), "comment is longer"},
		{"control char comment", with(func(s *Spec) { s.Comment = "a\nb" }), "control characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Validate(tt.spec)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate(%+v) = %v, want ok", tt.spec, err)
				}
				if e.Name != tt.spec.Name || e.CIDR.String() != tt.spec.CIDR || e.HostAddr.String() != tt.spec.HostAddr || len(e.ExtraCIDRs) != len(tt.spec.ExtraCIDRs) {
					t.Fatalf("Validate(%+v) = %+v: fields not carried over", tt.spec, e)
				}
				return
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Validate(%+v) = %v, want an InvalidError containing %q", tt.spec, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate(%+v) = %q, want it to contain %q", tt.spec, err, tt.want)
			}
		})
	}
}

func mustEdge(t *testing.T, name, hostAddr, cidr string, extra ...string) bus.Edge {
	t.Helper()
	e, err := Validate(Spec{Name: name, HostAddr: hostAddr, CIDR: cidr, ExtraCIDRs: extra})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestCheckConflicts(t *testing.T) {
	set := map[string]bus.Edge{}
	for _, e := range []bus.Edge{
		mustEdge(t, "sz-1", "198.51.100.10:58423", "172.18.0.0/16"),
		mustEdge(t, "hk-1", "203.0.113.10:58423", "172.31.0.0/16", "10.244.0.0/16", "2001:db8:31::/48"),
	} {
		set[e.Name] = e
	}
	tests := []struct {
		name string
		edge bus.Edge
		want []string // substrings; none means no conflict
	}{
		{"disjoint", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.20.0.0/16"), nil},
		{"same name replaces itself", mustEdge(t, "sz-1", "198.51.100.10:58423", "172.18.0.0/16", "10.10.0.0/16"), nil},
		{"exact overlap", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.18.0.0/16"),
			[]string{"cidr 172.18.0.0/16 of edge gz-3 overlaps cidr 172.18.0.0/16 of edge sz-1"}},
		{"contained", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.31.5.0/24"),
			[]string{"cidr 172.31.5.0/24 of edge gz-3 overlaps cidr 172.31.0.0/16 of edge hk-1"}},
		{"containing", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.16.0.0/12"),
			[]string{"overlaps cidr 172.18.0.0/16 of edge sz-1", "overlaps cidr 172.31.0.0/16 of edge hk-1"}},
		{"extra cidr overlap", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.20.0.0/16", "10.244.1.0/24"),
			[]string{"cidr 10.244.1.0/24 of edge gz-3 overlaps cidr 10.244.0.0/16 of edge hk-1"}},
		{"hostaddr in other cidr", mustEdge(t, "gz-3", "172.18.1.1:58423", "172.20.0.0/16"),
			[]string{"hostaddr 172.18.1.1 of edge gz-3 lies inside cidr 172.18.0.0/16 of edge sz-1"}},
		{"cidr contains other hostaddr", mustEdge(t, "gz-3", "192.0.2.10:58423", "198.51.100.0/24"),
			[]string{"cidr 198.51.100.0/24 of edge gz-3 contains hostaddr 198.51.100.10 of edge sz-1"}},
		{"hostaddr taken", mustEdge(t, "gz-3", "198.51.100.10:58423", "172.20.0.0/16"),
			[]string{"hostaddr 198.51.100.10:58423 of edge gz-3 is already used by edge sz-1"}},
		{"same ip other port is fine", mustEdge(t, "gz-3", "198.51.100.10:58424", "172.20.0.0/16"), nil},
		{"dual stack, disjoint in both families", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.20.0.0/16", "2001:db8:20::/48"), nil},
		{"ipv6 only, disjoint", mustEdge(t, "gz-3", "192.0.2.10:58423", "2001:db8:20::/48"), nil},
		{"ipv6 overlap", mustEdge(t, "gz-3", "192.0.2.10:58423", "172.20.0.0/16", "2001:db8:31:7::/64"),
			[]string{"cidr 2001:db8:31:7::/64 of edge gz-3 overlaps cidr 2001:db8:31::/48 of edge hk-1"}},
		{"ipv6 covering", mustEdge(t, "gz-3", "192.0.2.10:58423", "2001:db8::/32"),
			[]string{"cidr 2001:db8::/32 of edge gz-3 overlaps cidr 2001:db8:31::/48 of edge hk-1"}},
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
}
