package netcfg

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
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
// Read, Apply, Reconcile, Update and Cleanup start no goroutines, but for
// the sysfs access of receive packet steering, which hands the calling
// thread's namespace to a thread of its own (sysfs.go). Watch remembers the
// calling thread's namespace and subscribes there.
//
// A Kernel holds the located iptables programs, the iptables chains it read
// last (reused while the nftables generation shows them unchanged, see
// iptables.go), what its last Reconcile left (the baseline of Update, see
// update.go), and for the duration of one call netlink sockets of the
// calling thread's namespace (all requests of a call share them); it is
// safe for use by one goroutine at a time.
type Kernel struct {
	ipt *iptables.IPTables
	// save and restoreCmd are iptables-save and iptables-restore; nft
	// tells that they are the nf_tables flavour.
	save, restoreCmd string
	nft              bool
	chains           chainCache
	// During one call (see begin): a netlink handle and raw sockets of the
	// calling thread's namespace, the indexes of the links looked up, and
	// the requests made.
	nl    *netlink.Handle
	socks map[int]int
	seq   uint32
	index map[string]int
	count Requests
	// buf receives netlink answers.
	buf []byte
	// base is what Update builds on (nil: nothing, Update reconciles).
	base *baseline
}

// Requests counts what one call asked of the kernel.
type Requests struct {
	// Netlink is the number of netlink requests: one per dump (however
	// many objects it returns) and one per change of a route, neighbor,
	// FDB entry or set member; link changes take a few.
	Netlink int
	// Exec is the number of iptables programs run.
	Exec int
}

// Result is what one Reconcile did.
type Result struct {
	// Changes are the applied changes, in order (see Change.String).
	Changes []string
	// Conflicts are the foreign objects that were left alone.
	Conflicts []string
	// Requests are the reads and writes it took.
	Requests Requests
	// FullRead says why an Update read the whole state (as Reconcile
	// does) rather than the changed peers' objects; empty otherwise.
	FullRead string
}

// New locates iptables (IPv4) and returns a Kernel.
func New() (*Kernel, error) {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("netcfg: iptables: %w", err)
	}
	path, err := exec.LookPath("iptables")
	if err != nil {
		return nil, fmt.Errorf("netcfg: iptables: %w", err)
	}
	k := &Kernel{ipt: ipt}
	if k.save, k.restoreCmd, k.nft, err = lookIptables(path); err != nil {
		return nil, fmt.Errorf("netcfg: iptables: %w", err)
	}
	return k, nil
}

// Reconcile validates d, reads the kernel, plans and applies. Running it
// again with the same d changes nothing.
func (k *Kernel) Reconcile(d *Desired) (Result, error) {
	n := d.normalized()
	if err := n.validate(); err != nil {
		return Result{}, fmt.Errorf("netcfg: invalid desired state: %w", err)
	}
	return k.reconcile(n)
}

// reconcile is Reconcile of a normalized, valid Desired. A success is the
// baseline of the next Update.
func (k *Kernel) reconcile(n Desired) (Result, error) {
	k.base = nil
	if err := k.begin(); err != nil {
		return Result{}, err
	}
	defer k.end()
	a, err := k.read(&n)
	if err != nil {
		return Result{Requests: k.count}, err
	}
	p := newPlan(n, a)
	applied, err := k.apply(p)
	if err == nil {
		k.base = newBaseline(n, a, p.notes)
	}
	return Result{Changes: applied, Conflicts: conflictTexts(p.notes), Requests: k.count}, err
}

// Apply carries out the changes of p in order. A failing change does not
// stop the others (deletions of objects that are already gone count as
// done); the error lists every failure. applied holds the changes that
// succeeded.
func (k *Kernel) Apply(p Plan) (applied []string, err error) {
	k.base = nil
	if err := k.begin(); err != nil {
		return nil, err
	}
	defer k.end()
	return k.apply(p)
}

// begin starts a call: a netlink handle in the calling thread's namespace
// (end closes it and the raw sockets), no link indexes known, no requests
// counted.
func (k *Kernel) begin() error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netcfg: netlink: %w", err)
	}
	k.nl, k.index, k.count = h, map[string]int{}, Requests{}
	return nil
}

