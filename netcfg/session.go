package netcfg

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"reflect"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
)

// A session is what one Reconcile, Update or Cleanup talks to the kernel
// with, from its first request to its last (begin … end), in the network
// namespace of the calling thread: netlink sockets, the indexes of the links
// it read or created, a receive buffer, and the count of what it asked.
// Nothing of it outlives the call.
//
// Every request and program is counted where it goes out: send counts the
// requests on the session's own sockets, execute the programs it runs, and
// package netlink numbers the requests on its handle's sockets itself
// (handleRequests reads the numbers).
type session struct {
	k *Kernel
	// nl is package netlink's handle, for the requests that package makes
	// well: link, neighbor and route changes, ipset changes and tests, the
	// link and address dumps.
	nl *netlink.Handle
	// socks are the session's own sockets, by protocol, for the requests
	// package netlink cannot make (FDB entries with a port, the nftables
	// generation) or decodes too slowly for a thousand peers (the dumps that
	// grow with the mesh, an Update's gets); seq numbers their requests and
	// buf receives the answers.
	socks map[int]int
	seq   uint32
	buf   []byte
	// index holds the index of every link the session read or created.
	index map[string]int
	// sent counts the requests sent on socks and the programs run.
	sent Requests
	// kinds counts the applied changes by object kind (see apply).
	kinds map[string]int
	// wg is the WireGuard client (generic netlink), opened on first use.
	wg *wgctrl.Client
}

// begin starts a session in the calling thread's namespace.
func (k *Kernel) begin() (*session, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netcfg: netlink: %w", err)
	}
	return &session{k: k, nl: h, socks: map[int]int{}, index: map[string]int{}}, nil
}

// end closes the session's sockets and returns what it asked of the kernel.
func (s *session) end() Requests {
	r := s.requests()
	s.nl.Close()
	if s.wg != nil {
		s.wg.Close()
	}
	for _, fd := range s.socks {
		unix.Close(fd)
	}
	return r
}

// requests returns what the session has asked of the kernel so far.
func (s *session) requests() Requests {
	r := s.sent
	r.Netlink += handleRequests(s.nl)
	return r
}

// handleRequests returns how many requests h has sent. Package netlink
// numbers the requests on each socket of a handle 1, 2, 3, … (the Seq of its
// nl.SocketHandle) but keeps the sockets unexported, so the numbers are read
// by reflection; TestRequestCounting fails should a new version move them.
func handleRequests(h *netlink.Handle) int {
	socks := reflect.ValueOf(h).Elem().FieldByName("sockets")
	if socks.Kind() != reflect.Map {
		return 0
	}
	n := 0
	for it := socks.MapRange(); it.Next(); {
		if sh := it.Value(); sh.Kind() == reflect.Pointer && !sh.IsNil() {
			if seq := sh.Elem().FieldByName("Seq"); seq.Kind() == reflect.Uint32 {
				n += int(seq.Uint())
			}
		}
	}
	return n
}

// send sends req on the session's socket of protocol proto and reads the
// answer, calling each (if not nil) with the payload of every message until
// the final one: an acknowledgement, an error or the end of a dump. A dump
// that a concurrent change interrupted returns netlink.ErrDumpInterrupted.
func (s *session) send(proto int, req *nl.NetlinkRequest, each func(msg []byte) error) error {
	fd, err := s.socket(proto)
	if err != nil {
		return err
	}
	s.seq++
	req.Seq = s.seq
	s.sent.Netlink++
	if err := unix.Sendto(fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	if s.buf == nil {
		s.buf = make([]byte, 1<<16)
	}
	interrupted := false
	for {
		n, _, err := unix.Recvfrom(fd, s.buf, 0)
		if err != nil {
			return err
		}
		for b := s.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(nl.NativeEndian().Uint32(b))
			typ, flags, seq := nl.NativeEndian().Uint16(b[4:]), nl.NativeEndian().Uint16(b[6:]), nl.NativeEndian().Uint32(b[8:])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return errors.New("netlink: malformed message")
			}
			payload := b[unix.NLMSG_HDRLEN:l]
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			if seq != req.Seq {
				continue // the rest of an earlier, abandoned answer
			}
			interrupted = interrupted || flags&unix.NLM_F_DUMP_INTR != 0
			switch typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if len(payload) >= 4 {
					if errno := int32(nl.NativeEndian().Uint32(payload)); errno != 0 {
						return unix.Errno(-errno)
					}
				}
				if interrupted {
					return netlink.ErrDumpInterrupted
				}
				return nil
			}
			if each != nil {
				if err := each(payload); err != nil {
					return err
				}
			}
		}
	}
}

