package controller

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
	"github.com/cframe/cframe/orchestrator/store"
)

// importStandalone carries the embedded store of a controller that ran
// alone (<data_dir>/jetstream) into its cluster's store when it first
// starts as one of a cluster: every edge the cluster lacks, checked against
// the cluster's edges like an add, and every pinned key. The directory is
// then renamed <data_dir>/jetstream.imported, so this happens once; an
// interrupted import is finished on the next start.
func (c *Controller) importStandalone() error {
	if !c.cfg.Clustered() || len(c.cfg.Etcd) > 0 {
		return nil
	}
	dir := filepath.Join(c.cfg.DataDir, "jetstream")
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, 2*storeTimeout)
	defer cancel()
	old, found, err := store.ReadJetStreamDir(ctx, dir, bucket)
	if err != nil {
		return fmt.Errorf("import the standalone store %s: %w", dir, err)
	}
	if found {
		if err := c.importState(old); err != nil {
			return fmt.Errorf("import the standalone store %s: %w (it is left in place; start again to finish)", dir, err)
		}
	}
	if err := os.Rename(dir, dir+".imported"); err != nil {
		return err
	}
	c.log.Info("imported the standalone store into the cluster", "edges", len(old.Edges), "pins", len(old.Pins), "kept_as", dir+".imported")
	return nil
}

// importState writes a lone controller's edges and pins into the cluster's
// store. An edge the cluster already has keeps the cluster's value, and one
// that clashes with the cluster's edges is left out (both logged).
func (c *Controller) importState(old store.State) error {
	names := make([]string, 0, len(old.Edges))
	for n := range old.Edges {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := old.Edges[n]
		had := false
		_, err := c.change(c.ctx, func(edges map[string]bus.Edge, rev uint64) (edgeWrite, error) {
			if _, had = edges[e.Name]; had {
				return edgeWrite{done: &api.ChangeResult{}}, nil
			}
			if err := edgeset.CheckConflicts(edges, e); err != nil {
				return edgeWrite{}, err
			}
			return edgeWrite{name: e.Name, put: &e}, nil
		})
		var conflict *edgeset.ConflictError
		switch {
		case errors.As(err, &conflict):
			c.log.Warn("standalone edge not imported", "edge", n, "err", err)
		case err != nil:
			return err
		case had:
			c.log.Info("standalone edge not imported: the cluster has it already", "edge", n)
		}
	}
	for name, key := range old.Pins {
		ctx, cancel := context.WithTimeout(c.ctx, storeTimeout)
		p, err := c.store.PinKey(ctx, name, key)
		cancel()
		if err != nil {
			return err
		}
		if p.Key != key {
			c.log.Warn("standalone key pin not imported: the cluster pins another key", "edge", name, "key", key, "cluster_key", p.Key)
		}
	}
	return nil
}
