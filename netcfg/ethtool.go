package netcfg

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Device settings that only the ethtool ioctl reaches (netlink has no
// attribute for them).

// ethtoolGRO reports whether generic receive offload is on for dev in the
// calling thread's namespace.
func ethtoolGRO(dev string) (bool, error) {
	on, err := ethtoolValue(dev, unix.ETHTOOL_GGRO)
	if err != nil {
		return false, fmt.Errorf("ethtool get GRO of %s: %w", dev, err)
	}
	return on != 0, nil
}

// ethtoolValue runs the ethtool command cmd, one that gets a value (struct
// ethtool_value), on dev in the calling thread's namespace.
func ethtoolValue(dev string, cmd uint32) (uint32, error) {
	if len(dev) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("device name %q too long", dev)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd}
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
