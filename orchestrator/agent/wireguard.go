package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/atomicfile"
	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/mesh"
)

// The edge's WireGuard key lives in state_dir and never leaves it: only
// its public half goes out, in the heartbeats, for the controller to pin
// and distribute. It is never logged.

// wireGuardKeyFile is the key's file in state_dir.
const wireGuardKeyFile = "wireguard.key"

// loadWireGuardKey reads the WireGuard private key at path, generating it
// (mode 0600, written atomically) on first start.
func loadWireGuardKey(path string) (key wgtypes.Key, created bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if key, err = wgtypes.GeneratePrivateKey(); err != nil {
			return key, false, fmt.Errorf("create WireGuard key: %w", err)
		}
		if err := atomicfile.Write(path, []byte(key.String()+"\n"), 0o600); err != nil {
			return key, false, fmt.Errorf("save WireGuard key: %w", err)
		}
		return key, true, nil
	}
	if err != nil {
		return key, false, fmt.Errorf("read WireGuard key: %w", err)
	}
	if key, err = wgtypes.ParseKey(strings.TrimSpace(string(b))); err != nil {
		// Not the parser's words: they could quote the file.
		return key, false, fmt.Errorf("WireGuard key %s is not a base64 key", path)
	}
	return key, false, nil
}

// wireGuard fills in l's encryption from cfg: the setting, and unless it
// is "none" the key from state_dir when the kernel can do WireGuard. It
// returns the one line that says how this edge encrypts (for the log).
func wireGuard(cfg config.Edge, l *mesh.Local) (string, error) {
	l.Encryption = cfg.Encryption
	switch {
	case cfg.Encryption == mesh.EncryptNone:
		return `encryption = "none": every link runs plaintext`, nil
	case l.Mode == netcfg.ModeGRE:
		l.NoWireGuard = "GRE mode carries no WireGuard"
		return "GRE mode: every link runs plaintext (WireGuard needs mode vxlan)", nil
	}
	if err := netcfg.WireGuardSupported(); err != nil {
		l.NoWireGuard = err.Error()
		if cfg.Encryption == mesh.EncryptRequired {
			return "", fmt.Errorf(`encryption = "required", but this %s`, err)
		}
		return "no WireGuard in this kernel: every link runs plaintext (" + err.Error() + ")", nil
	}
	key, created, err := loadWireGuardKey(filepath.Join(cfg.StateDir, wireGuardKeyFile))
	if err != nil {
		return "", err
	}
	l.WireGuardKey = key
	how := "loaded"
	if created {
		how = "generated"
	}
	return fmt.Sprintf("encrypting with kernel WireGuard (encryption = %q; key %s in state_dir, public key %s)", cfg.Encryption, how, key.PublicKey()), nil
}

// followLinks notes how every link of set runs and says so when that
// changes: a warning per peer that runs plaintext or gets no path while
// this edge encrypts (an edge that cannot encrypt at all said so once, at
// start), and counts the links by how they run.
func (a *Agent) followLinks(set map[string]bus.Edge) {
	links := mesh.Links(a.local, set)
	a.handshakes(set, links)
	now := map[string]string{}
	counts := map[string]int{}
	loud := a.local.WireGuardKey != (wgtypes.Key{})
	for name, l := range links {
		s := l.String()
		switch {
		case l.Stale:
			counts["stale"]++
		case l.Encrypted:
			counts["encrypted"]++
		case l.NoPath:
			counts["no_path"]++
		default:
			counts["plaintext"]++
		}
		if s != "" {
			now[name] = s
		}
		if s == a.links[name] {
			continue
		}
		switch {
		case s == "" && a.links[name] != "":
			a.log.Info("link encrypted", "peer", name)
		case l.Stale:
			a.log.Warn("encrypted link down", "peer", name, "link", s)
		case s != "" && (loud || l.NoPath):
			a.log.Warn("link not encrypted", "peer", name, "link", s)
		}
	}
	a.links = now
	a.metrics.links(counts)
	names := map[wgtypes.Key]string{}
	for name, e := range set {
		if k, err := wgtypes.ParseKey(e.WireGuardKey); err == nil {
			names[k] = name
		}
	}
	a.metrics.wgNames.Store(&names)
}

// handshakes marks the encrypted links of links whose peer has not
// completed a WireGuard handshake for mesh.HandshakeTimeout — counted from
// when the link was first seen encrypted when it never has — as stale.
func (a *Agent) handshakes(set map[string]bus.Edge, links map[string]mesh.Link) {
	if a.local.WireGuardKey == (wgtypes.Key{}) {
		return
	}
	stats, err := a.kernel.WireGuardStats("")
	if err != nil {
		a.log.Debug("read WireGuard peers", "err", err)
		return
	}
	last := map[string]time.Time{}
	for _, s := range stats {
		last[s.PublicKey.String()] = s.LastHandshake
	}
	now := time.Now()
	since := map[string]time.Time{}
	for name, l := range links {
		if !l.Encrypted {
			continue
		}
		since[name] = now
		if t, ok := a.encryptedSince[name]; ok {
			since[name] = t
		}
		ref := last[set[name].WireGuardKey]
		if ref.IsZero() {
			ref = since[name]
		}
		if age := now.Sub(ref); age > mesh.HandshakeTimeout {
			l.Stale, l.Why = true, fmt.Sprintf("no WireGuard handshake for %s", age.Round(time.Second))
			links[name] = l
		}
	}
	a.encryptedSince = since
}
