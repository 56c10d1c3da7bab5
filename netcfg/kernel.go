package netcfg

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernel reads and changes the kernel state cframe owns.
//
// Namespace: every method works in the network namespace of the calling OS
// thread. The agent simply runs inside its namespace; to drive another one,
// call the methods from a goroutine locked (runtime.LockOSThread) into that
// namespace (scripts/topo.Do does exactly that). Netlink sockets are opened
// per request on the calling thread and iptables is executed from it, and
// Read, Apply, Reconcile and Cleanup start no goroutines. Watch remembers the
// calling thread's namespace and subscribes there.
//
// A Kernel has no state besides the located iptables binary; it is safe for
// use by one goroutine at a time.
type Kernel struct {
	ipt *iptables.IPTables
}

// Result is what one Reconcile did.
type Result struct {
	// Changes are the applied changes, in order (see Change.String).
	Changes []string
	// Conflicts are the foreign objects that were left alone.
	Conflicts []string
}

// New locates iptables (IPv4) and returns a Kernel.
func New() (*Kernel, error) {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("netcfg: iptables: %w", err)
	}
	return &Kernel{ipt: ipt}, nil
}

// Reconcile validates d, reads the kernel, plans and applies. Running it
// again with the same d changes nothing.
func (k *Kernel) Reconcile(d *Desired) (Result, error) {
	if err := d.Validate(); err != nil {
		return Result{}, fmt.Errorf("netcfg: invalid desired state: %w", err)
	}
	a, err := k.Read(d)
	if err != nil {
		return Result{}, err
	}
	p := NewPlan(d, a)
	applied, err := k.Apply(p)
	return Result{Changes: applied, Conflicts: p.Conflicts}, err
}

// Apply carries out the changes of p in order. A failing change does not
// stop the others (deletions of objects that are already gone count as
// done); the error lists every failure. applied holds the changes that
// succeeded.
func (k *Kernel) Apply(p Plan) (applied []string, err error) {
	var errs []error
	for _, c := range p.Changes {
		if cerr := c.apply(k); cerr != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c, cerr))
			continue
		}
		applied = append(applied, c.String())
	}
	if len(errs) > 0 {
		return applied, fmt.Errorf("netcfg: %d of %d changes failed: %w", len(errs), len(p.Changes), errors.Join(errs...))
	}
	return applied, nil
}

// dumpAttempts bounds the retries of netlink dumps interrupted by
// concurrent changes; partial results are never used.
const dumpAttempts = 5

func dump[T any](what string, f func() (T, error)) (T, error) {
	for i := 1; ; i++ {
		v, err := f()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, fmt.Errorf("netcfg: list %s: %w", what, err)
		}
		if i == dumpAttempts {
			var zero T
			return zero, fmt.Errorf("netcfg: list %s: dump interrupted %d times in a row", what, dumpAttempts)
		}
	}
}

