package bus

import (
	"fmt"
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
}

// Cluster identity and liveness.
const (
	// ClusterName names the NATS cluster of the controllers.
	ClusterName = "cframe"
	// ClusterUser is the user controllers present on cluster routes; the
	// password is ClusterPassword(secret).
	ClusterUser = "cframe-cluster"
	// routePing is how often a route is pinged; after routeMaxPingsOut
	// unanswered pings the peer counts as gone (a host that died without
	// closing its connections).
	routePing        = time.Second
	routeMaxPingsOut = 3
)

// ClusterPassword is the route password, derived from the join secret that
// every controller of a cluster shares: a controller without the secret
// cannot join, and the secret itself never crosses the wire.
func ClusterPassword(secret string) string { return mac(secret, "cluster") }

// Quorum is the number of controllers of a cluster of n that must be
// reachable for a replicated write to commit.
func Quorum(n int) int { return n/2 + 1 }

// joinCluster configures opts for s.cfg.Cluster: the cluster listener, a
// route to every peer with the cluster credentials, and the authentication
// of incoming routes.
func (s *Server) joinCluster(opts *server.Options) error {
	cc := s.cfg.Cluster
	host, port, err := splitPort(cc.Addr)
	if err != nil {
		return fmt.Errorf("cluster_addr %q: %w", cc.Addr, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	opts.Cluster = server.ClusterOpts{
		Name:         ClusterName,
		Host:         host,
		Port:         port,
		PingInterval: routePing,
		MaxPingsOut:  routeMaxPingsOut,
	}
	creds := url.UserPassword(ClusterUser, ClusterPassword(s.cfg.Secret))
	for _, p := range cc.Peers {
		opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", User: creds, Host: p})
	}
	opts.CustomRouterAuthentication = routeAuth{s}
	tuneRaft()
	return nil
}

// routeAuth admits cluster routes that present the cluster credentials.
type routeAuth struct{ s *Server }

// Check implements server.Authentication for routes.
func (a routeAuth) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if o.Username == ClusterUser && equal(o.Password, ClusterPassword(a.s.cfg.Secret)) {
		return true
	}
	if a.s.cfg.Log != nil {
		a.s.cfg.Log.Warn("refused cluster connection: it does not hold this cluster's secret (every controller needs the same join secret)",
			"remote", c.RemoteAddress())
	}
	return false
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
// and the given stream, as this server knows them ("" when there is none,
// or no cluster).
func (s *Server) Leaders(stream string) (meta, streamLeader string) {
	if s.cfg.Cluster == nil {
		return "", ""
	}
	if jz, err := s.ns.Jsz(nil); err == nil && jz.Meta != nil {
		meta = jz.Meta.Leader
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
