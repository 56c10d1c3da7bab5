package netcfg

import (
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Receive packet steering (RPS) of the VXLAN device.
//
// Every packet of every peer reaches the edge through the underlay NIC's
// receive queues; a NIC with fewer queues than CPUs (one, on many cloud
// gateways and on veth) makes one CPU run GRO, decapsulation, forwarding and
// — on a shared host — delivery for all the flows of a queue while other
// CPUs idle. RPS on the tunnel device's receive queue hands each
// decapsulated flow, by its inner hash, to a CPU of its own for everything
// after decapsulation. With a queue per CPU the NIC spreads the flows
// already and RPS would only add cross-CPU hand-offs, so cframe sets it only
// when the underlay has fewer receive queues than there are CPUs (the
// kernel's own advice, Documentation/networking/scaling.rst). The kernel
// has no netlink attribute for either; both live in sysfs (and netlink's
// IFLA_NUM_RX_QUEUES counts allocated, not active, queues).
//
// One underlay needs no steering whatever its queues: a veth without NAPI
// (GRO off and no XDP program, veth's default) receives each packet on the
// CPU that sent it, so every sender's flows are decapsulated on its own CPU
// already; steering them elsewhere only adds a hand-off (measured: about
// 15% of four-stream throughput).

// rpsFile is the RPS CPU mask of dev's (only) receive queue under a sysfs
// root.
func rpsFile(root, dev string) string {
	return filepath.Join(root, "class", "net", dev, "queues", "rx-0", "rps_cpus")
}

// readSteering reads, in VXLAN mode, what decides receive packet steering
// on the tunnel device: whether the device steers already, how many receive
// queues the underlay has, the number of CPUs and whether the underlay
// receives on the sending CPUs. An Update takes the underlay's from its
// baseline and the device as the last Reconcile left it.
func (s *session) readSteering(r *reading) error {
	if r.d.Mode != ModeVXLAN {
		return nil
	}
	if r.keys != nil {
		if r.tunnel != nil {
			r.tunnel.RPS = r.a.wantRPS()
		}
		return nil
	}
	var dev string
	if r.tunnel != nil {
		dev = r.tunnel.Name
	}
	rps, queues, err := steeringState(dev, r.name(r.underlay))
	if err != nil {
		return fmt.Errorf("netcfg: read receive steering: %w", err)
	}
	if r.tunnel != nil {
		r.tunnel.RPS = rps
	}
	r.a.UnderlayRxQueues, r.a.CPUs = queues, runtime.NumCPU()
	if r.a.UnderlayRxOnSender, err = receivesOnSender(r.links[r.underlay]); err != nil {
		return fmt.Errorf("netcfg: read receive steering: %w", err)
	}
	return nil
}

// steeringState reads, from the sysfs of the calling thread's namespace,
// whether tunnel steers received packets to other CPUs (a non-zero rps_cpus
// mask, whatever its CPUs: an operator's own mask is left alone) and how
// many receive queues underlay has. An empty name is not read.
func steeringState(tunnel, underlay string) (rps bool, queues int, err error) {
	err = inNetSysfs(func(root string) error {
		if underlay != "" {
			qs, err := filepath.Glob(filepath.Join(root, "class", "net", underlay, "queues", "rx-*"))
			if err != nil {
				return err
			}
			queues = len(qs)
		}
		if tunnel == "" {
			return nil
		}
		b, err := os.ReadFile(rpsFile(root, tunnel))
		if errors.Is(err, os.ErrNotExist) {
			rps = true // a kernel without RPS: nothing to set
			return nil
		}
		if err != nil {
			return err
		}
		mask, ok := new(big.Int).SetString(strings.ReplaceAll(strings.TrimSpace(string(b)), ",", ""), 16)
		if !ok {
			return fmt.Errorf("rps_cpus of %s: unreadable mask %q", tunnel, b)
		}
		rps = mask.Sign() != 0
		return nil
	})
	if errors.Is(err, errForeignSysfs) {
		return true, 0, nil // like a kernel without RPS: nothing to set
	}
	return rps, queues, err
}

// setRPS steers dev's received packets over every online CPU.
func setRPS(dev string) error {
	mask, err := onlineCPUMask()
	if err != nil {
		return err
	}
	err = inNetSysfs(func(root string) error {
		f, err := os.OpenFile(rpsFile(root, dev), os.O_WRONLY, 0)
		if errors.Is(err, os.ErrNotExist) {
			return nil // a kernel without RPS (readSteering agrees)
		}
		if err != nil {
			return err
		}
		_, err = f.WriteString(mask + "\n")
		return errors.Join(err, f.Close())
	})
	if errors.Is(err, errForeignSysfs) {
		return nil // another namespace's device: never touched
	}
	return err
}

// receivesOnSender reports whether l receives every packet on the CPU that
// sent it: a veth without NAPI (neither GRO on nor an XDP program).
func receivesOnSender(l netlink.Link) (bool, error) {
	if l == nil || l.Type() != "veth" || l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
		return false, nil
	}
	gro, err := ethtoolGRO(l.Attrs().Name)
	return !gro, err
}

