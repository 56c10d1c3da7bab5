package netcfg

import (
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/internal/topo"
)

// TestScope: the scope of an Update holds the peers that joined or changed
// (with the keys of their old objects too), the keys of peers that left,
// and unchanged peers sharing a key with any of those; nothing when the
// peers are the same.
func TestScope(t *testing.T) {
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, b} }
	peer := func(name string, b byte, underlay string) Peer {
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, b, 0, 0}), 16)
		return Peer{Name: name, Underlay: netip.MustParseAddrPort(underlay), MAC: mac(b), NextHop: cidr.Addr(), CIDRs: []netip.Prefix{cidr}}
	}
	a, b, c := peer("a", 1, "192.0.2.1:1"), peer("b", 2, "192.0.2.2:1"), peer("c", 3, "192.0.2.3:1")
	shared := peer("d", 4, "192.0.2.1:2") // a's underlay address, another port
	moved := b
	moved.Underlay = netip.MustParseAddrPort("192.0.2.9:1")

	names := func(ps []Peer) (out []string) {
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		prev, next []Peer
		peers      []string // in scope, of next
		left       []string // in names but not in next
		underlays  []string
	}{
		{name: "unchanged", prev: []Peer{a, b, c}, next: []Peer{a, b, c}},
		{name: "joined", prev: []Peer{a, b}, next: []Peer{a, b, c}, peers: []string{"c"}, underlays: []string{"192.0.2.3/32"}},
		{name: "left", prev: []Peer{a, b, c}, next: []Peer{a, b}, left: []string{"c"}, underlays: []string{"192.0.2.3/32"}},
		{name: "moved keeps old and new address", prev: []Peer{a, b, c}, next: []Peer{a, moved, c}, peers: []string{"b"},
			underlays: []string{"192.0.2.9/32", "192.0.2.2/32"}},
		{name: "sharing an address pulls the sharer in", prev: []Peer{a, b, shared}, next: []Peer{b, shared}, peers: []string{"d"},
			left: []string{"a"}, underlays: []string{"192.0.2.1/32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newScope(tc.prev, tc.next)
			expectLines(t, "peers", names(sc.peers), tc.peers)
			var left []string
			for n := range sc.names {
				if !slices.Contains(tc.peers, n) {
					left = append(left, n)
				}
			}
			expectLines(t, "peers that left", left, tc.left)
			var underlays []string
			for _, u := range sc.underlays {
				underlays = append(underlays, u.String())
			}
			expectLines(t, "underlay keys", underlays, tc.underlays)
			if len(sc.names) > 0 && len(sc.cidrs) == 0 {
				t.Error("no CIDR keys")
			}
		})
	}
}

// TestUpdateSeesEveryField changes each field of Desired but Peers, one at
// a time: Update must hand every such change to a full Reconcile, naming
// the field; and each field of Peer: the peer must come into the scope of
// the Update. A field added later fails here until it has a test value
// (otherValue), and then fails if Update overlooks it.
func TestUpdateSeesEveryField(t *testing.T) {
	base := baseDesired().normalized()
	v := reflect.ValueOf(base)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if name == "Peers" {
			continue
		}
		changed := base
		reflect.ValueOf(&changed).Elem().Field(i).Set(otherValue(t, name, v.Field(i)))
		if got := changedBesidesPeers(base, changed); !slices.Equal(got, []string{name}) {
			t.Errorf("%s changed: changedBesidesPeers says %q", name, got)
		}
		ns, err := threadNS()
		if err != nil {
			t.Fatal(err)
		}
		k := &Kernel{base: &baseline{ns: ns, d: base}}
		if _, fallback := k.updatePeers(changed); fallback == "" {
			t.Errorf("%s changed: Update did not fall back to a full Reconcile", name)
		}
	}
	peer := reflect.ValueOf(base.Peers[0])
	for i := range peer.NumField() {
		name := peer.Type().Field(i).Name
		next := slices.Clone(base.Peers)
		reflect.ValueOf(&next[0]).Elem().Field(i).Set(otherValue(t, name, peer.Field(i)))
		if sc := newScope(base.Peers, next); !slices.ContainsFunc(sc.peers, func(p Peer) bool { return p.Name == next[0].Name }) {
			t.Errorf("peer's %s changed: the peer is not in the scope of the Update", name)
		}
	}
}

