package netcfg

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Chain names an iptables chain in a table.
type Chain struct {
	Table string
	Name  string
}

// The iptables chains cframe owns, and where each is hooked in.
var (
	// ChainForward accepts traffic between the tunnel and the local CIDRs.
	ChainForward = Chain{"filter", "CFRAME-FORWARD"}
	// ChainInput admits the tunnel protocol from known peers only.
	ChainInput = Chain{"filter", "CFRAME-INPUT"}
	// ChainMSS clamps the TCP MSS of connections through the tunnel.
	ChainMSS = Chain{"mangle", "CFRAME-MSS"}
	// ChainNAT SNATs tunnel traffic entering the LAN (Desired.Masquerade).
	ChainNAT = Chain{"nat", "CFRAME-POSTROUTING"}
)

// hooks maps each owned chain to the built-in chain that jumps to it.
var hooks = []struct{ own, from Chain }{
	{ChainForward, Chain{"filter", "FORWARD"}},
	{ChainInput, Chain{"filter", "INPUT"}},
	{ChainMSS, Chain{"mangle", "FORWARD"}},
	{ChainNAT, Chain{"nat", "POSTROUTING"}},
}

// rule is one iptables rule: the arguments handed to iptables and the
// canonical "-A CHAIN ..." line iptables -S prints for it. The arguments
// are written in iptables' own print order so that the two stay equal.
type rule struct {
	chain Chain
	args  []string
}

// line returns the rule as "iptables -S" prints it.
func (r rule) line() string {
	return "-A " + r.chain.Name + " " + joinArgs(r.args)
}

// jumpRule is the hook rule "-A <from> -j <own>".
func jumpRule(from, own Chain) rule {
	return rule{from, []string{"-j", own.Name}}
}

// forwardRules accept packets from the tunnel device into a local network
// and from it into the tunnel.
func forwardRules(dev string, local netip.Prefix) []rule {
	return []rule{
		{ChainForward, []string{"-d", local.String(), "-i", dev, "-j", "ACCEPT"}},
		{ChainForward, []string{"-s", local.String(), "-o", dev, "-j", "ACCEPT"}},
	}
}

// inputAccept admits the tunnel protocol from the peers (SetPeers).
func inputAccept(mode Mode, port uint16) rule {
	return rule{ChainInput, append(tunnelMatch(mode, port), "-m", "set", "--match-set", SetPeers, "src", "-j", "ACCEPT")}
}

// inputDrop drops the tunnel protocol from everyone else; it must stay the
// last rule of ChainInput.
func inputDrop(mode Mode, port uint16) rule {
	return rule{ChainInput, append(tunnelMatch(mode, port), "-j", "DROP")}
}

func tunnelMatch(mode Mode, port uint16) []string {
	if mode == ModeGRE {
		return []string{"-p", "gre"}
	}
	return []string{"-p", "udp", "-m", "udp", "--dport", strconv.Itoa(int(port))}
}

// mssRules clamp the MSS of TCP SYN and SYN-ACK segments leaving and entering
// dev to what fits the tunnel MTU, never raising it.
func mssRules(dev string, mtu int) []rule {
	var out []rule
	for _, dir := range []string{"-o", "-i"} {
		out = append(out, rule{ChainMSS, []string{dir, dev, "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN",
			"-m", "tcpmss", "--mss", fmt.Sprintf("%d:65535", mtu-39), "-j", "TCPMSS", "--set-mss", strconv.Itoa(mtu - 40)}})
	}
	return out
}

// natRule SNATs traffic from the peers' networks (SetNets) into a local
// network to the LAN address (MASQUERADE when the LAN address is unknown).
func natRule(local netip.Prefix, lan netip.Addr) rule {
	args := []string{"-d", local.String(), "-m", "set", "--match-set", SetNets, "src"}
	if lan.IsValid() {
		args = append(args, "-j", "SNAT", "--to-source", lan.String())
	} else {
		args = append(args, "-j", "MASQUERADE")
	}
	return rule{ChainNAT, args}
}

// joinArgs joins rule arguments the way iptables -S prints them: the value
// of --comment is quoted when it contains anything but letters, digits, '-'
// and '_' (with double quotes, backslashes and single quotes escaped by a
// backslash), like iptables' xtables_save_string does.
func joinArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if i > 0 && args[i-1] == "--comment" {
			a = quoteSave(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func quoteSave(s string) string {
	plain := s != ""
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		if c == '"' || c == '\\' || c == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// splitLine parses an "iptables -S" line back into its chain and
// arguments, undoing the quoting of quoteSave.
func splitLine(line string) (chain string, args []string, err error) {
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	var fields []string
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case inQuote && c == '\\':
			escaped = true
		case c == '"':
			inQuote = !inQuote
			have = true
		case c == ' ' && !inQuote:
			if have {
				fields = append(fields, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if inQuote || escaped {
		return "", nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if have {
		fields = append(fields, cur.String())
	}
	if len(fields) < 2 || fields[0] != "-A" {
		return "", nil, fmt.Errorf("not a rule: %q", line)
	}
	return fields[1], fields[2:], nil
}

// normalizeLine maps spellings iptables may print depending on the host
// (a numeric protocol when /etc/protocols lacks it) to the form cframe
// writes.
func normalizeLine(line string) string {
	return strings.Replace(line, " -p 47 ", " -p gre ", 1)
}