// end closes the sockets of the call.
func (k *Kernel) end() {
	k.nl.Close()
	k.nl = nil
	for proto, fd := range k.socks {
		unix.Close(fd)
		delete(k.socks, proto)
	}
}

func (k *Kernel) apply(p Plan) (applied []string, err error) {
	var errs []error
	for i, cerr := range k.runChanges(p.Changes) {
		c := p.Changes[i]
		if cerr != nil {
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
	if err := k.begin(); err != nil {
		return nil, err
	}
	defer k.end()
	n := d.normalized()
	return k.read(&n)
}

// read is Read of a normalized Desired.
func (k *Kernel) read(n *Desired) (*Actual, error) {
	a := &Actual{Chains: map[Chain][]string{}, Sets: map[string]IPSet{}, UnderlayMTU: 1500}

	links, err := k.listLinks()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	ours := map[int]bool{}
	linkAt := map[int]netlink.Link{}
	relevant := map[string]bool{n.Device: true}
	if n.Mode == ModeGRE {
		for _, p := range n.Peers {
			relevant[greDevice(n.Device, p.Name)] = true
		}
	}
	for _, l := range links {
		attrs := l.Attrs()
		names[attrs.Index] = attrs.Name
		linkAt[attrs.Index] = l
		ll := linkFrom(l)
		if ll.Owned() {
			ours[attrs.Index] = true
		}
		if ll.Owned() || relevant[attrs.Name] {
			a.Links = append(a.Links, ll)
		}
	}

	tunnel := -1 // index in a.Links of the desired VXLAN device, if ours
	if n.Mode == ModeVXLAN {
		for i, l := range a.Links {
			if l.Name == n.Device && l.Owned() && l.Kind == "vxlan" {
				if err := k.readVXLANEntries(a, l, len(n.Peers)+8); err != nil {
					return nil, err
				}
				tunnel = i
			}
		}
	}

	peerCIDRs := make([]netip.Prefix, 0, 2*len(n.Peers))
	for _, p := range n.Peers {
		peerCIDRs = append(peerCIDRs, p.CIDRs...)
	}
	routes, err := k.listRoutes(names, len(peerCIDRs)+16)
	if err != nil {
		return nil, err
	}
	a.Routes = make([]Route, 0, len(routes))
	defaultDev, defaultMetric := 0, -1
	for _, r := range routes {
		rr := r.Route
		if rr.Dst.Bits() == 0 {
			if r.ifindex != 0 && (defaultMetric < 0 || rr.Metric < defaultMetric) {
				defaultDev, defaultMetric = r.ifindex, rr.Metric
			}
		}
		switch {
		case rr.Protocol == RouteProtocol:
			a.Routes = append(a.Routes, rr)
		case rr.Dst.Bits() > 0 && slices.ContainsFunc(peerCIDRs, rr.Dst.Overlaps):
			a.ForeignRoutes = append(a.ForeignRoutes, rr)
		}
	}

	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { k.count.Netlink++; return k.nl.AddrList(nil, netlink.FAMILY_V4) })
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
	if l, ok := linkAt[underDev]; ok && l.Attrs().MTU > 0 {
		a.UnderlayMTU = l.Attrs().MTU
	}
	if n.Mode == ModeVXLAN {
		var dev string
		if tunnel >= 0 {
			dev = a.Links[tunnel].Name
		}
		rps, queues, err := readSteering(dev, names[underDev])
		if err != nil {
			return nil, fmt.Errorf("netcfg: read receive steering: %w", err)
		}
		if tunnel >= 0 {
			a.Links[tunnel].RPS = rps
		}
		a.UnderlayRxQueues, a.CPUs = queues, runtime.NumCPU()
		if a.UnderlayRxOnSender, err = receivesOnSender(linkAt[underDev]); err != nil {
			return nil, fmt.Errorf("netcfg: read receive steering: %w", err)
		}
	}

	if n.Mode == ModeGRE {
		a.UnderlaySource = map[netip.Addr]netip.Addr{}
		for _, p := range n.Peers {
			k.count.Netlink++
			rs, err := k.nl.RouteGet(p.Underlay.Addr().AsSlice())
			if err != nil || len(rs) == 0 {
				continue // unreachable now: the tunnel gets no fixed local address
			}
			if src, ok := netip.AddrFromSlice(rs[0].Src); ok {
				a.UnderlaySource[p.Underlay.Addr()] = src.Unmap()
			}
		}
	}

	if a.IPForward, err = readIPForward(); err != nil {
		return nil, err
	}

	for name := range setTypes {
		hint := len(n.Peers)
		if name == SetNets {
			hint = len(peerCIDRs)
		}
		set, ok, err := k.listSet(name, hint)
		if err != nil {
			return nil, err
		}
		if ok {
			a.Sets[name] = set
		}
	}
	if err := k.readChains(a); err != nil {
		return nil, err
	}
	return a, nil
}

// listLinks dumps every link of the calling thread's namespace.
func (k *Kernel) listLinks() ([]netlink.Link, error) {
	return dump("links", func() ([]netlink.Link, error) { k.count.Netlink++; return k.nl.LinkList() })
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

func (k *Kernel) readVXLANEntries(a *Actual, l Link, hint int) error {
	fdb, err := k.fdbList(l.Index, l.Port, hint)
	if err != nil {
		return err
	}
	for i := range fdb {
		fdb[i].Device = l.Name
	}
	a.FDB = fdb
	a.Neighbors, err = k.listNeighbors(l.Index, l.Name, hint)
	return err
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

// readIPForward reads net.ipv4.ip_forward.
func readIPForward() (bool, error) {
	fw, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return false, fmt.Errorf("netcfg: read ip_forward: %w", err)
	}
	return strings.TrimSpace(string(fw)) == "1", nil
}

func (k *Kernel) enableForwarding() error {
	return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
}

// linkAdd creates a link. The kernel ignores IFLA_IFALIAS when creating
// links, so the link is created under a temporary name, given its alias and
// only then renamed: a link with cframe's name never lacks cframe's alias.
// With l.RPS it gets receive packet steering before it comes up.
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
	// LinkAdd looks the new link up to learn its index: two requests.
	k.count.Netlink += 2
	if err := k.nl.LinkAdd(link); err != nil {
		return err
	}
	k.count.Netlink += 3
	err := k.nl.LinkSetAlias(link, l.Alias)
	if err == nil {
		err = k.nl.LinkSetName(link, l.Name)
	}
	if err != nil {
		k.nl.LinkDel(link)
		return err
	}
	k.index[l.Name] = link.Attrs().Index
	if l.RPS {
		if err := setRPS(l.Name); err != nil {
			return fmt.Errorf("set RPS: %w", err)
		}
	}
	return k.nl.LinkSetUp(link)
}

// tempLinkPrefix starts the names of links being created.
const tempLinkPrefix = "cfnew"

// tempLinkName returns a unique name for a link being created.
func tempLinkName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return tempLinkPrefix + hex.EncodeToString(b)
}

