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

	"github.com/cframe/cframe/internal/atomicfile"
)

// Rotating the WireGuard key without losing a packet. The kernel, when a
// device's private key changes, stops sending on every peer's current
// session but keeps receiving on it, and stages what it would send (up to
// 128 packets a peer) until a handshake with the new key completes; a
// peer added with a persistent keepalive on a running device initiates a
// handshake at once. So the order is:
//
//  1. `cframe-edge rotate-key` writes the new private key to
//     state_dir/wireguard.key.next (0600) and waits;
//  2. the agent, at its next heartbeat tick and only while connected to
//     the controller (else the rotation waits: never half-applied), sets
//     the device's key to the new one and heartbeats the new public key
//     with RotatingFrom = the old one;
//  3. the controller moves the pin (keyUpdate) and the edge set carries
//     the new key: every peer replaces the old WireGuard peer by the new
//     one in one reconcile (netcfg: the new peer before the old one goes)
//     and handshakes at once; the staged packets leave;
//  4. the agent sees its new key in the edge set and renames
//     wireguard.key.next over wireguard.key: the rotation is committed.
//
// If the edge set does not carry the new key within rotateBound, the agent
// sets the old key again (the peers still have it) and heartbeats it
// rotating from the new one, so that a controller that did move the pin
// moves it back. A crash before the commit leaves wireguard.key (the old
// key) and wireguard.key.next: the restarted agent starts with the old
// key and rotates again. The outcome goes to state_dir/wireguard.rotate
// for the CLI.
//
// The CLI and the agent talk through these two files rather than a
// socket: the staged key must be on disk anyway before the device uses it
// (a crash must not lose the key the peers are told about), state_dir is
// already the agent's private, root-only place, and a file polled at the
// heartbeat tick needs no listener, no permissions of its own and works
// the same when the agent is restarted in the middle.

// Files in state_dir.
const (
	rotateNextFile   = wireGuardKeyFile + ".next"
	rotateResultFile = "wireguard.rotate"
)

// rotateBound is how long the agent waits for the controller to take the
// new key before it rolls back.
const rotateBound = 30 * time.Second

// RotateTimeout is how long `cframe-edge rotate-key` waits for the agent:
// a rollback is reported within it.
const RotateTimeout = rotateBound + 30*time.Second

// rotation is a key change under way: the device runs to, heartbeats name
// to as rotating from from, since began. back: to is the old key again (a
// rollback), waiting for the pin to come back to it.
type rotation struct {
	from, to wgtypes.Key
	began    time.Time
	back     bool
}

// rotateStep is what a rotation does next.
type rotateStep int

const (
	rotateWait     rotateStep = iota // keep heartbeating
	rotateDone                       // the edge set carries to
	rotateRollBack                   // the bound passed: go back to from
)

// step is what r does at now, the edge set pinning pinned for this edge.
// A rollback does not time out: its key is the one the peers had.
func (r rotation) step(now time.Time, pinned string) rotateStep {
	switch {
	case pinned == r.to.PublicKey().String():
		return rotateDone
	case !r.back && now.Sub(r.began) > rotateBound:
		return rotateRollBack
	}
	return rotateWait
}

// rolledBack is r reversed at now.
func (r rotation) rolledBack(now time.Time) rotation {
	return rotation{from: r.to, to: r.from, began: now, back: true}
}

// RotateResult is the agent's last word on a rotation, as the CLI reads it.
type RotateResult struct {
	Key   string // the new public key, when rotated
	Error string // why not, otherwise
}

