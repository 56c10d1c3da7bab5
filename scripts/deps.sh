#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for cframe's tests and demo:
# ping, iptables, setpriv (the edge runs with its unit's capabilities only),
# dpkg-deb (make package), iperf3, ethtool (the receive-steering test switches GRO on a veth),
# etcd (for the etcd-store tests and `make demo ETCD=1`), curl (the
# walkthrough's API calls, verbatim, in the TLS end-to-end test), promtool
# (Debian's prometheus package: the metrics tests check both /metrics
# endpoints with it) and chromium (the topology page's browser test drives it
# headless), and for the stock-kernel suite (package internal/vm, which fetches
# Debian's linux-image-amd64 itself, never installing it): qemu-system-x86,
# busybox-static, kmod (depmod).
# Go modules come from the module proxy when `go` first builds.
# Usage: scripts/deps.sh [bench]   ("bench" adds the userspace tunnels and keepalived `make bench` compares against)
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ping     || need+=(iputils-ping)
have iptables || need+=(iptables)
have iperf3   || need+=(iperf3)
have etcd     || need+=(etcd-server)
have ethtool  || need+=(ethtool)
have curl     || need+=(curl)
have ip       || need+=(iproute2)
have bridge   || need+=(iproute2)
have setpriv  || need+=(util-linux)
have dpkg-deb || need+=(dpkg)
have promtool || need+=(prometheus)
have chromium || need+=(chromium)
have qemu-system-x86_64 || need+=(qemu-system-x86)
have depmod   || need+=(kmod)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
if [ "${1:-}" = bench ]; then
  have wg      || need+=(wireguard-tools)
  have nebula  || need+=(nebula)
  have openvpn || need+=(openvpn)
  have keepalived || need+=(keepalived)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing ${need[*]}; run as root (cframe programs the kernel and its tests need root anyway)" >&2
  exit 1
fi
echo "deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
# Only promtool is wanted from the prometheus package: where systemd started
# its server (scraping this machine), stop it.
if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
