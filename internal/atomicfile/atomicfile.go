// Package atomicfile writes a file so that a crash or a power cut at any
// moment leaves either its old content or its new one, never a mix: the
// state an edge restores the mesh from with the controller down, the
// controller's keys and certificates.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with b, mode perm: a temporary file in the same
// directory (created 0700 if missing) is written and synced, renamed over
// path, and the directory is synced so that the rename itself survives a
// power cut.
func Write(path string, b []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if err := write(f, b, perm); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// write fills f with b, sets its mode, syncs and closes it.
func write(f *os.File, b []byte, perm os.FileMode) error {
	_, err := f.Write(b)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
