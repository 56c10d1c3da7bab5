package netcfg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// iptables is driven as a whole-ruleset tool, which is what it is: every
// iptables run fetches the ruleset, so cframe reads all of its chains with
// one iptables-save and writes a run of changes with one iptables-restore
// --noflush (atomic per table, other chains untouched), instead of one
// program per chain or rule.
//
// With the nf_tables flavour of iptables, the chains are not even read when
// nothing changed: the kernel bumps the nftables generation on every
// ruleset change, by anyone, so the chains read under one generation are
// still current while the generation stays the same.

// chainCache is the chains of one network namespace as read under one
// nftables generation.
type chainCache struct {
	ns     nsID
	gen    uint32
	chains map[Chain][]string
}

// nsID identifies a network namespace.
type nsID struct{ dev, ino uint64 }

// threadNS identifies the calling thread's network namespace.
func threadNS() (nsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nsID{}, err
	}
	return nsID{st.Dev, st.Ino}, nil
}

// nftGeneration returns the nftables ruleset generation of the calling
// thread's namespace (NFT_MSG_GETGEN).
func (k *Kernel) nftGeneration() (uint32, error) {
	k.count.Netlink++
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	gen, ok := uint32(0), false
	err := k.roundTrip(unix.NETLINK_NETFILTER, req, func(m []byte) error {
		if len(m) >= nl.SizeofNfgenmsg {
			walkAttrs(m[nl.SizeofNfgenmsg:], func(typ uint16, v []byte) {
				if typ == unix.NFTA_GEN_ID && len(v) == 4 {
					gen, ok = binary.BigEndian.Uint32(v), true
				}
			})
		}
		return nil
	})
	if err == nil && !ok {
		err = errors.New("no nftables generation in the answer")
	}
	return gen, err
}

// readChains fills a.Chains with every chain cframe owns or hooks into.
func (k *Kernel) readChains(a *Actual) error {
	var key chainCache
	cacheable := false
	if k.nft {
		ns, err1 := threadNS()
		gen, err2 := k.nftGeneration()
		key, cacheable = chainCache{ns: ns, gen: gen}, err1 == nil && err2 == nil
	}
	if cacheable && k.chains.chains != nil && k.chains.ns == key.ns && k.chains.gen == key.gen {
		for c, rules := range k.chains.chains {
			a.Chains[c] = rules
		}
		return nil
	}
	k.chains = chainCache{}
	k.count.Exec++
	out, err := exec.Command(k.save).Output()
	if err != nil {
		return fmt.Errorf("netcfg: %s: %w%s", k.save, err, stderr(err))
	}
	chains := parseSave(string(out))
	for c, rules := range chains {
		a.Chains[c] = rules
	}
	if cacheable {
		key.chains = chains
		k.chains = key
	}
	return nil
}

// parseSave returns, from iptables-save output, the rules (as "-A CHAIN
// ..." lines) of every chain cframe owns or hooks into that exists.
func parseSave(out string) map[Chain][]string {
	relevant := map[Chain]bool{}
	for _, h := range hooks {
		relevant[h.own], relevant[h.from] = true, true
	}
	chains := map[Chain][]string{}
	table := ""
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			c := Chain{table, strings.Fields(l[1:])[0]}
			if relevant[c] && chains[c] == nil {
				chains[c] = []string{}
			}
		case strings.HasPrefix(l, "-A "):
			c := Chain{table, strings.Fields(l)[1]}
			if relevant[c] {
				chains[c] = append(chains[c], normalizeLine(l))
			}
		}
	}
	return chains
}

// restore applies changes of one table with one iptables-restore
// --noflush: atomically, all or nothing.
func (k *Kernel) restore(table string, changes []Change) error {
	var in strings.Builder
	fmt.Fprintf(&in, "*%s\n", table)
	for _, c := range changes {
		fmt.Fprintf(&in, "%s\n", c.ipt.line)
	}
	in.WriteString("COMMIT\n")
	k.count.Exec++
	cmd := exec.Command(k.restoreCmd, "--noflush")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", k.restoreCmd, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// stderr returns ": <stderr>" of a failed command, if it wrote any.
func stderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// lookIptables locates iptables-save and iptables-restore next to the
// iptables program in use and tells whether it is the nf_tables flavour.
func lookIptables(iptablesPath string) (save, restore string, nft bool, err error) {
	if save, err = exec.LookPath("iptables-save"); err != nil {
		return "", "", false, err
	}
	if restore, err = exec.LookPath("iptables-restore"); err != nil {
		return "", "", false, err
	}
	v, err := exec.Command(iptablesPath, "--version").Output()
	if err != nil {
		return "", "", false, fmt.Errorf("%s --version: %w", iptablesPath, err)
	}
	return save, restore, bytes.Contains(v, []byte("nf_tables")), nil
}

// runChanges applies changes in order and returns each one's outcome. A
// run of consecutive iptables changes is applied with one iptables-restore
// per table (the tables are independent) — or, when that fails (a rule to
// delete was already gone, say), change by change, so that every change
// gets its own outcome.
func (k *Kernel) runChanges(changes []Change) []error {
	errs := make([]error, len(changes))
	for i := 0; i < len(changes); {
		if changes[i].ipt == nil {
			errs[i] = changes[i].apply(k)
			i++
			continue
		}
		j := i
		var tables []string
		byTable := map[string][]int{}
		for ; j < len(changes) && changes[j].ipt != nil; j++ {
			t := changes[j].ipt.table
			if byTable[t] == nil {
				tables = append(tables, t)
			}
			byTable[t] = append(byTable[t], j)
		}
		for _, t := range tables {
			idx := byTable[t]
			if len(idx) > 1 {
				cs := make([]Change, len(idx))
				for n, x := range idx {
					cs[n] = changes[x]
				}
				if k.restore(t, cs) == nil {
					continue
				}
			}
			for _, x := range idx {
				errs[x] = changes[x].apply(k)
			}
		}
		i = j
	}
	return errs
}