// ifindex returns the index of link name, looked up once per call.
func (k *Kernel) ifindex(name string) (int, error) {
	if i, ok := k.index[name]; ok {
		return i, nil
	}
	k.count.Netlink++
	l, err := k.nl.LinkByName(name)
	if err != nil {
		return 0, err
	}
	k.index[name] = l.Attrs().Index
	return l.Attrs().Index, nil
}

// withLink calls f, which sends one request about link name, with the
// link's index.
func (k *Kernel) withLink(name string, f func(index int) error) error {
	i, err := k.ifindex(name)
	if err != nil {
		return err
	}
	k.count.Netlink++
	return f(i)
}

// byIndex is a link for the netlink calls that only use its index.
func byIndex(i int) netlink.Link { return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: i}} }

func (k *Kernel) linkDel(name string) error {
	err := k.withLink(name, func(i int) error { return k.nl.LinkDel(byIndex(i)) })
	delete(k.index, name)
	return ignoreGone(err)
}

func (k *Kernel) linkSetMTU(name string, mtu int) error {
	return k.withLink(name, func(i int) error { return k.nl.LinkSetMTU(byIndex(i), mtu) })
}

func (k *Kernel) linkSetMAC(name string, mac net.HardwareAddr) error {
	return k.withLink(name, func(i int) error { return k.nl.LinkSetHardwareAddr(byIndex(i), mac) })
}

func (k *Kernel) linkSetAlias(name, alias string) error {
	return k.withLink(name, func(i int) error { return k.nl.LinkSetAlias(byIndex(i), alias) })
}

