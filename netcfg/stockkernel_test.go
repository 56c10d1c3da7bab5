package netcfg

import (
	"testing"

	"github.com/cframe/cframe/internal/vm"
)

// TestVMStockKernel runs this package's tests on Debian's stock kernel
// (internal/vm), which has the modules this machine's kernel may lack:
// GRE mode (TestKernelGRE), the probe beside ip_gre's fallback devices
// (TestKernelSupported) and VXLAN over WireGuard (TestKernelWireGuard) run
// for real there.
func TestVMStockKernel(t *testing.T) {
	t.Parallel()
	vm.GoTest(t, ".", "", vm.Options{})
}
