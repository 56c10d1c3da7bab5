package controller

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cframe/cframe/bus/embedded"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/store"
)

// storeReplicas is how many controllers of a cluster hold the embedded store.
const storeReplicas = 3

// replicas is the embedded store's replica count for cfg: every controller
// of a small cluster, three of a larger one, one for a lone controller.
func replicas(cfg config.Controller) int {
	if !cfg.Clustered() {
		return 1
	}
	return min(storeReplicas, len(cfg.ClusterPeers))
}

// duplicateNameGrace is how long a controller that opened its store
// watches its routes for a controller with its own name before serving.
const duplicateNameGrace = 1500 * time.Millisecond

// clusterWaitLog is how often a controller waiting for its cluster says so.
const clusterWaitLog = 5 * time.Second

// awaitCluster retries open until the cluster can hold the store (its
// JetStream has elected a leader and enough controllers are up for the
// replicas), logging what it waits for. It fails at once when another
// controller presents this one's server_name. JetStream ignores the first
// requests of a freshly formed cluster, so open is given a short timeout
// first, doubled on each attempt.
func (c *Controller) awaitCluster(open func(timeout time.Duration) (store.Store, error)) (store.Store, error) {
	timeout := time.Second
	type opened struct {
		s   store.Store
		err error
	}
	var logged time.Time
	for {
		// JetStream drops requests made before its metadata has a leader:
		// wait for one rather than for a request's timeout.
		if meta, _ := c.srv.Leaders(""); meta == "" {
			select {
			case msg := <-c.srv.DuplicateName():
				return nil, c.duplicateName(msg)
			case <-time.After(100 * time.Millisecond):
				continue
			}
		}
		done := make(chan opened, 1)
		go func(timeout time.Duration) {
			s, err := open(timeout)
			done <- opened{s, err}
		}(timeout)
		timeout = min(2*timeout, 8*time.Second)
		var o opened
		select {
		case o = <-done:
		case msg := <-c.srv.DuplicateName():
			return nil, c.duplicateName(msg)
		}
		if o.err == nil {
			// The store can open through the other peers before the route
			// to a controller of the same name was tried: give every route
			// a moment (a refused route is retried every second).
			select {
			case msg := <-c.srv.DuplicateName():
				return nil, c.duplicateName(msg)
			case <-time.After(duplicateNameGrace):
				return o.s, nil
			}
		}
		err := o.err
		if time.Since(logged) >= clusterWaitLog {
			reach, total := c.srv.Controllers()
			c.log.Info("waiting for the cluster to hold the store", "reachable", strings.Join(reach, ","),
				"controllers", total, "peers", strings.Join(c.cfg.ClusterPeers, ","), "err", err)
			logged = time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// duplicateName is the error of a controller whose server_name another
// controller uses; msg is the NATS server's log line, which starts with the
// other's address.
func (c *Controller) duplicateName(msg string) error {
	addr, _, _ := strings.Cut(msg, " - ")
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host // the port is the route connection's own
	}
	return fmt.Errorf("server_name %q is already used by the controller at %s: give every controller of a cluster its own server_name",
		c.cfg.ServerName, addr)
}

// writable refuses a write at once when the embedded store of a cluster
// cannot commit it: a replicated write needs a quorum of the controllers,
// and one without it would only hang.
func (c *Controller) writable() error {
	if !c.cfg.Clustered() || len(c.cfg.Etcd) > 0 {
		return nil
	}
	reach, total := c.srv.Controllers()
	if need := embedded.Quorum(total); len(reach) < need {
		return fmt.Errorf("%w: no quorum: this controller reaches %d of %d controllers (%s) and a write needs %d; nothing was changed, and reads answer from the last known state",
			api.ErrUnavailable, len(reach), total, strings.Join(reach, ", "), need)
	}
	return nil
}

// reporter reports whether this controller publishes the events that every
// controller observes alike (edges going online and offline): the one whose
// server leads the cluster's JetStream metadata, or a lone controller.
func (c *Controller) reporter() bool {
	if !c.cfg.Clustered() {
		return true
	}
	meta, _ := c.srv.Leaders("")
	return meta == c.cfg.ServerName
}

// Cluster describes the control plane as this controller sees it.
func (c *Controller) Cluster() api.Cluster {
	reach, total := c.srv.Controllers()
	meta, leader := c.srv.Leaders("KV_" + bucket)
	rev := c.view.now().rev
	cl := api.Cluster{Name: c.cfg.ServerName, Controllers: total, Reachable: reach, Quorum: !errors.Is(c.writable(), api.ErrUnavailable),
		MetaLeader: meta, Store: "embedded", Revision: rev}
	if len(c.cfg.Etcd) > 0 {
		cl.Store = "etcd"
	} else {
		cl.StoreLeader = leader
	}
	return cl
}
