package topo

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A checksum breaker: a router on the tunnel's path that mangles the
// outer UDP checksum of VXLAN packets the way Linux's NAT did before 5.7:
// it rewrote a zero checksum incrementally on the packets whose inner
// checksum was still partial — TCP and UDP sent with transmit checksum
// offload — and left the others alone. It matches, on
// the forward hook of its namespace, UDP packets to one of the tunnel's
// ports with a zero checksum that carry (VXLAN header, inner Ethernet
// frame) an IPv4 or IPv6 TCP or UDP packet, and sets their checksum to a
// wrong non-zero value. Tunnel packets carrying ICMP, and packets with a
// computed checksum, pass untouched: pings answer, TCP and UDP through
// the tunnel die — unless the edges compute the outer checksum.
//
// The receiver only verifies a checksum that is complete: a packet that
// crossed veths still marked partial (its inner checksum to be filled in)
// is taken as verified. So the breaker also switches transmit checksum
// offload off on the namespace's interfaces it is given: the router
// computes the inner checksum before sending, as a packet on a wire has
// it, and the receiver checks the outer one.

// breakerTable names the breaker's nftables table.
const breakerTable = "cftopo_breaker"

// badChecksum is what the breaker writes into a zero checksum.
const badChecksum = 0x5a5a

// Breaker is an installed checksum breaker.
type Breaker struct {
	n  *Net
	ns string
}

// BreakZeroChecksums installs a checksum breaker (see above) in router
// namespace ns for the tunnel ports and switches transmit checksum
// offload off on the router's interfaces ifaces. Remove undoes the first.
func (n *Net) BreakZeroChecksums(ns string, ports []uint16, ifaces ...string) (*Breaker, error) {
	for _, i := range ifaces {
		if _, err := n.Exec(ns, "ethtool", "-K", i, "tx", "off"); err != nil {
			return nil, err
		}
	}
	b := &Breaker{n: n, ns: ns}
	err := b.conn(func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: breakerTable})
		ch := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
		for _, port := range ports {
			for _, inner := range []struct {
				ethertype uint16
				protoAt   uint32 // offset of the inner IP protocol from the UDP header
			}{{0x0800, 8 + 8 + 14 + 9}, {0x86dd, 8 + 8 + 14 + 6}} {
				for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
					c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: breakerRule(port, inner.ethertype, inner.protoAt, proto)})
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("topo: checksum breaker in %s: %w", ns, err)
	}
	return b, nil
}

// breakerRule matches a VXLAN packet to port with a zero checksum whose
// inner frame has ethertype and IP protocol proto at protoAt, counts it
// and writes badChecksum into its checksum.
func breakerRule(port, ethertype uint16, protoAt uint32, proto byte) []expr.Any {
	be16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	load := func(off, n uint32) *expr.Payload {
		return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: n}
	}
	eq := func(data []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, eq([]byte{unix.IPPROTO_UDP}),
		load(2, 2), eq(be16(port)),
		load(6, 2), eq(be16(0)),
		load(8+8+12, 2), eq(be16(ethertype)),
		load(protoAt, 1), eq([]byte{proto}),
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: be16(badChecksum)},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 6, Len: 2},
	}
}

// conn runs f on an nftables connection into the breaker's namespace and
// flushes what it queued.
func (b *Breaker) conn(f func(*nftables.Conn) error) error {
	h, err := netns.GetFromName(b.ns)
	if err != nil {
		return err
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return err
	}
	if err := f(c); err != nil {
		return err
	}
	return c.Flush()
}

// Hits returns how many packets the breaker mangled.
func (b *Breaker) Hits() (uint64, error) {
	var n uint64
	err := b.conn(func(c *nftables.Conn) error {
		t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: breakerTable}
		rules, err := c.GetRules(t, &nftables.Chain{Name: "forward", Table: t})
		if err != nil {
			return err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					n += ctr.Packets
				}
			}
		}
		return nil
	})
	return n, err
}

// Remove deletes the breaker's rules (the interfaces' offload stays off).
func (b *Breaker) Remove() error {
	return b.conn(func(c *nftables.Conn) error {
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: breakerTable})
		return nil
	})
}