func (k *Kernel) linkSetRPS(name string) error { return setRPS(name) }

func (k *Kernel) linkSetUp(name string) error {
	return k.withLink(name, func(i int) error { return k.nl.LinkSetUp(byIndex(i)) })
}

func (k *Kernel) fdbSet(e FDBEntry) error {
	return k.withLink(e.Device, func(i int) error {
		return k.fdbRequest(unix.RTM_NEWNEIGH, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, i, e)
	})
}

func (k *Kernel) fdbDel(e FDBEntry) error {
	return ignoreGone(k.withLink(e.Device, func(i int) error {
		return k.fdbRequest(unix.RTM_DELNEIGH, 0, i, e)
	}))
}

func (k *Kernel) neighSet(n Neighbor) error {
	return k.withLink(n.Device, func(i int) error {
		return k.nl.NeighSet(&netlink.Neigh{LinkIndex: i, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: n.MAC})
	})
}

func (k *Kernel) neighDel(n Neighbor) error {
	return ignoreGone(k.withLink(n.Device, func(i int) error {
		return k.nl.NeighDel(&netlink.Neigh{LinkIndex: i, Family: netlink.FAMILY_V4, IP: n.IP.AsSlice()})
	}))
}

func (k *Kernel) routeSet(r Route, replace bool) error {
	return k.withLink(r.Device, func(i int) error {
		nr := &netlink.Route{LinkIndex: i, Dst: ipNet(r.Dst), Gw: ipOrNil(r.Gw), Src: ipOrNil(r.Src),
			Protocol: netlink.RouteProtocol(r.Protocol), Priority: r.Metric, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_UNIVERSE}
		if !r.Gw.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
		if replace {
			return k.nl.RouteReplace(nr)
		}
		return k.nl.RouteAdd(nr)
	})
}

// routeDel deletes one of cframe's routes; the kernel only matches routes
// with our protocol, so a foreign route with the same destination is safe.
func (k *Kernel) routeDel(r Route) error {
	k.count.Netlink++
	return ignoreGone(k.nl.RouteDel(&netlink.Route{Dst: ipNet(r.Dst), Protocol: netlink.RouteProtocol(r.Protocol),
		Priority: r.Metric, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_NOWHERE}))
}

// Cleanup removes everything cframe created — links with its alias,
// main-table routes with RouteProtocol, its iptables chains and the jumps
// into them, its ipsets — and nothing else. It returns what it removed.
func (k *Kernel) Cleanup() ([]string, error) {
	k.base = nil
	if err := k.begin(); err != nil {
		return nil, err
	}
	defer k.end()
	var done []string
	var errs []error
	run := func(cs []Change) {
		for i, err := range k.runChanges(cs) {
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", cs[i], err))
				continue
			}
			done = append(done, cs[i].String())
		}
	}
	links, err := k.listLinks()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	var dels []Change
	for _, l := range links {
		ll := linkFrom(l)
		names[ll.Index] = ll.Name
		if ll.Owned() {
			dels = append(dels, Change{"link del " + ll.Name, func(k *Kernel) error { return k.linkDel(ll.Name) }, nil})
		}
	}
	run(dels)
	// Listed after the links are gone: they take their routes along.
	routes, err := k.listRoutes(names, 16)
	if err != nil {
		return done, err
	}
	dels = nil
	for _, r := range routes {
		if rr := r.Route; rr.Protocol == RouteProtocol {
			dels = append(dels, Change{"route del " + rr.String(), func(k *Kernel) error { return k.routeDel(rr) }, nil})
		}
	}
	run(dels)
	a := &Actual{Chains: map[Chain][]string{}, Sets: map[string]IPSet{}}
	if err := k.readChains(a); err != nil {
		return done, err
	}
	for name := range setTypes {
		set, ok, err := k.listSet(name, 16)
		if err != nil {
			return done, err
		}
		if ok {
			a.Sets[name] = set
		}
	}
	pl := &planner{a: a}
	for _, h := range hooks {
		pl.removeChain(h.own, h.from)
	}
	for _, name := range []string{SetPeers, SetNets} {
		pl.removeSet(name)
	}
	run(pl.ipDel)
	run(pl.setDel)
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
