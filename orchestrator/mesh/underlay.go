package mesh

import "github.com/cframe/cframe/bus"

// Underlay families: an edge's underlay is its hostaddr's family, IPv4 or
// IPv6, and its VXLAN device can reach peers of that family only (the
// kernel fixes a device's underlay family; see netcfg's underlay6.go). Two
// edges of different families cannot meet: neither is the other's peer,
// and the topology shows their link as incompatible (LinkIncompatible).
// An edge with both families would take a second hostaddr and a second
// device; that is not built.

// ShareUnderlay reports whether a and b can build a tunnel: their hostaddrs
// are of the same family.
func ShareUnderlay(a, b bus.Edge) bool { return a.HostAddr.Addr().Is6() == b.HostAddr.Addr().Is6() }

// UnderlayFamily names e's underlay family ("IPv4" or "IPv6").
func UnderlayFamily(e bus.Edge) string {
	if e.HostAddr.Addr().Is6() {
		return "IPv6"
	}
	return "IPv4"
}
