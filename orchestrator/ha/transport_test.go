package ha

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/topo"
	"github.com/cframe/cframe/orchestrator/mesh"
)

func TestCodec(t *testing.T) {
	c := NewCodec("s3cret")
	m := Message{Kind: KindCommit, From: "sz-2", Claim: bus.Claim{Site: "sz", Gateway: "sz-2", Epoch: 7, Priority: 100, Reason: "sz-1 unreachable"}}
	b, err := c.Seal(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Open(b)
	if err != nil || got.Claim != m.Claim || got.From != "sz-2" || got.Kind != KindCommit {
		t.Fatalf("Open(Seal(m)) = %+v, %v", got, err)
	}
	tampered := append([]byte(nil), b...)
	tampered[10] ^= 1
	for name, bad := range map[string][]byte{
		"tampered":     tampered,
		"other secret": must(NewCodec("other").Seal(m)),
		"truncated":    b[:20],
		"empty":        nil,
	} {
		if _, err := c.Open(bad); !errors.Is(err, ErrForged) {
			t.Errorf("%s message: %v, want ErrForged", name, err)
		}
	}
	if _, err := c.Seal(Message{Kind: KindVote, From: "x", Note: string(make([]byte, MaxMessage))}); err == nil {
		t.Error("an oversized message was sealed")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// Two agents' transports through a link standing in for the tunnel: an
// authenticated message arrives; forged ones and messages whose sender
// does not match its address are dropped.
func TestTransportInNamespaces(t *testing.T) {
	topo.SkipUnlessRoot(t)
	n, err := topo.New(topo.UniquePrefix("cfh"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	nsA, _ := n.NS("a")
	nsB, _ := n.NS("b")
	if err := n.Veth(topo.End{NS: nsA, Name: "tun0"}, topo.End{NS: nsB, Name: "tun0"}); err != nil {
		t.Fatal(err)
	}
	for ns, name := range map[string]string{nsA: "sz-1", nsB: "hk-1"} {
		if _, err := n.Exec(ns, "ip", "-6", "addr", "add", mesh.LinkLocal(name).String()+"/64", "dev", "tun0", "nodad"); err != nil {
			t.Skipf("no IPv6 here: %v", err)
		}
	}
	// The same link stands in for the LAN too.
	for ns, a := range map[string]string{nsA: "10.78.0.1/24", nsB: "10.78.0.2/24"} {
		if _, err := n.Exec(ns, "ip", "addr", "add", a, "dev", "tun0"); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func(ns, secret string) *Transport {
		var tr *Transport
		if err := topo.Do(ns, func() (err error) { tr, err = Listen("tun0", secret, log); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
		return tr
	}
	a, b := open(nsA, "secret"), open(nsB, "secret")
	recv := func(tr *Transport) (Message, error) {
		select {
		case m := <-tr.Messages():
			return m, nil
		case <-time.After(2 * time.Second):
			return Message{}, fmt.Errorf("nothing arrived")
		}
	}
	hello := Message{Kind: KindHello, From: "sz-1", LAN: netip.MustParseAddr("172.18.171.245"), Priority: 100}
	if err := topo.Eventually(5*time.Second, func() error {
		if err := a.Send(Envelope{To: "hk-1", Msg: hello}); err != nil {
			return err
		}
		m, err := recv(b)
		if err == nil && (m.From != "sz-1" || m.LAN != hello.LAN) {
			return fmt.Errorf("received %+v", m)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The answer goes back the same way.
	if err := b.Send(Envelope{To: "sz-1", Msg: Message{Kind: KindCurrent, From: "hk-1"}}); err != nil {
		t.Fatal(err)
	}
	if m, err := recv(a); err != nil || m.Kind != KindCurrent || m.From != "hk-1" {
		t.Fatalf("reply: %+v %v", m, err)
	}
	// Over the LAN, to an IPv4 address.
	if err := a.Send(Envelope{To: "hk-1", LAN: netip.MustParseAddr("10.78.0.2"), Msg: Message{Kind: KindCommit, From: "sz-1"}}); err != nil {
		t.Fatal(err)
	}
	if m, err := recv(b); err != nil || m.Kind != KindCommit || m.From != "sz-1" {
		t.Fatalf("over the LAN: %+v %v", m, err)
	}
	// Another mesh's secret, and a sender pretending to be another edge.
	a.Close()
	forger := open(nsA, "another mesh")
	if err := forger.Send(Envelope{To: "hk-1", Msg: hello}); err != nil {
		t.Fatal(err)
	}
	if err := forger.Send(Envelope{To: "hk-1", LAN: netip.MustParseAddr("10.78.0.2"), Msg: hello}); err != nil {
		t.Fatal(err)
	}
	forger.Close()
	liar := open(nsA, "secret")
	if err := liar.Send(Envelope{To: "hk-1", Msg: Message{Kind: KindCommit, From: "gz-3"}}); err != nil {
		t.Fatal(err)
	}
	if err := liar.Send(Envelope{To: "hk-1", Msg: hello}); err != nil {
		t.Fatal(err)
	}
	if m, err := recv(b); err != nil || m.From != "sz-1" || m.Kind != KindHello {
		t.Fatalf("after a forged and a lying message, received %+v %v; want only the genuine hello", m, err)
	}
}