// Read returns the current state of everything d's plan depends on.
func (k *Kernel) Read(d *Desired) (*Actual, error) {
	n := d.normalized()
	a := &Actual{Chains: map[Chain][]string{}, UnderlayMTU: 1500}

	links, err := dump("links", netlink.LinkList)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	mtus := map[int]int{}
	ours := map[int]bool{}
	relevant := map[string]bool{n.Device: true}
	if n.Mode == ModeGRE {
		for _, p := range n.Peers {
			relevant[greDevice(n.Device, p.Name)] = true
		}
	}
	for _, l := range links {
		attrs := l.Attrs()
		names[attrs.Index] = attrs.Name
		mtus[attrs.Index] = attrs.MTU
		ll := linkFrom(l)
		if ll.Owned() {
			ours[attrs.Index] = true
		}
		if ll.Owned() || relevant[attrs.Name] {
			a.Links = append(a.Links, ll)
		}
	}

	if n.Mode == ModeVXLAN {
		for _, l := range a.Links {
			if l.Name == n.Device && l.Owned() && l.Kind == "vxlan" {
				if err := readVXLANEntries(a, l); err != nil {
					return nil, err
				}
			}
		}
	}

	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, err
	}
	var peerCIDRs []netip.Prefix
	for _, p := range n.Peers {
		peerCIDRs = append(peerCIDRs, p.CIDRs...)
	}
	defaultDev, defaultMetric := 0, -1
	for _, r := range routes {
		rr := routeFrom(r, names)
		if rr.Dst.Bits() == 0 {
			if r.LinkIndex != 0 && (defaultMetric < 0 || r.Priority < defaultMetric) {
				defaultDev, defaultMetric = r.LinkIndex, r.Priority
			}
		}
		switch {
		case rr.Protocol == RouteProtocol:
			a.Routes = append(a.Routes, rr)
		case rr.Dst.Bits() > 0 && slices.ContainsFunc(peerCIDRs, rr.Dst.Overlaps):
			a.ForeignRoutes = append(a.ForeignRoutes, rr)
		}
	}

	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, err
	}
	underDev := defaultDev
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if n.LocalAddr.IsValid() && ip == n.LocalAddr {
			underDev = ad.LinkIndex
		}
	}
	if !n.LANAddr.IsValid() {
		a.LANAddr = findLANAddr(addrs, n.LocalCIDRs, ours)
	}
	if m, ok := mtus[underDev]; ok && m > 0 {
		a.UnderlayMTU = m
	}

	if n.Mode == ModeGRE {
		a.UnderlaySource = map[netip.Addr]netip.Addr{}
		for _, p := range n.Peers {
			rs, err := netlink.RouteGet(p.Underlay.Addr().AsSlice())
			if err != nil || len(rs) == 0 {
				continue // unreachable now: the tunnel gets no fixed local address
			}
			if src, ok := netip.AddrFromSlice(rs[0].Src); ok {
				a.UnderlaySource[p.Underlay.Addr()] = src.Unmap()
			}
		}
	}

	fw, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return nil, fmt.Errorf("netcfg: read ip_forward: %w", err)
	}
	a.IPForward = strings.TrimSpace(string(fw)) == "1"

	if err := k.readChains(a); err != nil {
		return nil, err
	}
	return a, nil
}

// findLANAddr returns the first address (in LocalCIDRs order) that lies in
// one of cidrs and is not on one of cframe's links.
func findLANAddr(addrs []netlink.Addr, cidrs []netip.Prefix, ours map[int]bool) netip.Addr {
	for _, c := range cidrs {
		for _, ad := range addrs {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if ok && !ours[ad.LinkIndex] && c.Contains(ip.Unmap()) {
				return ip.Unmap()
			}
		}
	}
	return netip.Addr{}
}

func readVXLANEntries(a *Actual, l Link) error {
	fdb, err := dump("fdb", func() ([]FDBEntry, error) { return fdbList(l.Index, l.Port) })
	if err != nil {
		return err
	}
	for _, e := range fdb {
		e.Device = l.Name
		a.FDB = append(a.FDB, e)
	}
	neighs, err := dump("neighbors", func() ([]netlink.Neigh, error) { return netlink.NeighList(l.Index, netlink.FAMILY_V4) })
	if err != nil {
		return err
	}
	for _, nb := range neighs {
		ip, ok := netip.AddrFromSlice(nb.IP)
		if !ok || nb.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		a.Neighbors = append(a.Neighbors, Neighbor{Device: l.Name, IP: ip.Unmap(), MAC: nb.HardwareAddr})
	}
	return nil
}

func (k *Kernel) readChains(a *Actual) error {
	existing := map[Chain]bool{}
	for _, table := range []string{"filter", "mangle", "nat"} {
		chains, err := k.ipt.ListChains(table)
		if err != nil {
			return fmt.Errorf("netcfg: iptables -t %s -S: %w", table, err)
		}
		for _, c := range chains {
			existing[Chain{table, c}] = true
		}
	}
	for _, h := range hooks {
		for _, c := range []Chain{h.own, h.from} {
			if _, done := a.Chains[c]; done || !existing[c] {
				continue
			}
			lines, err := k.ipt.List(c.Table, c.Name)
			if err != nil {
				return fmt.Errorf("netcfg: iptables -t %s -S %s: %w", c.Table, c.Name, err)
			}
			rules := []string{}
			for _, l := range lines {
				if strings.HasPrefix(l, "-A ") {
					rules = append(rules, normalizeLine(l))
				}
			}
			a.Chains[c] = rules
		}
	}
	return nil
}

func addrFromIP(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}

