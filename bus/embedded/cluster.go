package embedded

import (
	"crypto/tls"
	"fmt"
	"github.com/cframe/cframe/bus"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ClusterConfig joins the embedded server to the other controllers' servers:
// one NATS cluster whose routes carry every subject between them and whose
// JetStream replicates the store.
type ClusterConfig struct {
	// Addr is where the cluster port listens (":58424").
	Addr string
	// Peers are every controller's cluster address, this one's included.
	Peers []string
	// TLS secures the routes both ways and admits a peer only if its
	// certificate proves the cluster's secret (Certs.RouteTLS).
	TLS *tls.Config
}

// Cluster identity and liveness.
const (
	// ClusterName names the NATS cluster of the controllers.
	ClusterName = "cframe"
	// routePing is how often a route is pinged; after routeMaxPingsOut
	// unanswered pings the peer counts as gone (a host that died without
	// closing its connections).
	routePing        = time.Second
	routeMaxPingsOut = 3
)

// Quorum is the number of controllers of a cluster of n that must be
// reachable for a replicated write to commit.
func Quorum(n int) int { return n/2 + 1 }

// joinCluster configures opts for s.cfg.Cluster: the cluster listener and a
// route to every peer, both TLS with the peer's certificate checked for
// the proof of the cluster's secret: a server without it (an outsider, a
// controller of another cluster) is refused, and the refusal logged.
func (s *Server) joinCluster(opts *server.Options) error {
	cc := s.cfg.Cluster
	host, port, err := splitPort(cc.Addr)
	if err != nil {
		return fmt.Errorf("cluster_addr %q: %w", cc.Addr, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	if cc.TLS == nil {
		return fmt.Errorf("cluster: no TLS configuration")
	}
	tc := cc.TLS.Clone()
	if verify := tc.VerifyConnection; verify != nil && s.cfg.Log != nil {
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				s.cfg.Log.Warn("refused cluster connection", "reason", err)
			}
			return err
		}
	}
	opts.Cluster = server.ClusterOpts{
		Name:         ClusterName,
		Host:         host,
		Port:         port,
		TLSConfig:    tc,
		TLSTimeout:   bus.TLSTimeout.Seconds(),
		PingInterval: routePing,
		MaxPingsOut:  routeMaxPingsOut,
	}
	for _, p := range cc.Peers {
		opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", Host: p})
	}
	tuneRaft()
	return nil
}

// Controllers returns the names of the controllers this server reaches
// (itself included) and how many the cluster has; a lone controller reaches
// itself, of one.
func (s *Server) Controllers() (reachable []string, total int) {
	reachable = []string{s.ns.Name()}
	if s.cfg.Cluster == nil {
		return reachable, 1
	}
	if rz, err := s.ns.Routez(nil); err == nil {
		for _, r := range rz.Routes {
			if r.RemoteName != "" && !slices.Contains(reachable, r.RemoteName) {
				reachable = append(reachable, r.RemoteName)
			}
		}
	}
	slices.Sort(reachable)
	return reachable, len(s.cfg.Cluster.Peers)
}

// Leaders returns the names of the servers leading JetStream's metadata
// and the given stream (if any), as this server knows them ("" when there
// is none, or no cluster).
func (s *Server) Leaders(stream string) (meta, streamLeader string) {
	if s.cfg.Cluster == nil {
		return "", ""
	}
	if jz, err := s.ns.Jsz(nil); err == nil && jz.Meta != nil {
		meta = jz.Meta.Leader
	}
	if stream == "" {
		return meta, ""
	}
	if ad, err := s.ns.JszAccount(&server.JSzOptions{Account: server.DEFAULT_GLOBAL_ACCOUNT, Streams: true}); err == nil {
		for _, sd := range ad.Streams {
			if sd.Name == stream && sd.Cluster != nil {
				streamLeader = sd.Cluster.Leader
			}
		}
	}
	return meta, streamLeader
}

// DuplicateName delivers the name of a peer that presented this server's
// own server name (the route is refused): every controller of a cluster
// needs its own server_name.
func (s *Server) DuplicateName() <-chan string { return s.dup }

// noteError watches the NATS server's errors for a duplicate server name.
func (s *Server) noteError(msg string) {
	if strings.Contains(msg, "duplicate name") {
		select {
		case s.dup <- msg:
		default:
		}
	}
}

// splitPort parses "host:port" with a port of 0 to 65535.
func splitPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("invalid port")
	}
	return host, port, nil
}