// socket returns the session's socket of protocol proto, opened on first use.
func (s *session) socket(proto int) (int, error) {
	if fd, ok := s.socks[proto]; ok {
		return fd, nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	s.socks[proto] = fd
	return fd, nil
}

// dump sends the dump request req (of NETLINK_ROUTE unless proto says
// otherwise) and calls each with every object in the answer. A dump that a
// concurrent change interrupts starts over, after restart dropped what each
// had collected; partial results are never used.
func (s *session) dump(what string, proto int, req *nl.NetlinkRequest, restart func(), each func(msg []byte) error) error {
	return retryDump(what, func() error {
		restart()
		return s.send(proto, req, each)
	})
}

// dumpAttempts bounds the retries of netlink dumps interrupted by
// concurrent changes.
const dumpAttempts = 5

// retryDump calls dump, which lists what, until it is not interrupted by a
// concurrent change (at most dumpAttempts times).
func retryDump(what string, dump func() error) error {
	for range dumpAttempts {
		err := dump()
		if err == nil {
			return nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("netcfg: list %s: %w", what, err)
		}
	}
	return fmt.Errorf("netcfg: list %s: dump interrupted %d times in a row", what, dumpAttempts)
}

// get sends the get request req and calls each with the answer; an object
// the kernel does not have is not an error (each is not called).
func (s *session) get(req *nl.NetlinkRequest, each func(msg []byte) error) error {
	req.Flags |= unix.NLM_F_ACK // the answer ends with an acknowledgement
	err := s.send(unix.NETLINK_ROUTE, req, each)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// getEach sends the get request request(key) for every key (an Update's
// read by key) and calls each with the answers; what, a format with the
// key, names a failing request.
func getEach[K any](s *session, what string, keys []K, each func(msg []byte) error, request func(K) *nl.NetlinkRequest) error {
	for _, key := range keys {
		if err := s.get(request(key), each); err != nil {
			return fmt.Errorf(what+": %w", key, err)
		}
	}
	return nil
}

// execute runs program with stdin as its input (none when empty) and
// returns its standard output; a failure's error carries what the program
// wrote to standard error.
func (s *session) execute(stdin, program string, args ...string) ([]byte, error) {
	s.sent.Exec++
	cmd := exec.Command(program, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, &programError{program: program, err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return out, nil
}

// programError is a program that failed, and what it said.
type programError struct {
	program, stderr string
	err             error
}

func (e *programError) Error() string {
	if e.stderr == "" {
		return fmt.Sprintf("%s: %v", e.program, e.err)
	}
	return fmt.Sprintf("%s: %v: %s", e.program, e.err, e.stderr)
}

func (e *programError) Unwrap() error { return e.err }

// ifindex returns the index of link name, which the session read or created.
func (s *session) ifindex(name string) (int, error) {
	if i, ok := s.index[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("link %s: %w", name, unix.ENODEV)
}

// gone reports whether err means the object to delete no longer exists.
func gone(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.As(err, &lnf)
}

// ignoreGone makes deleting an object that is already gone a success.
func ignoreGone(err error) error {
	if err != nil && gone(err) {
		return nil
	}
	return err
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

// Netlink message helpers shared by the objects' decoders.

// walkAttrs calls f with the type (without the nested and byte-order flags)
// and value of each netlink attribute in b. Unlike nl.ParseRouteAttr it
// allocates nothing, which counts at thousands of messages per read.
func walkAttrs(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(nl.NativeEndian().Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		f(nl.NativeEndian().Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofRtAttr:l])
		b = b[min(len(b), (l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	}
}

// arena hands out MAC addresses from shared blocks: one allocation per
// block instead of one per entry.
type arena struct{ buf []byte }

func macArena(n int) *arena { return &arena{buf: make([]byte, 0, 6*max(n, 16))} }

// copy returns a copy of v backed by the arena.
func (a *arena) copy(v []byte) net.HardwareAddr {
	if cap(a.buf)-len(a.buf) < len(v) {
		a.buf = make([]byte, 0, max(cap(a.buf), 6*16))
	}
	a.buf = append(a.buf, v...)
	return net.HardwareAddr(a.buf[len(a.buf)-len(v) : len(a.buf) : len(a.buf)])
}

// ip4 returns a 4-byte attribute value as an address.
func ip4(v []byte) (netip.Addr, bool) {
	if len(v) != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(v)), true
}

func addrFromIP(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}

func ipOrNil(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}
