package e2e

import (
	"testing"

	"github.com/cframe/cframe/internal/vm"
)

// TestVMStockKernel runs, on Debian's stock kernel (internal/vm) with the
// binaries built here: the walkthrough's convergence, traffic, drift
// repair and cleanup in both shapes (the cloud shape with the checksum
// setting the agents chose by default; under TCG the rest of their
// subtests, which the host runs, would take minutes more), the GRE
// walkthrough whole, the dual-stack walkthrough's convergence in both
// families and drift repair, the IPv6 underlay (a mixed mesh too) and a
// dual-stack site's failover with a VIP per family.
func TestVMStockKernel(t *testing.T) {
	if bin == "" {
		t.Skip("needs root")
	}
	vm.GoTest(t, ".", stockKernelRun, vm.Options{Env: []string{binEnv + "=" + bin}, Share: []string{bin}})
}

const stockKernelRun = "^(TestWalkthrough|TestCloudWalkthrough|TestGREWalkthrough|TestDualStack|TestUnderlay6|TestGatewayHA6)$/" +
	"^(three_adds|drift|SIGTERM|edges_started_first|DF_pings|checksum_setting|bulk_TCP|TCP_and_UDP|a_GRE_device|cleanup_leaves|mixed_mesh|the_active_gateway_holds|the_active_gateway_dies)"

// TestVMEncrypted runs the encrypted walkthrough (TestEncryptedWalkthrough),
// gateway HA encrypted (TestEncryptedGatewayHA) and WireGuard over an
// IPv6 underlay (TestEncryptedUnderlay6) on Debian's stock kernel, which
// has WireGuard: one boot for all of it.
func TestVMEncrypted(t *testing.T) {
	if bin == "" {
		t.Skip("needs root")
	}
	vm.GoTest(t, ".", "^(TestEncryptedWalkthrough|TestEncryptedGatewayHA|TestEncryptedUnderlay6)$", vm.Options{Env: []string{binEnv + "=" + bin}, Share: []string{bin}})
}
