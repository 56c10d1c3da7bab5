package netcfg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	goiptables "github.com/coreos/go-iptables/iptables"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// iptables is driven as a whole-ruleset tool, which is what it is: every
// iptables run fetches the ruleset, so cframe reads all of its chains with
// one iptables-save and writes a run of changes with one iptables-restore
// --noflush per table (atomic per table, other chains untouched), instead
// of one program per chain or rule. Only when a batch fails (or a run is a
// single command) does each command run alone, through go-iptables.

// iptables holds the located iptables programs.
type iptables struct {
	// program is iptables itself; save and restore are program-save and
	// program-restore.
	program, save, restore string
	// nft tells that they are the nf_tables flavour (not legacy).
	nft bool
	// lib runs single commands (see iptablesAlone).
	lib *goiptables.IPTables
}

// lookIptables locates program (ip6tables with v6) and the -save and
// -restore programs beside it and tells whether they are the nf_tables
// flavour.
func lookIptables(program string, v6 bool) (ipt iptables, err error) {
	if ipt.program, err = exec.LookPath(program); err != nil {
		return ipt, err
	}
	if ipt.save, err = exec.LookPath(program + "-save"); err != nil {
		return ipt, err
	}
	if ipt.restore, err = exec.LookPath(program + "-restore"); err != nil {
		return ipt, err
	}
	v, err := exec.Command(ipt.program, "--version").Output()
	if err != nil {
		return ipt, fmt.Errorf("%s --version: %w", ipt.program, err)
	}
	ipt.nft = bytes.Contains(v, []byte("nf_tables"))
	proto := goiptables.ProtocolIPv4
	if v6 {
		proto = goiptables.ProtocolIPv6
	}
	ipt.lib, err = goiptables.New(goiptables.IPFamily(proto), goiptables.Path(ipt.program), goiptables.Timeout(10))
	return ipt, err
}

// iptablesCmd is one iptables command in iptables-restore syntax ("-I
// CHAIN 1 ...", "-N CHAIN") and its table.
type iptablesCmd struct{ table, line string }

// iptablesChange is the change that runs line in table: an ip6tables
// table when table is one (see table6).
func iptablesChange(table, line string) change {
	if t, v6 := cutTable6(table); v6 {
		return change{desc: "ip6tables -t " + t + " " + line, iptables: &iptablesCmd{table, line}}
	}
	return change{desc: "iptables -t " + table + " " + line, iptables: &iptablesCmd{table, line}}
}

// programs returns the iptables programs of table and its name for them:
// ip6tables' for an ip6tables table.
func (s *session) programs(table string) (*iptables, string) {
	if t, v6 := cutTable6(table); v6 {
		return s.k.ip6tables(), t
	}
	return &s.k.ipt, table
}

// iptablesRun runs a run of iptables commands and returns each one's
// outcome: one iptables-restore per table (the tables are independent),
// or — when that fails, a rule to delete being gone already, say — command
// by command, so that every command gets its own outcome.
func (s *session) iptablesRun(changes []change) []error {
	errs := make([]error, len(changes))
	var tables []string
	byTable := map[string][]int{}
	for i, c := range changes {
		t := c.iptables.table
		if byTable[t] == nil {
			tables = append(tables, t)
		}
		byTable[t] = append(byTable[t], i)
	}
	for _, t := range tables {
		idx := byTable[t]
		ipt, name := s.programs(t)
		if ipt == nil {
			for _, i := range idx {
				errs[i] = errors.New("no ip6tables on this host")
			}
			continue
		}
		if len(idx) > 1 {
			in := "*" + name + "\n"
			for _, i := range idx {
				in += changes[i].iptables.line + "\n"
			}
			if _, err := s.execute(in+"COMMIT\n", ipt.restore, "--wait=10", "--noflush"); err == nil {
				continue
			}
		}
		for _, i := range idx {
			errs[i] = s.iptablesAlone(changes[i].iptables)
		}
	}
	return errs
}

// iptablesAlone runs c alone through go-iptables, one call per command. A
// rule to delete that is already gone counts as deleted.
func (s *session) iptablesAlone(c *iptablesCmd) error {
	args, err := splitArgs(c.line)
	if err != nil {
		return err
	}
	if len(args) < 2 {
		return fmt.Errorf("iptables command %q: no chain", c.line)
	}
	op, chain, rule := args[0], args[1], args[2:]
	ipt, table := s.programs(c.table)
	lib := ipt.lib
	s.sent.Exec++ // one program per call; ClearChain, for -F, tries -N first
	switch op {
	case "-N":
		err = lib.NewChain(table, chain)
	case "-X":
		err = lib.DeleteChain(table, chain)
	case "-F":
		err = lib.ClearChain(table, chain)
	case "-A":
		err = lib.Append(table, chain, rule...)
	case "-I":
		pos := 0
		if len(rule) > 0 {
			pos, err = strconv.Atoi(rule[0])
		}
		if err != nil || pos < 1 {
			return fmt.Errorf("iptables command %q: no position", c.line)
		}
		err = lib.Insert(table, chain, pos, rule[1:]...)
	case "-D":
		err = lib.Delete(table, chain, rule...)
		var ie *goiptables.Error
		if errors.As(err, &ie) && ie.IsNotExist() {
			return nil
		}
	default:
		return fmt.Errorf("iptables command %q: unsupported", c.line)
	}
	return err
}

// generation identifies the iptables ruleset of a network namespace at one
// nftables generation.
type generation struct {
	ns  nsID
	gen uint32
}

// rulesetGeneration returns the current generation of the calling thread's
// ruleset; ok is false when there is none to go by (legacy iptables) or it
// could not be read.
func (s *session) rulesetGeneration() (g generation, ok bool) {
	if !s.k.ipt.nft {
		return g, false
	}
	ns, err1 := threadNS()
	gen, err2 := s.nftGeneration()
	return generation{ns, gen}, err1 == nil && err2 == nil
}

// nftGeneration returns the nftables ruleset generation of the calling
// thread's namespace (NFT_MSG_GETGEN; package netlink has no request for it).
func (s *session) nftGeneration() (uint32, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	gen, ok := uint32(0), false
	err := s.send(unix.NETLINK_NETFILTER, req, func(m []byte) error {
		if len(m) >= nl.SizeofNfgenmsg {
			walkAttrs(m[nl.DeserializeNfgenmsg(m).Len():], func(typ uint16, v []byte) {
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

// The command language: rules as "iptables -S" prints them.

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

// splitArgs parses a command as iptables-save prints it ("-A CHAIN ...")
// back into arguments, undoing the quoting of quoteSave.
func splitArgs(line string) ([]string, error) {
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	var args []string
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
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if inQuote || escaped {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if have {
		args = append(args, cur.String())
	}
	return args, nil
}

// normalizeLine maps spellings iptables may print depending on the host
// (a numeric protocol when /etc/protocols lacks it) to the form cframe
// writes.
func normalizeLine(line string) string {
	return strings.Replace(line, " -p 47 ", " -p gre ", 1)
}