// otherValue returns a value of v's type other than v, for the types of
// the fields of Desired and Peer.
func otherValue(t *testing.T, field string, v reflect.Value) reflect.Value {
	t.Helper()
	var other any
	switch x := v.Interface().(type) {
	case Mode:
		other = ModeGRE
		if x == ModeGRE {
			other = ModeVXLAN
		}
	case Checksum:
		other = ChecksumFast
		if x == ChecksumFast {
			other = ChecksumSafe
		}
	case string:
		other = x + "x"
	case int:
		other = x + 1
	case uint16:
		other = x + 1
	case bool:
		other = !x
	case net.HardwareAddr:
		other = net.HardwareAddr{2, 0, 0, 0, 0, 0xee}
	case netip.Addr:
		other = netip.MustParseAddr("192.0.2.1")
		if x.IsValid() {
			other = x.Next()
		}
	case netip.AddrPort:
		other = netip.AddrPortFrom(x.Addr(), x.Port()+1)
	case []netip.Prefix:
		other = append(slices.Clone(x), netip.MustParsePrefix("10.255.0.0/16"))
	case *WireGuard:
		other = &WireGuard{Device: "cframe-wg", ListenPort: 1}
		if x != nil {
			other = nil
		}
	case wgtypes.Key:
		x[0]++
		other = x
	case time.Duration:
		other = x + time.Second
	default:
		t.Fatalf("field %s: no test value for type %s: add one to otherValue", field, v.Type())
	}
	return reflect.ValueOf(other)
}

