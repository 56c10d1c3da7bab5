package netcfg

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Device settings that only the ethtool ioctl reaches (netlink has no
// attribute for them): the GRO state of the underlay (sysfs.go) and the
// transmit checksum offload of the VXLAN device.
//
// Checksums through NAT. With transmit checksum offload on, the kernel
// hands the VXLAN device packets whose inner TCP or UDP checksum is not yet
// computed (CHECKSUM_PARTIAL: "fill in the checksum at csum_start"); ICMP
// is always checksummed in software. With the outer UDP checksum on, the
// device then computes it from the headers alone (local checksum
// offload), a complete checksum, while the packet stays marked partial
// for its inner header. A Linux NAT that rewrites the outer addresses
// before the packet leaves the kernel — in the edge's own namespace (a
// gateway masquerading its uplink, kube-proxy) or in another one on the
// same host (a container's published port, a lab's namespaces standing in
// for a cloud's EIPs) — updates the outer checksum the way a partial one
// is updated, which is wrong for a complete one: the receiving edge drops
// every such packet (UdpInCsumErrors). Pings pass, TCP and UDP through the
// tunnel stall (calico#3145, flannel#1279).
//
// Two settings avoid that (Desired.Checksum, link.go):
//   - fast: offload on and a ZERO outer UDP checksum ("noudpcsum"). A Linux
//     NAT leaves a zero checksum alone ("netfilter: nat: never update the
//     UDP checksum when it's 0", v5.7, backported to 4.14.181, 4.19.123,
//     5.4.41), so nothing is computed twice and the tunnel runs at the
//     kernel's VXLAN speed. Older kernels' NAT, and NAT devices that
//     rewrite a zero checksum incrementally (cilium#28707), turn the zero
//     into a wrong value — again for the packets with a partial inner
//     checksum, TCP and UDP, while pings pass.
//   - safe: offload off and the outer checksum on: inner checksums are
//     computed before encapsulation, the outer checksum is the only one
//     left to offload, and any NAT updates it correctly; `make bench`
//     (kernel-vxlan against kernel-vxlan+csum) says what that costs.
//
// The kernel fixes IFLA_VXLAN_UDP_CSUM when it creates the device ("Cannot
// change UDP_CSUM flag"), so a change of setting replaces the device.
// Which setting an edge runs is the agent's choice (orchestrator/agent,
// checksum.go): fast, until its probes prove a path breaks it.

// readTxCsum reads whether the desired VXLAN device offloads transmit
// checksums: one ioctl, on every read, an Update's too.
func (s *session) readTxCsum(r *reading) error {
	if r.tunnel == nil {
		return nil
	}
	on, err := ethtoolValue(r.tunnel.Name, unix.ETHTOOL_GTXCSUM, 0)
	if err != nil {
		return fmt.Errorf("netcfg: ethtool get tx-checksumming of %s: %w", r.tunnel.Name, err)
	}
	r.tunnel.TxCsum = on != 0
	return nil
}

// setTxCsum switches transmit checksum offload of dev on or off, like
// "ethtool -K dev tx on|off".
func setTxCsum(dev string, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if _, err := ethtoolValue(dev, unix.ETHTOOL_STXCSUM, v); err != nil {
		return fmt.Errorf("ethtool set tx-checksumming of %s %s: %w", dev, onOff(on), err)
	}
	return nil
}

// ethtoolGRO reports whether generic receive offload is on for dev in the
// calling thread's namespace.
func ethtoolGRO(dev string) (bool, error) {
	on, err := ethtoolValue(dev, unix.ETHTOOL_GGRO, 0)
	if err != nil {
		return false, fmt.Errorf("ethtool get GRO of %s: %w", dev, err)
	}
	return on != 0, nil
}

// ethtoolValue runs the ethtool command cmd, one that gets or sets a value
// (struct ethtool_value), with data on dev in the calling thread's
// namespace, and returns the value the kernel left in it.
func ethtoolValue(dev string, cmd, data uint32) (uint32, error) {
	if len(dev) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("device name %q too long", dev)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd, data: data}
	// struct ifreq: the name, then a union whose member here is a pointer.
	var req struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [24 - unsafe.Sizeof(unsafe.Pointer(nil))]byte
	}
	copy(req.name[:], dev)
	req.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return 0, errno
	}
	return value.data, nil
}
