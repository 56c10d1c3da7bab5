package main

// The IPv6-underlay rows: the same two VPCs and the same IPv4 traffic, the
// tunnel between the edges' IPv6 public addresses — cframe with IPv6
// hostaddrs, and the kernel's VXLAN over IPv6 configured by hand with the
// device settings cframe's agents run there (upKernelVXLAN), the
// reference for it.

const (
	// cframeUnderlay6 names cframe over the IPv6 underlay.
	cframeUnderlay6 = "cframe-v6underlay"
	// kernelVXLAN6Fast names the hand-configured VXLAN over IPv6.
	kernelVXLAN6Fast = "kernel-vxlan6+fast"
)

func prepareCframe6(o Options) (string, error) {
	about, err := prepareCframe(o)
	if err != nil {
		return "", err
	}
	return "as cframe, with the edges added by their IPv6 public addresses: the VXLAN device over IPv6, MTU 1430 (the IPv6 underlay's 70 bytes). " + about, nil
}

func prepareKernelVXLAN6Fast(Options) (string, error) {
	return "kernel-vxlan+fast over the IPv6 underlay: the VXLAN device with the edge's IPv6 public address as local address, MTU 1430, " +
		"one all-zeros FDB entry toward the other edge's IPv6 address, and the fast setting as cframe applies it over IPv6 " +
		"(transmit checksum offload on, the outer UDP checksum on: the zero checksum is IPv4's), which are the kernel's defaults there; " +
		"the reference for cframe-v6underlay (its agents choose fast where no NAT breaks it, as here)", nil
}
