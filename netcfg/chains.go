package netcfg

import (
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"
)

// iptables chains: cframe's own chains, each hooked into a built-in chain
// by one jump rule, hold a handful of rules each; the rules that depend on
// the peers match an ipset (ipset.go) instead of naming peers. Commands go
// to iptables through iptables.go.

// chain names an iptables chain in a table.
type chain struct {
	Table string
	Name  string
}

// The iptables chains cframe owns, and where each is hooked in.
var (
	// chainForward accepts traffic between the tunnel and the local CIDRs.
	chainForward = chain{"filter", "CFRAME-FORWARD"}
	// chainInput admits the tunnel protocol from known peers only.
	chainInput = chain{"filter", "CFRAME-INPUT"}
	// chainMSS clamps the TCP MSS of connections through the tunnel.
	chainMSS = chain{"mangle", "CFRAME-MSS"}
	// chainNAT SNATs tunnel traffic entering the LAN (Desired.Masquerade).
	chainNAT = chain{"nat", "CFRAME-POSTROUTING"}
)

// hooks maps each owned chain to the built-in chain that jumps to it.
var hooks = []struct{ own, from chain }{
	{chainForward, chain{"filter", "FORWARD"}},
	{chainInput, chain{"filter", "INPUT"}},
	{chainMSS, chain{"mangle", "FORWARD"}},
	{chainNAT, chain{"nat", "POSTROUTING"}},
}

// rule is one iptables rule: the arguments handed to iptables and the
// canonical "-A CHAIN ..." line iptables -S prints for it. The arguments
// are written in iptables' own print order so that the two stay equal.
type rule struct {
	chain chain
	args  []string
}

// line returns the rule as "iptables -S" prints it.
func (r rule) line() string {
	return "-A " + r.chain.Name + " " + joinArgs(r.args)
}

// jumpRule is the hook rule "-A <from> -j <own>".
func jumpRule(from, own chain) rule {
	return rule{from, []string{"-j", own.Name}}
}

// forwardRules accept packets from the tunnel device into a local network
// and from it into the tunnel.
func forwardRules(dev string, local netip.Prefix) []rule {
	return []rule{
		{chainForward, []string{"-d", local.String(), "-i", dev, "-j", "ACCEPT"}},
		{chainForward, []string{"-s", local.String(), "-o", dev, "-j", "ACCEPT"}},
	}
}

// inputAccept admits the tunnel protocol from the peers (setPeers).
func inputAccept(mode Mode, port uint16) rule {
	return rule{chainInput, append(tunnelMatch(mode, port), "-m", "set", "--match-set", setPeers, "src", "-j", "ACCEPT")}
}

// inputWireGuard admits the tunnel protocol out of the WireGuard device dev:
// what the kernel decrypted there came from an authenticated peer's mesh
// address.
func inputWireGuard(dev string, port uint16) rule {
	return rule{chainInput, append([]string{"-i", dev}, append(tunnelMatch(ModeVXLAN, port), "-j", "ACCEPT")...)}
}

// inputDrop drops the tunnel protocol from everyone else; it must stay the
// last rule of chainInput.
func inputDrop(mode Mode, port uint16) rule {
	return rule{chainInput, append(tunnelMatch(mode, port), "-j", "DROP")}
}

func tunnelMatch(mode Mode, port uint16) []string {
	if mode == ModeGRE {
		return []string{"-p", "gre"}
	}
	return []string{"-p", "udp", "-m", "udp", "--dport", strconv.Itoa(int(port))}
}

// mssRules clamp the MSS of TCP SYN and SYN-ACK segments leaving and entering
// dev to what fits the tunnel MTU less IPv4's 20 and TCP's 20 bytes of
// headers, never raising it.
func mssRules(dev string, mtu int) []rule { return clampRules(chainMSS, dev, mtu-40) }

// clampRules are the rules of MSS chain c that clamp to mss on dev.
func clampRules(c chain, dev string, mss int) []rule {
	var out []rule
	for _, dir := range []string{"-o", "-i"} {
		out = append(out, rule{c, []string{dir, dev, "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN",
			"-m", "tcpmss", "--mss", fmt.Sprintf("%d:65535", mss+1), "-j", "TCPMSS", "--set-mss", strconv.Itoa(mss)}})
	}
	return out
}