func linkFrom(l netlink.Link) Link {
	attrs := l.Attrs()
	out := Link{Name: attrs.Name, Kind: l.Type(), Index: attrs.Index, Alias: attrs.Alias, MTU: attrs.MTU,
		MAC: attrs.HardwareAddr, Up: attrs.Flags&net.FlagUp != 0}
	switch v := l.(type) {
	case *netlink.Vxlan:
		out.VNI, out.Port, out.Learning, out.Local = v.VxlanId, uint16(v.Port), v.Learning, addrFromIP(v.SrcAddr)
	case *netlink.Gretun:
		out.Local, out.Remote = addrFromIP(v.Local), addrFromIP(v.Remote)
		out.MAC = nil // the "hardware address" of a GRE device is its local IP
	}
	return out
}

func routeFrom(r netlink.Route, names map[int]string) Route {
	out := Route{Gw: addrFromIP(r.Gw), Device: names[r.LinkIndex], Src: addrFromIP(r.Src),
		Protocol: int(r.Protocol), Metric: r.Priority, OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
	if r.Dst != nil {
		if ip, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			ones, _ := r.Dst.Mask.Size()
			out.Dst = netip.PrefixFrom(ip.Unmap(), ones)
		}
	} else {
		out.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return out
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipOrNil(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}

// gone reports whether err means the object to delete no longer exists.
func gone(err error) bool {
	var lnf netlink.LinkNotFoundError
	var iptErr *iptables.Error
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) ||
		errors.As(err, &lnf) || (errors.As(err, &iptErr) && iptErr.IsNotExist())
}

func ignoreGone(err error) error {
	if err != nil && gone(err) {
		return nil
	}
	return err
}

func (k *Kernel) enableForwarding() error {
	return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
}

// linkAdd creates a link. The kernel ignores IFLA_IFALIAS when creating
// links, so the link is created under a temporary name, given its alias and
// only then renamed: a link with cframe's name never lacks cframe's alias.
func (k *Kernel) linkAdd(l Link) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = tempLinkName(), l.MTU
	if l.MAC != nil {
		attrs.HardwareAddr = l.MAC
	}
	var link netlink.Link
	switch l.Kind {
	case "vxlan":
		link = &netlink.Vxlan{LinkAttrs: attrs, VxlanId: l.VNI, Port: int(l.Port), SrcAddr: ipOrNil(l.Local)}
	case "gre":
		link = &netlink.Gretun{LinkAttrs: attrs, Local: ipOrNil(l.Local), Remote: ipOrNil(l.Remote), Ttl: greTTL, PMtuDisc: 1}
	default:
		return fmt.Errorf("unsupported link type %q", l.Kind)
	}
	if err := netlink.LinkAdd(link); err != nil {
		return err
	}
	err := netlink.LinkSetAlias(link, l.Alias)
	if err == nil {
		err = netlink.LinkSetName(link, l.Name)
	}
	if err != nil {
		netlink.LinkDel(link)
		return err
	}
	return netlink.LinkSetUp(link)
}

// tempLinkPrefix starts the names of links being created.
const tempLinkPrefix = "cfnew"

// tempLinkName returns a unique name for a link being created.
func tempLinkName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return tempLinkPrefix + hex.EncodeToString(b)
}

func (k *Kernel) linkDel(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return ignoreGone(err)
	}
	return ignoreGone(netlink.LinkDel(l))
}

func (k *Kernel) withLink(name string, f func(netlink.Link) error) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return f(l)
}

func (k *Kernel) linkSetMTU(name string, mtu int) error {
	return k.withLink(name, func(l netlink.Link) error { return netlink.LinkSetMTU(l, mtu) })
}

func (k *Kernel) linkSetMAC(name string, mac net.HardwareAddr) error {
	return k.withLink(name, func(l netlink.Link) error { return netlink.LinkSetHardwareAddr(l, mac) })
}

func (k *Kernel) linkSetAlias(name, alias string) error {
	return k.withLink(name, func(l netlink.Link) error { return netlink.LinkSetAlias(l, alias) })
}

func (k *Kernel) linkSetUp(name string) error {
	return k.withLink(name, netlink.LinkSetUp)
}

func (k *Kernel) fdbSet(e FDBEntry) error {
	return k.withLink(e.Device, func(l netlink.Link) error {
		return fdbRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, l.Attrs().Index, e)
	})
}