// StageRotation writes a new WireGuard key to stateDir for the running
// agent and returns its public key. A rotation already staged is an
// error.
func StageRotation(stateDir string) (string, error) {
	next := filepath.Join(stateDir, rotateNextFile)
	if _, err := os.Stat(next); err == nil {
		return "", fmt.Errorf("a key rotation is already under way (%s exists)", next)
	}
	if err := os.Remove(filepath.Join(stateDir, rotateResultFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return "", fmt.Errorf("create WireGuard key: %w", err)
	}
	if err := atomicfile.Write(next, []byte(key.String()+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("stage WireGuard key: %w", err)
	}
	return key.PublicKey().String(), nil
}

// ReadRotateResult returns the agent's outcome in stateDir, nil while
// there is none.
func ReadRotateResult(stateDir string) (*RotateResult, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, rotateResultFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s := strings.TrimSpace(string(b))
	if k, ok := strings.CutPrefix(s, "rotated "); ok {
		return &RotateResult{Key: k}, nil
	}
	return &RotateResult{Error: strings.TrimPrefix(s, "failed: ")}, nil
}

func (a *Agent) statePathOf(file string) string { return filepath.Join(a.cfg.StateDir, file) }

// rotateResult records the outcome for the CLI.
func (a *Agent) rotateResult(line string) {
	if err := atomicfile.Write(a.statePathOf(rotateResultFile), []byte(line+"\n"), 0o600); err != nil {
		a.log.Error("record key rotation outcome", "err", err)
	}
}

// rotateFail drops the staged key and tells the CLI why.
func (a *Agent) rotateFail(why string) {
	if err := os.Remove(a.statePathOf(rotateNextFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.log.Error("remove staged WireGuard key", "err", err)
	}
	a.rotateResult("failed: " + why)
}

// followRotation runs at every heartbeat tick, before the heartbeat leaves
// (which then names the key the device runs): it starts a staged rotation,
// commits one the edge set confirms, or rolls one back past its bound.
func (a *Agent) followRotation(now time.Time) {
	set, _, ok := a.follow.Set()
	pinned := ""
	if ok {
		pinned = set[a.cfg.Name].WireGuardKey
	}
	if a.rotating == nil {
		a.startRotation(now, ok)
		return
	}
	r := *a.rotating
	switch r.step(now, pinned) {
	case rotateWait:
		return
	case rotateDone:
		a.rotating, a.status.RotatingFrom, a.local.RotatingFrom = nil, "", wgtypes.Key{}
		if r.back {
			a.log.Info("WireGuard key rollback confirmed by the edge set", "key", r.to.PublicKey())
			return
		}
		if err := os.Rename(a.statePathOf(rotateNextFile), a.statePathOf(wireGuardKeyFile)); err != nil {
			// The device and the pin run the new key; the file says old:
			// a restart would need a new rotation.
			a.log.Error("WireGuard key rotated but not saved", "err", err)
			a.rotateResult("failed: the new key is in use but not saved: " + err.Error())
			return
		}
		a.log.Info("WireGuard key rotated: the controller pinned the new key and the peers follow it", "from", r.from.PublicKey(), "to", r.to.PublicKey())
		a.rotateResult("rotated " + r.to.PublicKey().String())
	case rotateRollBack:
		back := r.rolledBack(now)
		a.rotating = &back
		a.setWireGuardKey(back.to, back.from)
		why := fmt.Sprintf("the controller did not take the new key within %s: rolled back to %s", rotateBound, back.to.PublicKey())
		a.log.Warn("WireGuard key rotation rolled back", "reason", why)
		a.rotateFail(why)
		a.reconcile("WireGuard key rotation rolled back")
	}
}

// startRotation starts the rotation staged in state_dir, if any, when
// connected (held: the agent holds an edge set).
func (a *Agent) startRotation(now time.Time, held bool) {
	b, err := os.ReadFile(a.statePathOf(rotateNextFile))
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		a.log.Error("read staged WireGuard key", "err", err)
		return
	}
	if a.local.WireGuardKey == (wgtypes.Key{}) {
		a.rotateFail("this edge does not encrypt: " + a.status.Plaintext)
		return
	}
	next, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		a.rotateFail("the staged key " + a.statePathOf(rotateNextFile) + " is not a base64 key")
		return
	}
	if !held || !a.nc.IsConnected() {
		if !a.rotateDeferred {
			a.rotateDeferred = true
			a.log.Warn("WireGuard key rotation waits for the controller: the key stays as it is until then")
		}
		return
	}
	a.rotateDeferred = false
	r := rotation{from: a.local.WireGuardKey, to: next, began: now}
	a.rotating = &r
	a.setWireGuardKey(r.to, r.from)
	a.log.Info("rotating WireGuard key: the device runs the new key; waiting for the controller to pin it", "from", r.from.PublicKey(), "to", r.to.PublicKey(), "bound", rotateBound)
	a.reconcile("WireGuard key rotation")
}

// setWireGuardKey has the device run key and heartbeats say it rotates
// from from.
func (a *Agent) setWireGuardKey(key, from wgtypes.Key) {
	a.local.WireGuardKey, a.local.RotatingFrom = key, from
	a.status.WireGuardKey = key.PublicKey().String()
	a.status.RotatingFrom = from.PublicKey().String()
}