// TestKernelUpdate: on a live walkthrough mesh, Update applies peer changes
// by reading only the changed peers' objects — a handful of requests, no
// program run — leaves exactly what Reconcile would (a Reconcile after it
// changes nothing), reports the same conflicts, keeps a set member another
// peer still uses, and falls back to a full Reconcile when it has nothing
// to build on, when more than the peers changed or when the device is gone.
func TestKernelUpdate(t *testing.T) {
	t.Parallel()
	m := newMesh(t, topo.Walkthrough()...)
	m.reconcileAll()
	s1, s2, s3 := m.site("vpc1"), m.site("vpc2"), m.site("vpc3")
	e1 := s1.Edge
	k, err := New() // vpc1's own: Update builds on its last Reconcile
	if err != nil {
		t.Fatal(err)
	}
	base := *m.desired["vpc1"]
	d := base
	update := func(what string, fallback string) Result {
		t.Helper()
		var res Result
		m.in("vpc1", func() (err error) { res, err = k.Update(&d); return err })
		if !strings.HasPrefix(res.FallbackReason, fallback) || fallback == "" && res.FallbackReason != "" {
			t.Errorf("%s: FallbackReason %q, want %q", what, res.FallbackReason, fallback)
		}
		if res.Targeted != (fallback == "") {
			t.Errorf("%s: Targeted %v with FallbackReason %q", what, res.Targeted, res.FallbackReason)
		}
		var again Result
		m.in("vpc1", func() (err error) { again, err = k.Reconcile(&d); return err })
		expectLines(t, what+": changes of a Reconcile right after", again.Changes, nil)
		expectLines(t, what+": conflicts of a Reconcile right after", again.Conflicts, res.Conflicts)
		return res
	}

	update("no baseline", "no earlier reconcile")
	if res := update("nothing changed", ""); len(res.Changes) > 0 || res.Requests != (Requests{}) {
		t.Errorf("an Update without a change did %+v: %q", res.Requests, res.Changes)
	}

	d.Peers = []Peer{peerOf(s2)}
	res := update("vpc3 left", "")
	expectLines(t, "changes after vpc3 left", res.Changes, vpc1WithoutVPC3)
	if want := updateRequests(k, 1, len(res.Changes)); res.Requests != want {
		t.Errorf("vpc3 leaving took %+v, want %+v", res.Requests, want)
	}
	m.expectUnreachable(s1, s3.HostAddr)

	d.Peers = base.Peers
	expectLines(t, "changes after vpc3 joined again", update("vpc3 joined", "").Changes, vpc1WithVPC3Again)
	m.checkAllPairs()

	// A peer that shares vpc2's underlay address (another port) comes and
	// goes: the set member stays for vpc2.
	ghost := Peer{Name: "ghost", Underlay: netip.AddrPortFrom(s2.Underlay(), 60000), MAC: net.HardwareAddr{2, 0xcf, 0, 0, 0, 0x99},
		NextHop: netip.MustParseAddr("10.99.0.0"), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}}
	m.expectMembers("vpc1", setPeers, "203.0.113.10/32", "192.0.2.10/32")
	d.Peers = append(slices.Clone(base.Peers), ghost)
	expectLines(t, "changes after ghost joined", update("ghost joined", "").Changes, []string{
		"fdb add 02:cf:00:00:00:99 dst 203.0.113.10 port 60000 dev cframe0",
		"neigh add 10.99.0.0 lladdr 02:cf:00:00:00:99 dev cframe0 nud permanent",
		"route add 10.99.0.0/24 via 10.99.0.0 dev cframe0 onlink src 172.18.171.245 proto 207",
	})
	d.Peers = base.Peers
	expectLines(t, "changes after ghost left", update("ghost left", "").Changes, []string{
		"route del 10.99.0.0/24 via 10.99.0.0 dev cframe0 onlink src 172.18.171.245 proto 207",
		"neigh del 10.99.0.0 dev cframe0",
		"fdb del 02:cf:00:00:00:99 dst 203.0.113.10 port 60000 dev cframe0",
	})
	m.expectMembers("vpc1", setPeers, "203.0.113.10/32", "192.0.2.10/32")

	// A foreign route to vpc3's network while vpc3 rejoins: skipped and
	// reported, as Reconcile does.
	d.Peers = []Peer{peerOf(s2)}
	update("vpc3 left again", "")
	m.sh(e1, "ip", "route", "add", "172.20.0.0/16", "via", "198.51.100.1", "proto", "static")
	d.Peers = base.Peers
	res = update("vpc3 joined behind a foreign route", "")
	expectLines(t, "conflicts", res.Conflicts, []string{
		"route 172.20.0.0/16 via 198.51.100.1 dev wan0 proto static is not cframe's: skipped peer vpc3's route 172.20.0.0/16"})
	if slices.ContainsFunc(res.Changes, func(c string) bool { return strings.HasPrefix(c, "route") }) {
		t.Errorf("a route was changed despite the foreign one: %q", res.Changes)
	}
	m.sh(e1, "ip", "route", "del", "172.20.0.0/16", "proto", "static")
	m.in("vpc1", func() (err error) { _, err = k.Reconcile(&d); return err })
	if res := update("conflict gone", ""); len(res.Conflicts) > 0 {
		t.Errorf("conflicts after the foreign route went: %q", res.Conflicts)
	}

	// Fallbacks: any field besides the peers (TestUpdateSeesEveryField
	// tries them all without a kernel).
	d.LocalCIDRs = append(slices.Clone(base.LocalCIDRs), netip.MustParsePrefix("10.18.0.0/16"))
	update("local networks changed", "more than the peers changed: LocalCIDRs")
	d.LocalCIDRs = base.LocalCIDRs
	update("local networks back", "more than the peers changed: LocalCIDRs")
	d.Masquerade = true
	if res := update("masquerade on", "more than the peers changed: Masquerade"); !slices.Contains(res.Changes, "ipset create cframe-nets hash:net family inet") {
		t.Errorf("masquerade on: no set of networks created: %q", res.Changes)
	}
	d.Masquerade = false
	update("masquerade off", "more than the peers changed: Masquerade")
	m.sh(e1, "ip", "link", "del", "cframe0")
	d.Peers = []Peer{peerOf(s2)}
	update("device deleted", "targeted read: device cframe0 is missing")
	d.Peers = base.Peers
	update("vpc3 back", "")
	m.checkAllPairs()
}