// natRule SNATs traffic from the peers' networks (setNets) into a local
// network to the LAN address (MASQUERADE when the LAN address is unknown).
func natRule(local netip.Prefix, lan netip.Addr) rule { return snatRule(chainNAT, setNets, local, lan) }

// snatRule is natRule in NAT chain c, matching set.
func snatRule(c chain, set string, local netip.Prefix, lan netip.Addr) rule {
	args := []string{"-d", local.String(), "-m", "set", "--match-set", set, "src"}
	if lan.IsValid() {
		args = append(args, "-j", "SNAT", "--to-source", lan.String())
	} else {
		args = append(args, "-j", "MASQUERADE")
	}
	return rule{c, args}
}

// readChains reads every chain cframe owns or hooks into, with one
// iptables-save (there is no key to read less by). With the nf_tables
// flavour of iptables the chains are not even read when nothing changed:
// the kernel bumps the nftables generation on every ruleset change, by
// anyone, so the chains the Kernel read under one generation are still
// current while the generation stays the same.
func (s *session) readChains(r *reading) error {
	gen, cacheable := s.rulesetGeneration()
	chains := s.k.chains.chains
	if !cacheable || chains == nil || s.k.chains.gen != gen {
		s.k.chains = chainCache{}
		out, err := s.execute("", s.k.ipt.save)
		if err != nil {
			return fmt.Errorf("netcfg: %w", err)
		}
		chains = parseSave(string(out), "")
		if err := s.readChains6(r, chains); err != nil {
			return err
		}
		if cacheable {
			s.k.chains = chainCache{gen: gen, chains: chains}
		}
	}
	maps.Copy(r.a.Chains, chains)
	r.a.IP6tables = (wantsIPv6(r.d) || r.d.underlay6()) && s.k.ip6tables() != nil
	return nil
}

// chainCache is the chains of one network namespace as read under one
// nftables generation.
type chainCache struct {
	gen    generation
	chains map[chain][]string
}

// parseSave returns, from iptables-save output, the rules (as "-A CHAIN
// ..." lines) of every chain cframe owns or hooks into that exists; prefix
// goes before the table names (table6's, for ip6tables-save output).
func parseSave(out, prefix string) map[chain][]string {
	relevant := map[chain]bool{}
	for _, h := range append(hooks, hooks6...) {
		relevant[h.own], relevant[h.from] = true, true
	}
	chains := map[chain][]string{}
	table := ""
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = prefix + l[1:]
		case strings.HasPrefix(l, ":"):
			c := chain{table, strings.Fields(l[1:])[0]}
			if relevant[c] && chains[c] == nil {
				chains[c] = []string{}
			}
		case strings.HasPrefix(l, "-A "):
			c := chain{table, strings.Fields(l)[1]}
			if relevant[c] {
				chains[c] = append(chains[c], normalizeLine(l))
			}
		}
	}
	return chains
}

// planChains makes cframe's chains hold exactly the rules for the usable
// tunnel devices, the local networks and the sets that are ready, each
// hooked in once; the NAT chain exists only under Masquerade.
func (p *planner) planChains() {
	want := map[chain][]rule{}
	for _, dev := range p.tunnels {
		for _, local := range p.d.LocalCIDRs {
			if !isV6(local) {
				want[chainForward] = append(want[chainForward], forwardRules(dev, local)...)
			}
		}
		want[chainMSS] = append(want[chainMSS], mssRules(dev, p.mtu)...)
	}
	if p.setReady[setPeers] {
		want[chainInput] = append(want[chainInput], inputAccept(p.d.Mode, p.d.Port))
	}
	if wg := p.d.WireGuard; wg != nil && p.usable[wg.Device] {
		want[chainInput] = append(want[chainInput], inputWireGuard(wg.Device, p.d.Port))
	}
	want[chainInput] = append(want[chainInput], inputDrop(p.d.Mode, p.d.Port))
	masquerade := p.d.Masquerade && p.setReady[setNets]
	if masquerade {
		for _, local := range p.d.LocalCIDRs {
			if !isV6(local) {
				want[chainNAT] = append(want[chainNAT], natRule(local, p.lan))
			}
		}
	}
	for _, h := range hooks {
		if h.own == chainNAT && !masquerade {
			p.removeChain(h.own, h.from)
			continue
		}
		p.syncChain(h.own, want[h.own], h.own == chainInput)
		p.syncHook(h.from, h.own)
	}
	p.planChains6()
}

