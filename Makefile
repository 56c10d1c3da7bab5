# cframe: `make demo` runs the walkthrough in network namespaces (CLOUD=1: in
# the shape it has in a cloud, single-NIC edges behind 1:1 NAT), `make test`
# runs every test (as root: the kernel tests build their own namespaces),
# `make package` builds the Debian package.
GO ?= go
ETCD ?=
HOLD ?=
CLOUD ?=

.PHONY: all build package test demo demo-clean bench bench-quick deps vet

all: build

deps:
	@scripts/deps.sh

build:
	@scripts/build.sh

# dist/cframe_<version>_amd64.deb (VERSION=... to name the version).
package:
	@scripts/package.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# Test artifacts (the topology page's screenshots) land in test-out/_artifacts/.
# Everything runs under the race detector, the controllers and agents the
# end-to-end tests start included (scripts/cluster builds them with -race
# when the tests run with it, and a race report in their logs fails the test).
#
# Two phases: the host suite, then the tests that boot Debian's stock kernel
# under QEMU (named TestVM*, internal/vm): an emulated CPU takes a whole core,
# so they do not run beside the host's timing-sensitive end-to-end tests.
# The second phase checks kernels, not Go: the race detector has run over
# the same code in the first, and under TCG it would cost minutes. VMs take
# turns (one lock), so a package's VM test may wait for the others': its
# timeout is the whole phase's, not its own.
test: deps vet
	@mkdir -p test-out
	$(GO) test -race -count=1 -timeout 15m -skip '^TestVM' -artifacts -outputdir=$(CURDIR)/test-out ./...
	$(GO) test -count=1 -timeout 30m -run '^TestVM' -artifacts -outputdir=$(CURDIR)/test-out ./...

demo: deps build
	$(GO) run ./scripts/demo $(if $(ETCD),-etcd) $(if $(HOLD),-hold) $(if $(CLOUD),-cloud)

demo-clean:
	$(GO) run ./scripts/demo -clean

bench: build
	@scripts/deps.sh bench
	$(GO) run ./scripts/bench

bench-quick: build
	@scripts/deps.sh bench
	$(GO) run ./scripts/bench --quick
