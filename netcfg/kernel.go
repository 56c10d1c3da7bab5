package netcfg

import (
	"errors"
	"fmt"
	"strings"
)

// Kernel reads and changes the kernel state cframe owns.
//
// Namespace: every method works in the network namespace of the calling OS
// thread. The agent simply runs inside its namespace; to drive another one,
// call the methods from a goroutine locked (runtime.LockOSThread) into that
// namespace (internal/topo.Do does exactly that). A call opens its netlink
// sockets on the calling thread and runs iptables from it (see session),
// and Reconcile, Update and Cleanup start no goroutines, but for the sysfs
// access of receive packet steering, which hands the calling thread's
// namespace to a thread of its own (sysfs.go). Watch remembers the calling
// thread's namespace and subscribes there.
//
// Between calls a Kernel holds the located iptables programs, the iptables
// chains it read last (reused while the nftables generation shows them
// unchanged, see chains.go) and what its last Reconcile left (the baseline
// of Update, see update.go); it is safe for use by one goroutine at a time.
type Kernel struct {
	ipt iptables
	// ipt6 is ip6tables (chains6.go), located on first use (ip6tables
	// below); nil when the host has none. quiet6 holds the namespaces where
	// its last read found none of cframe's chains (see readChains6).
	ipt6        *iptables
	ipt6Program string
	ipt6Located bool
	quiet6      map[nsID]bool
	chains      chainCache
	// base is what Update builds on (nil: nothing, Update reconciles).
	base *baseline
}

// Requests counts what one call asked of the kernel.
type Requests struct {
	// Netlink is the number of netlink requests: one per dump (however
	// many objects it returns), one per get, and one per change of a
	// route, neighbor, FDB entry or set member; link changes take a few.
	Netlink int
	// Exec is the number of programs run (iptables-save, iptables-restore,
	// iptables).
	Exec int
}

func (r Requests) plus(o Requests) Requests {
	return Requests{Netlink: r.Netlink + o.Netlink, Exec: r.Exec + o.Exec}
}

// Result is what one Reconcile or Update did.
type Result struct {
	// Changes are the applied changes, in order, each in ip/bridge/
	// iptables/sysctl command syntax.
	Changes []string
	// Conflicts are the foreign objects that were left alone.
	Conflicts []string
	// Requests are the reads and writes it took.
	Requests Requests
	// Kinds counts the applied Changes by kind of kernel object (link,
	// fdb, neigh, route, ipset, iptables, sysctl).
	Kinds map[string]int
	// Targeted: an Update read and planned only the changed peers' objects.
	Targeted bool
	// FallbackReason says why an Update did a full Reconcile instead, which
	// reads everything; empty otherwise.
	FallbackReason string
}

// New locates iptables and returns a Kernel (ip6tables, if the host has
// it, is located when first needed).
func New() (*Kernel, error) { return newKernel("iptables") }

// newKernel returns a Kernel that drives the iptables program named
// program (and program-save and program-restore beside it), and its
// ip6tables counterpart when there is one.
func newKernel(program string) (*Kernel, error) {
	ipt, err := lookIptables(program, false)
	if err != nil {
		return nil, fmt.Errorf("netcfg: iptables: %w", err)
	}
	return &Kernel{ipt: ipt, ipt6Program: strings.Replace(program, "iptables", "ip6tables", 1)}, nil
}

// ip6tables returns the ip6tables programs, located on the first call
// (an IPv4-only edge may never need them); nil when the host has none.
func (k *Kernel) ip6tables() *iptables {
	if !k.ipt6Located {
		k.ipt6Located = true
		if ipt6, err := lookIptables(k.ipt6Program, true); err == nil {
			k.ipt6 = &ipt6
		}
	}
	return k.ipt6
}

// Reconcile validates d, reads the kernel, plans and applies. Running it
// again with the same d changes nothing.
func (k *Kernel) Reconcile(d *Desired) (Result, error) {
	n, err := prepare(d)
	if err != nil {
		return Result{}, err
	}
	return k.reconcile(n)
}

// reconcile is Reconcile of a prepared Desired. A success is the baseline
// of the next Update.
func (k *Kernel) reconcile(n Desired) (Result, error) {
	k.base = nil
	res, p, a, err := k.pass(n, nil)
	if err == nil {
		k.base = newBaseline(n, a, p.notes)
	}
	return res, err
}

// Update is Reconcile for a change of the peers, at a cost that grows with
// the change rather than with the mesh. It compares d with the desired state
// of the last successful Reconcile or Update (in the same namespace), reads
// only the objects of the peers that joined, left or changed — their FDB
// entries, neighbors, routes and set members, one netlink get each — plus
// the device and the firewall chains, plans over that part and applies it.
// The objects of unchanged peers are neither read nor touched: keeping them
// in line is the job of Reconcile, which the agent runs on netlink drift
// events and periodically.
//
// Update does a full Reconcile instead (and says why in
// Result.FallbackReason) when it has nothing to build on, when anything
// besides the peers changed, in GRE mode, when many peers changed (dumping
// everything is then cheaper), when the device is not as the last Reconcile
// left it, or when a targeted read or a change fails.
func (k *Kernel) Update(d *Desired) (Result, error) {
	n, err := prepare(d)
	if err != nil {
		return Result{}, err
	}
	res, fallback := k.updatePeers(n)
	if fallback == "" {
		res.Targeted = true
		return res, nil
	}
	full, err := k.reconcile(n)
	full.FallbackReason = fallback
	full.Changes = append(res.Changes, full.Changes...)
	full.Requests = full.Requests.plus(res.Requests)
	for kind, n := range res.Kinds {
		if full.Kinds == nil {
			full.Kinds = map[string]int{}
		}
		full.Kinds[kind] += n
	}
	return full, err
}

