package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestRotationStep: a rotation waits for the edge set to pin its new key,
// is done when it does, rolls back once rotateBound has passed; a rollback
// waits for the pin to come back however long that takes.
func TestRotationStep(t *testing.T) {
	oldKey, _ := wgtypes.GeneratePrivateKey()
	newKey, _ := wgtypes.GeneratePrivateKey()
	oldPub, newPub := oldKey.PublicKey().String(), newKey.PublicKey().String()
	t0 := time.Date(2026, 12, 8, 2, 0, 0, 0, time.UTC)
	r := rotation{from: oldKey, to: newKey, began: t0}
	back := r.rolledBack(t0.Add(rotateBound + time.Second))
	tests := []struct {
		name   string
		r      rotation
		now    time.Time
		pinned string
		want   rotateStep
	}{
		{"pin still the old key: wait", r, t0.Add(time.Second), oldPub, rotateWait},
		{"no edge set yet: wait", r, t0.Add(time.Second), "", rotateWait},
		{"pin moved: done", r, t0.Add(2 * time.Second), newPub, rotateDone},
		{"pin moved just past the bound: done, not rolled back", r, t0.Add(rotateBound + time.Second), newPub, rotateDone},
		{"at the bound: wait", r, t0.Add(rotateBound), oldPub, rotateWait},
		{"past the bound: roll back", r, t0.Add(rotateBound + time.Millisecond), oldPub, rotateRollBack},
		{"rollback, the pin on the new key: wait", back, back.began.Add(time.Hour), newPub, rotateWait},
		{"rollback, the pin on the old key: done", back, back.began.Add(time.Second), oldPub, rotateDone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.step(tc.now, tc.pinned); got != tc.want {
				t.Errorf("step = %d, want %d", got, tc.want)
			}
		})
	}
	if back.to != oldKey || back.from != newKey || !back.back {
		t.Errorf("rolled back = %+v: want to the old key, from the new one", back)
	}
}

// TestStageRotation: the CLI's half — a staged key (0600, its public key
// returned), a second staging refused while one is under way, and the
// agent's two outcomes read back.
func TestStageRotation(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, rotateResultFile), []byte("failed: an old outcome\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err := StageRotation(dir)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := ReadRotateResult(dir); err != nil || res != nil {
		t.Fatalf("after staging: result %+v, %v; want none (the old one removed)", res, err)
	}
	fi, err := os.Stat(filepath.Join(dir, rotateNextFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("staged key: %v, %v; want mode 0600", fi, err)
	}
	key, _, err := loadWireGuardKey(filepath.Join(dir, rotateNextFile))
	if err != nil || key.PublicKey().String() != pub {
		t.Fatalf("staged key %v (%v), want the private half of %s", key.PublicKey(), err, pub)
	}
	if _, err := StageRotation(dir); err == nil || !strings.Contains(err.Error(), "already under way") {
		t.Fatalf("second staging: %v, want refused", err)
	}
	for line, want := range map[string]RotateResult{
		"rotated " + pub:          {Key: pub},
		"failed: no controller\n": {Error: "no controller"},
	} {
		if err := os.WriteFile(filepath.Join(dir, rotateResultFile), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		if res, err := ReadRotateResult(dir); err != nil || res == nil || *res != want {
			t.Errorf("%q: %+v, %v; want %+v", line, res, err, want)
		}
	}
}