func (k *Kernel) fdbDel(e FDBEntry) error {
	return ignoreGone(k.withLink(e.Device, func(l netlink.Link) error {
		return fdbRequest(unix.RTM_DELNEIGH, 0, l.Attrs().Index, e)
	}))
}

func (k *Kernel) neighSet(n Neighbor) error {
	return k.withLink(n.Device, func(l netlink.Link) error {
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: n.MAC})
	})
}

func (k *Kernel) neighDel(n Neighbor) error {
	return ignoreGone(k.withLink(n.Device, func(l netlink.Link) error {
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, IP: n.IP.AsSlice()})
	}))
}

func (k *Kernel) routeSet(r Route, replace bool) error {
	return k.withLink(r.Device, func(l netlink.Link) error {
		nr := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(r.Dst), Gw: ipOrNil(r.Gw), Src: ipOrNil(r.Src),
			Protocol: netlink.RouteProtocol(r.Protocol), Priority: r.Metric, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_UNIVERSE}
		if !r.Gw.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		if replace {
			return netlink.RouteReplace(nr)
		}
		return netlink.RouteAdd(nr)
	})
}

// routeDel deletes one of cframe's routes; the kernel only matches routes
// with our protocol, so a foreign route with the same destination is safe.
func (k *Kernel) routeDel(r Route) error {
	return ignoreGone(netlink.RouteDel(&netlink.Route{Dst: ipNet(r.Dst), Protocol: netlink.RouteProtocol(r.Protocol),
		Priority: r.Metric, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_NOWHERE}))
}

func (k *Kernel) iptDelete(c Chain, args []string) error {
	return ignoreGone(k.ipt.Delete(c.Table, c.Name, args...))
}

// Cleanup removes everything cframe created — links with its alias,
// main-table routes with RouteProtocol, its iptables chains and the jumps
// into them — and nothing else. It returns what it removed.
func (k *Kernel) Cleanup() ([]string, error) {
	var done []string
	var errs []error
	run := func(c Change) {
		if err := c.apply(k); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c, err))
			return
		}
		done = append(done, c.String())
	}
	links, err := dump("links", netlink.LinkList)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		ll := linkFrom(l)
		names[ll.Index] = ll.Name
		if ll.Owned() {
			run(Change{"link del " + ll.Name, func(k *Kernel) error { return k.linkDel(ll.Name) }})
		}
	}
	// Listed after the links are gone: they take their routes along.
	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return done, err
	}
	for _, r := range routes {
		rr := routeFrom(r, names)
		run(Change{"route del " + rr.String(), func(k *Kernel) error { return k.routeDel(rr) }})
	}
	a := &Actual{Chains: map[Chain][]string{}}
	if err := k.readChains(a); err != nil {
		return done, err
	}
	pl := &planner{a: a}
	for _, h := range hooks {
		pl.removeChain(h.own, h.from)
	}
	for _, c := range pl.ipDel {
		run(c)
	}
	return done, errors.Join(errs...)
}

// Supported reports whether the kernel (of the calling thread's network
// namespace) can create the devices mode needs, by creating and deleting a
// temporary link with a unique name. The error is one readable line that
// says what to do.
func Supported(mode Mode) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tempLinkName()
	var link netlink.Link
	var hint string
	switch mode {
	case ModeVXLAN, "":
		mode = ModeVXLAN
		link = &netlink.Vxlan{LinkAttrs: attrs, VxlanId: DefaultVNI}
		hint = "load the vxlan module"
	case ModeGRE:
		link = &netlink.Gretun{LinkAttrs: attrs}
		hint = `load the ip_gre module or use mode = "vxlan"`
	default:
		return fmt.Errorf("mode %q: unknown (want %q or %q)", mode, ModeVXLAN, ModeGRE)
	}
	if err := netlink.LinkAdd(link); err != nil {
		why := err.Error()
		if errors.Is(err, unix.EOPNOTSUPP) {
			why = "Unknown device type"
		}
		return fmt.Errorf("mode %s: kernel cannot create %s devices (%s); %s", mode, mode, why, hint)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("mode %s: delete probe device %s: %w", mode, attrs.Name, err)
	}
	return nil
}