// syncChain makes chain c hold exactly rules, inserting missing rules at
// the top before deleting stale ones. With terminal, the last rule of rules
// must end up last in the chain; it is re-appended (then the old copy
// deleted) when something else follows it.
func (p *planner) syncChain(c chain, rules []rule, terminal bool) {
	have, exists := p.a.Chains[c]
	if !exists {
		p.add(stageRulesAdd, chainNew(c))
	}
	count := map[string]int{}
	last := map[string]int{}
	for i, l := range have {
		count[l]++
		last[l] = i
	}
	wantSet := map[string]bool{}
	for _, r := range rules {
		wantSet[r.line()] = true
	}
	body := rules
	var term *rule
	if terminal && len(rules) > 0 {
		term, body = &rules[len(rules)-1], rules[:len(rules)-1]
	}
	for i := len(body) - 1; i >= 0; i-- {
		if count[body[i].line()] == 0 {
			p.add(stageRulesAdd, ruleInsert(body[i]))
		}
	}
	dels := map[string]int{}
	for l, n := range count {
		if wantSet[l] {
			dels[l] = n - 1 // duplicates; the last copy survives
		} else {
			dels[l] = n
		}
	}
	if term != nil {
		tl := term.line()
		misplaced := false
		for l, i := range last {
			if l != tl && wantSet[l] && i > last[tl] {
				misplaced = true
			}
		}
		if count[tl] == 0 || misplaced {
			p.add(stageRulesAdd, ruleAppend(*term))
		}
		if misplaced {
			dels[tl] = count[tl]
		}
	}
	// Deletes in chain order, so that plans are deterministic.
	for _, l := range have {
		if dels[l] > 0 {
			dels[l]--
			p.add(stageRulesDel, ruleDelete(c, l))
		}
	}
}

// syncHook keeps exactly one "-j own" rule in the built-in chain from,
// inserting it at the top when missing.
func (p *planner) syncHook(from, own chain) {
	j := jumpRule(from, own)
	n := 0
	for _, l := range p.a.Chains[from] {
		if l == j.line() {
			n++
		}
	}
	if n == 0 {
		p.add(stageRulesAdd, ruleInsert(j))
	}
	for ; n > 1; n-- {
		p.add(stageRulesDel, ruleDelete(from, j.line()))
	}
}

// removeChain unhooks and deletes an owned chain that is not wanted.
func (p *planner) removeChain(own, from chain) {
	j := jumpRule(from, own)
	for _, l := range p.a.Chains[from] {
		if l == j.line() {
			p.add(stageRulesDel, ruleDelete(from, l))
		}
	}
	if have, ok := p.a.Chains[own]; ok {
		if len(have) > 0 {
			p.add(stageRulesDel, chainFlush(own))
		}
		p.add(stageRulesDel, chainDelete(own))
	}
}

// removeChains unhooks and deletes every chain of cframe's (Cleanup).
func (p *planner) removeChains() {
	for _, h := range append(hooks, hooks6...) {
		p.removeChain(h.own, h.from)
	}
}

// Chain operations: iptables commands, run in a batch with their neighbours
// (see iptablesRun).

func chainNew(c chain) change    { return iptablesChange(c.Table, "-N "+c.Name) }
func chainFlush(c chain) change  { return iptablesChange(c.Table, "-F "+c.Name) }
func chainDelete(c chain) change { return iptablesChange(c.Table, "-X "+c.Name) }

// ruleInsert inserts r at the top of its chain.
func ruleInsert(r rule) change {
	return iptablesChange(r.chain.Table, fmt.Sprintf("-I %s 1 %s", r.chain.Name, joinArgs(r.args)))
}

// ruleAppend appends r to its chain.
func ruleAppend(r rule) change {
	return iptablesChange(r.chain.Table, "-A "+r.chain.Name+" "+joinArgs(r.args))
}

// ruleDelete deletes the first rule of chain c that matches line (as
// "iptables -S" prints it); one that is already gone counts as deleted.
func ruleDelete(c chain, line string) change {
	return iptablesChange(c.Table, "-D "+strings.TrimPrefix(line, "-A "))
}
