package netcfg

import (
	"strconv"

	"github.com/vishvananda/netlink"
)

// The IPv6 underlay. The kernel fixes a VXLAN device's underlay family when
// it creates the device: a device with an IPv6 local address opens an IPv6
// socket and sends to IPv6 remotes only, one without opens an IPv4 socket.
// So an edge's underlay family is its local address's (Desired.LocalAddr:
// IPv6 makes it IPv6, anything else IPv4), its VXLAN device is created with
// that address (a change of family recreates the device, as any change of
// the local address does), and every peer's underlay address must be of
// that family: the orchestrator gives an edge only the peers it can meet.
// What differs on an IPv6 underlay:
//
//   - the encapsulation takes 70 bytes, not 50: the outer IPv6 header is
//     20 bytes longer than IPv4's, so the automatic MTU is the underlay's
//     less 70 (1430 on a 1500-byte underlay);
//   - the tunnel port's INPUT filter is in ip6tables (chains6.go), matching
//     the peers' IPv6 underlay addresses in their own set (setPeers6); the
//     iptables INPUT filter stays, dropping the tunnel port over IPv4;
//   - GRE mode is IPv4 only (ip6gre would be a device kind of its own).

// vxlan6Overhead is the VXLAN overhead over an IPv6 underlay (outer IPv6 40
// + UDP 8 + VXLAN 8 + inner Ethernet 14).
const vxlan6Overhead = vxlanOverhead + ipv6Overhead

// underlay6 reports whether the edge's underlay is IPv6.
func (d *Desired) underlay6() bool { return d.LocalAddr.Is6() }

// underlayFamily names the edge's underlay family for messages.
func (d *Desired) underlayFamily() string {
	if d.underlay6() {
		return "IPv6"
	}
	return "IPv4"
}

// vxlanOverhead is the VXLAN overhead over the edge's underlay.
func (d *Desired) vxlanOverhead() int {
	if d.underlay6() {
		return vxlan6Overhead
	}
	return vxlanOverhead
}

// localAddrs6 lists the host's IPv6 addresses (to find the device that
// holds an IPv6 local address).
func (s *session) localAddrs6() ([]netlink.Addr, error) {
	var addrs []netlink.Addr
	err := retryDump("ipv6 addresses", func() (err error) { addrs, err = s.nl.AddrList(nil, netlink.FAMILY_V6); return err })
	return addrs, err
}

// chainInput6 admits the tunnel protocol over an IPv6 underlay from known
// peers only (setPeers6).
var chainInput6 = chain{table6 + "filter", "CFRAME-INPUT"}

// input6Rules are chainInput6's rules: accept from the peers' set (when it
// is ready), then drop; the drop must stay last.
func input6Rules(port uint16, ready bool) []rule {
	match := []string{"-p", "udp", "-m", "udp", "--dport", strconv.Itoa(int(port))}
	var out []rule
	if ready {
		out = append(out, rule{chainInput6, append(append([]string{}, match...), "-m", "set", "--match-set", setPeers6, "src", "-j", "ACCEPT")})
	}
	return append(out, rule{chainInput6, append(match, "-j", "DROP")})
}