// onlineCPUMask returns the online CPUs (/sys/devices/system/cpu/online,
// e.g. "0-3,8") as the hex mask sysfs takes: 32-bit groups separated by
// commas, most significant first ("1,0000000f" for CPUs 0-3 and 32).
func onlineCPUMask() (string, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return "", err
	}
	return cpuListMask(strings.TrimSpace(string(b)))
}

// cpuListMask converts a kernel CPU list ("0-3,8") into a sysfs CPU mask.
func cpuListMask(list string) (string, error) {
	mask := new(big.Int)
	for _, r := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a < 0 || b < a || b > 1<<16 {
			return "", fmt.Errorf("cpu list %q: bad range %q", list, r)
		}
		for c := a; c <= b; c++ {
			mask.SetBit(mask, c, 1)
		}
	}
	hex := mask.Text(16)
	var groups []string
	for len(hex) > 8 {
		groups = append([]string{hex[len(hex)-8:]}, groups...)
		hex = hex[:len(hex)-8]
	}
	return strings.Join(append([]string{hex}, groups...), ","), nil
}

// inNetSysfs runs fn with the root of a sysfs that shows the network
// devices of the calling thread's namespace. /sys shows those of the
// namespace that mounted it, which is not the caller's when a thread entered
// a namespace on its own (Kernel's callers may, see Kernel). So fn runs on a
// throwaway thread with a private mount namespace and a sysfs mounted for
// the caller's network namespace. Without CAP_SYS_ADMIN (the agent's systemd
// unit keeps only CAP_NET_ADMIN) that is refused, and fn gets /sys when it
// shows the caller's namespace; when it does not — a unit that joins a
// namespace with NetworkNamespacePath=, whose /sys systemd 252 leaves the
// host's — inNetSysfs returns errForeignSysfs without calling fn.
func inNetSysfs(fn func(root string) error) error {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread, and its mount
		// namespace with it, when this goroutine returns.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			if errors.Is(err, unix.EPERM) {
				err = errNoMountNS
			}
			errc <- err
			return
		}
		errc <- func() error {
			// Nothing mounted here may propagate back to the host.
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("private sysfs: make mounts private: %w", err)
			}
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("private sysfs: setns: %w", err)
			}
			// EBUSY: this very sysfs is mounted at /sys already (the kernel
			// refuses to stack a superblock on itself), i.e. /sys is right.
			if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("private sysfs: mount: %w", err)
			}
			return fn("/sys")
		}()
	}()
	err = <-errc
	if err != errNoMountNS {
		return err
	}
	own, err := sysfsShowsOwnLinks("/sys")
	if err != nil {
		return err
	}
	if !own {
		return errForeignSysfs
	}
	return fn("/sys")
}

// errNoMountNS: the process may not create mount namespaces.
var errNoMountNS = errors.New("no permission for a mount namespace")

// errForeignSysfs: /sys shows another network namespace's devices and no
// sysfs of the caller's own can be mounted.
var errForeignSysfs = errors.New("sysfs shows another network namespace")

// sysfsShowsOwnLinks reports whether the sysfs at root lists exactly the
// links of the calling thread's namespace, each with its index and address:
// two namespaces alike in all of them are not told apart, nor need to be.
func sysfsShowsOwnLinks(root string) (bool, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return false, err
	}
	entries, err := os.ReadDir(filepath.Join(root, "class", "net"))
	if err != nil {
		return false, err
	}
	devices := 0
	for _, e := range entries {
		if e.Type()&os.ModeSymlink != 0 { // not bonding_masters
			devices++
		}
	}
	if devices != len(links) {
		return false, nil
	}
	for _, l := range links {
		a := l.Attrs()
		dir := filepath.Join(root, "class", "net", a.Name)
		index, err1 := os.ReadFile(filepath.Join(dir, "ifindex"))
		addr, err2 := os.ReadFile(filepath.Join(dir, "address"))
		// Netlink omits an all-zero address (lo's); sysfs prints it.
		if err1 != nil || err2 != nil || strings.TrimSpace(string(index)) != strconv.Itoa(a.Index) ||
			len(a.HardwareAddr) > 0 && strings.TrimSpace(string(addr)) != a.HardwareAddr.String() {
			return false, nil
		}
	}
	return true, nil
}