// prepare returns d normalized, or why it cannot be applied.
func prepare(d *Desired) (Desired, error) {
	n := d.normalized()
	if err := n.validate(); err != nil {
		return n, fmt.Errorf("netcfg: invalid desired state: %w", err)
	}
	return n, nil
}

// errRebuild: a targeted pass would create or recreate the tunnel device.
var errRebuild = errors.New("the tunnel device needs recreating")

// pass is the pipeline of Reconcile and Update, read → plan → apply, in one
// session: it reads the kernel — all of it, or with sc only the objects
// under the keys of sc's peers —, plans d over what it found and applies
// the plan. a is nil when the read failed. With sc it applies nothing when
// the plan creates or recreates the tunnel device (errRebuild): the
// targeted read has not got the entries to put back on it.
func (k *Kernel) pass(d Desired, sc *scope) (res Result, p plan, a *actual, err error) {
	s, err := k.begin()
	if err != nil {
		return res, p, nil, err
	}
	defer func() { res.Requests, res.Kinds = s.end(), s.kinds }()
	if a, err = s.read(&d, sc); err != nil {
		return res, p, nil, err
	}
	p = newPlan(d, a)
	if sc != nil && p.rebuilds {
		return res, p, a, errRebuild
	}
	res.Changes, err = s.apply(p.changes)
	res.Conflicts = conflictTexts(p.notes)
	return res, p, a, err
}

// read reads what the plan of d depends on, object by object (each in its
// own file): all of it, or with sc only the objects under the keys of sc's
// peers, the facts that do not depend on the peers coming from sc.
func (s *session) read(d *Desired, sc *scope) (*actual, error) {
	r := newReading(d, sc)
	for _, step := range []func(*reading) error{
		s.readLinks,
		s.readWireGuard,
		s.readFDB,
		s.readNeighbors,
		s.readNeighbors6,
		s.readLinkLocal,
		s.readRoutes,
		s.readUnderlay,
		s.readVIP,
		s.readSteering,
		s.readTxCsum,
		s.readIPForward,
		s.readSets,
		s.readChains,
	} {
		if err := step(r); err != nil {
			return nil, err
		}
	}
	return r.a, nil
}

// apply carries out changes in order; a failing change does not stop the
// others (deleting what is already gone counts as done). A run of iptables
// commands goes to iptables in one batch per table (see iptablesRun). It
// returns the changes that succeeded, counted by kind in the session (the
// one place changes are counted), and an error listing every failure.
func (s *session) apply(changes []change) (applied []string, err error) {
	var errs []error
	for i := 0; i < len(changes); {
		j := i + 1
		var outcomes []error
		if changes[i].iptables == nil {
			outcomes = []error{changes[i].do(s)}
		} else {
			for j < len(changes) && changes[j].iptables != nil {
				j++
			}
			outcomes = s.iptablesRun(changes[i:j])
		}
		for n, err := range outcomes {
			c := changes[i+n]
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c.desc, err))
				continue
			}
			applied = append(applied, c.desc)
			if s.kinds == nil {
				s.kinds = map[string]int{}
			}
			s.kinds[c.kind()]++
		}
		i = j
	}
	if len(errs) > 0 {
		return applied, fmt.Errorf("netcfg: %d of %d changes failed: %w", len(errs), len(changes), errors.Join(errs...))
	}
	return applied, nil
}

// Cleanup removes everything cframe created — links with its alias,
// main-table routes with RouteProtocol, its VIP addresses, its iptables
// chains and the jumps into them, its ipsets — and nothing else. It returns
// what it removed.
func (k *Kernel) Cleanup() ([]string, error) {
	k.base, k.quiet6 = nil, nil
	s, err := k.begin()
	if err != nil {
		return nil, err
	}
	defer s.end()
	var done []string
	var errs []error
	run := func(changes []change) {
		applied, err := s.apply(changes)
		done = append(done, applied...)
		errs = append(errs, err)
	}
	// A desired state without device or peers: the read finds only what is
	// cframe's.
	r := newReading(&Desired{}, nil)
	if err := s.readLinks(r); err != nil {
		return nil, err
	}
	var dels []change
	for _, l := range r.a.Links {
		dels = append(dels, linkDel(l.Name, ""))
	}
	run(dels)
	// Read after the links are gone: they take their routes along.
	if err := s.readRoutes(r); err != nil {
		return done, err
	}
	dels = nil
	for _, rt := range r.a.Routes {
		dels = append(dels, routeDel(rt))
	}
	run(dels)
	if err := errors.Join(s.readUnderlay(r), s.readVIP(r), s.readSets(r), s.readChains(r)); err != nil {
		return done, err
	}
	p := &planner{a: r.a}
	p.planVIP() // nothing desired: removes cframe's VIP addresses
	p.removeChains()
	p.removeSets()
	run(p.plan().changes)
	return done, errors.Join(errs...)
}
