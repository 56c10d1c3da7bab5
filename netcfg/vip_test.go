package netcfg

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestPlanVIP: the dual-stack edge of VPC3 as a site's gateway with a VIP
// per family (172.20.0.250 and 2001:db8:20::fa) on its LAN interface eth1.
func TestPlanVIP(t *testing.T) {
	lan := lanLink{Index: 3, Name: "eth1", MAC: mac(0x99)}
	v4 := vipAddr{Addr: ip("172.20.0.250"), Bits: 32, Link: 3, Device: "eth1"}
	v6 := vipAddr{Addr: ip("2001:db8:20::fa"), Bits: 128, Link: 3, Device: "eth1"}
	both := func(d *Desired) { d.VIP, d.VIP6 = v4.Addr, v6.Addr }
	tests := []struct {
		name          string
		desired       func(d *Desired)
		vip           vipState
		wantChanges   []string
		wantConflicts []string
	}{
		{
			name:    "active: both added and announced",
			desired: both,
			vip:     vipState{LAN: lan},
			wantChanges: []string{
				"addr add 172.20.0.250/32 dev eth1 label cframe-vip, gratuitous ARP",
				"addr add 2001:db8:20::fa/128 dev eth1 nodad noprefixroute preferred_lft 0, unsolicited neighbour advertisement",
			},
		},
		{
			name:    "active, both held: no-op",
			desired: both,
			vip:     vipState{LAN: lan, Ours: []vipAddr{v4, v6}},
		},
		{
			name:    "an IPv6 VIP alone",
			desired: func(d *Desired) { d.VIP6 = v6.Addr },
			vip:     vipState{LAN: lan, Ours: []vipAddr{v4}},
			wantChanges: []string{
				"addr del 172.20.0.250/32 dev eth1 label cframe-vip",
				"addr add 2001:db8:20::fa/128 dev eth1 nodad noprefixroute preferred_lft 0, unsolicited neighbour advertisement",
			},
		},
		{
			name: "standby: both removed",
			vip:  vipState{LAN: lan, Ours: []vipAddr{v4, v6}},
			wantChanges: []string{
				"addr del 172.20.0.250/32 dev eth1 label cframe-vip",
				"addr del 2001:db8:20::fa/128 dev eth1",
			},
		},
		{
			name:    "unconfirmed role: left as it is",
			desired: func(d *Desired) { d.KeepVIP = true },
			vip:     vipState{LAN: lan, Ours: []vipAddr{v4, v6}},
		},
		{
			name:    "VIP6 changed",
			desired: func(d *Desired) { d.VIP, d.VIP6 = v4.Addr, ip("2001:db8:20::fb") },
			vip:     vipState{LAN: lan, Ours: []vipAddr{v4, v6}},
			wantChanges: []string{
				"addr del 2001:db8:20::fa/128 dev eth1",
				"addr add 2001:db8:20::fb/128 dev eth1 nodad noprefixroute preferred_lft 0, unsolicited neighbour advertisement",
			},
		},
		{
			name:    "held on another interface: moved to the LAN's",
			desired: both,
			vip:     vipState{LAN: lan, Ours: []vipAddr{v4, {Addr: v6.Addr, Bits: 128, Link: 4, Device: "eth2"}}},
			wantChanges: []string{
				"addr del 2001:db8:20::fa/128 dev eth2",
				"addr add 2001:db8:20::fa/128 dev eth1 nodad noprefixroute preferred_lft 0, unsolicited neighbour advertisement",
			},
		},
		{
			name:          "someone else's address: left alone, said",
			desired:       both,
			vip:           vipState{LAN: lan, Ours: []vipAddr{v4}, Foreign: mapOf(v6.Addr, "eth1")},
			wantConflicts: []string{"address 2001:db8:20::fa on eth1 is not cframe's (not a /128 that is nodad, noprefixroute, deprecated and valid forever): VIP not added"},
		},
		{
			name:          "no LAN interface",
			desired:       both,
			vip:           vipState{},
			wantConflicts: []string{"no LAN interface (no address inside the local networks): VIP 172.20.0.250 not added", "no LAN interface (no address inside the local networks): VIP 2001:db8:20::fa not added"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := dualDesired()
			if tc.desired != nil {
				tc.desired(d)
			}
			n, err := prepare(d)
			if err != nil {
				t.Fatalf("fixture does not validate: %v", err)
			}
			a := dualConverged()
			v := tc.vip
			a.VIP = &v
			p := newPlan(n, a)
			expectLines(t, "changes", descs(p.changes), tc.wantChanges)
			var conflicts []string
			for _, c := range p.notes {
				conflicts = append(conflicts, c.text)
			}
			expectLines(t, "conflicts", conflicts, tc.wantConflicts)
		})
	}
}

func mapOf[K comparable, V any](k K, v V) map[K]V { return map[K]V{k: v} }

// TestIsVIP6: what an IPv6 address must be to count as cframe's VIP.
func TestIsVIP6(t *testing.T) {
	addr := func(s string, bits int, flags, pref, valid int) netlink.Addr {
		return netlink.Addr{IPNet: &net.IPNet{IP: ip(s).AsSlice(), Mask: net.CIDRMask(bits, 128)}, Flags: flags, PreferedLft: pref, ValidLft: valid}
	}
	ours := vipNetlinkAddr(ip("2001:db8:20::fa"), 128)
	for _, tc := range []struct {
		name string
		a    netlink.Addr
		want bool
	}{
		{"as cframe adds it", *ours, true},
		{"as the kernel lists it", addr("2001:db8:20::fa", 128, unix.IFA_F_NODAD|unix.IFA_F_NOPREFIXROUTE|unix.IFA_F_DEPRECATED|unix.IFA_F_PERMANENT, 0, lifeForever), true},
		{"nodad alone", addr("2001:db8:20::fa", 128, unix.IFA_F_NODAD|unix.IFA_F_DEPRECATED, 0, lifeForever), false},
		{"the LAN address", addr("2001:db8:20::9", 48, unix.IFA_F_NODAD|unix.IFA_F_PERMANENT, lifeForever, lifeForever), false},
		{"a /128 with DAD", addr("2001:db8:20::fa", 128, unix.IFA_F_NOPREFIXROUTE|unix.IFA_F_DEPRECATED, 0, lifeForever), false},
		{"preferred", addr("2001:db8:20::fa", 128, unix.IFA_F_NODAD|unix.IFA_F_NOPREFIXROUTE, lifeForever, lifeForever), false},
		{"expiring", addr("2001:db8:20::fa", 128, unix.IFA_F_NODAD|unix.IFA_F_NOPREFIXROUTE, 0, 3600), false},
		{"a /64", addr("2001:db8:20::fa", 64, unix.IFA_F_NODAD|unix.IFA_F_NOPREFIXROUTE, 0, lifeForever), false},
	} {
		if got := isVIP6(tc.a); got != tc.want {
			t.Errorf("%s: isVIP6 = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestUnsolicitedNA: the advertisement's bytes (RFC 4861 4.4).
func TestUnsolicitedNA(t *testing.T) {
	got := unsolicitedNA(mac(0x99), ip("2001:db8:20::fa"))
	want := []byte{136, 0, 0, 0, 0xa0, 0, 0, 0,
		0x20, 0x01, 0x0d, 0xb8, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfa,
		2, 1, 0x02, 0xcf, 0, 0, 0, 0x99}
	if string(got) != string(want) {
		t.Errorf("unsolicitedNA = % x\nwant            % x", got, want)
	}
}
