// Package api is the controller's HTTP API, byte-compatible with the
// reference walkthrough in paths and JSON field names:
//
//	POST /api-service/v1/edge/add   {"name","hostaddr","cidr"[,"comment","extra_cidrs","site","priority","vip","vip6"]}
//	POST /api-service/v1/edge/del   {"name"}
//	GET  /api-service/v1/edge/list  [{"name","comment","cidr","host_addr","status",...}]
//	GET  /api-service/v1/topology
//	GET  /api-service/v1/topology/stream     (server-sent events, for the page)
//	GET  /api-service/v1/events/credentials  (NATS credentials for `cframectl events`)
//	GET  /api-service/v1/cluster    (the controllers this one reaches, quorum, leaders)
//
// Requests from loopback need no credentials (the walkthrough curls
// 127.0.0.1, in plain HTTP); every other request must come over HTTPS (the
// same address, see Listen) with "Authorization: Bearer <api_token>" (or,
// for reading only, the session cookie a browser gets at PathLogin).
// Errors are JSON {"error": "..."} with a 4xx status (503 when the store
// cannot take a write: no quorum of controllers); nothing is stored for a
// refused request. The controller mounts further read-only handlers (the
// metrics, the topology page) under the same rules.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// Paths of the API.
const (
	PathAdd         = "/api-service/v1/edge/add"
	PathDel         = "/api-service/v1/edge/del"
	PathList        = "/api-service/v1/edge/list"
	PathTopology    = "/api-service/v1/topology"
	PathCredentials = "/api-service/v1/events/credentials"
	PathCluster     = "/api-service/v1/cluster"
	// PathTopologyStream streams the topology as server-sent events: a
	// "topology" event with the whole Topology when a client connects and
	// whenever it changes.
	PathTopologyStream = "/api-service/v1/topology/stream"
)

// ErrNotFound marks a request for an edge that does not exist (HTTP 404).
var ErrNotFound = errors.New("not found")

// ErrUnavailable marks a write the store cannot take now, such as one made
// without a quorum of controllers (HTTP 503). Nothing was changed.
var ErrUnavailable = errors.New("store unavailable")

// Service is what the controller offers the API.
type Service interface {
	AddEdge(ctx context.Context, s edgeset.Spec) (ChangeResult, error)
	DeleteEdge(ctx context.Context, name string) (ChangeResult, error)
	ListEdges() []EdgeView
	Topology() Topology
	EventCredentials() Credentials
	Cluster() Cluster
}

// Cluster is the control plane as one controller sees it.
type Cluster struct {
	// Name is this controller's server_name.
	Name string `json:"name"`
	// Controllers is the number of controllers (1 when alone); Reachable
	// names those this one reaches, itself included.
	Controllers int      `json:"controllers"`
	Reachable   []string `json:"reachable"`
	// Quorum is true when this controller can take writes.
	Quorum bool `json:"quorum"`
	// MetaLeader and StoreLeader name the controllers leading JetStream's
	// metadata and the embedded store's replicas (empty when alone, with
	// etcd, or during an election).
	MetaLeader  string `json:"meta_leader,omitempty"`
	StoreLeader string `json:"store_leader,omitempty"`
	// Store is "embedded" or "etcd"; Revision is the edge set's.
	Store    string `json:"store"`
	Revision uint64 `json:"revision"`
}

// EdgeView is one element of the edge list. The first five fields are the
// walkthrough's; "status" keeps its integer type: 1 online, 0 offline.
type EdgeView struct {
	Name       string   `json:"name"`
	Comment    string   `json:"comment"`
	CIDR       string   `json:"cidr"`
	HostAddr   string   `json:"host_addr"`
	Status     int      `json:"status"`
	ExtraCIDRs []string `json:"extra_cidrs,omitempty"`
	// Site, Priority, VIP and VIP6 are the edge's site fields (empty
	// without a site: the edge is a site of its own).
	Site     string `json:"site,omitempty"`
	Priority int    `json:"priority,omitempty"`
	VIP      string `json:"vip,omitempty"`
	VIP6     string `json:"vip6,omitempty"`
	// Role is "active" for the gateway carrying its site's traffic (every
	// edge without a site), else "standby".
	Role string `json:"role"`
	// State is "online" or "offline" (no heartbeat for bus.OfflineAfter, or
	// the agent's connection closed).
	State string `json:"state"`
	// Revision is the store revision of the edge's last change.
	Revision uint64 `json:"revision"`
	// AppliedRevision is the edge-set revision the edge's kernel matches.
	AppliedRevision uint64     `json:"applied_revision"`
	LastError       string     `json:"last_error,omitempty"`
	Conflicts       []string   `json:"conflicts,omitempty"`
	LastSeen        *time.Time `json:"last_seen,omitempty"`
	// Probes is the data plane as the edge measures it: every remote
	// gateway's reachability and round-trip time through the tunnel.
	Probes []bus.PeerProbe `json:"probes,omitempty"`
	// Key is the public key pinned for the edge, once it has connected.
	Key string `json:"key,omitempty"`
	// Encryption is the edge's setting (prefer, required, none) as its
	// agent reports it; WireGuardKey the WireGuard public key pinned for
	// it; MeshAddr its address inside the WireGuard mesh; Plaintext, when
	// set, why the edge does not encrypt at all.
	Encryption   string `json:"encryption,omitempty"`
	WireGuardKey string `json:"wireguard_key,omitempty"`
	MeshAddr     string `json:"mesh_addr,omitempty"`
	Plaintext    string `json:"plaintext,omitempty"`
}

// Edge states.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// ChangeResult answers add and del.
type ChangeResult struct {
	Revision uint64 `json:"revision"`
	// Updated is true when add replaced an existing edge.
	Updated bool   `json:"updated"`
	Message string `json:"message"`
}

// Topology is the mesh as the controller sees it.
type Topology struct {
	Revision uint64         `json:"revision"`
	Edges    []TopologyEdge `json:"edges"`
	// Links are the tunnels between every pair of edges.
	Links []Link `json:"links"`
	// Pending are edges connected to the bus but not added yet.
	Pending []string `json:"pending"`
	// Sites are the networks with their gateways, sorted by name (an edge
	// without a site is a site of its own).
	Sites []TopologySite `json:"sites"`
}

// TopologySite is one network and the gateway carrying its traffic.
type TopologySite struct {
	Name     string   `json:"name"`
	CIDRs    []string `json:"cidrs"`
	VIP      string   `json:"vip,omitempty"`
	VIP6     string   `json:"vip6,omitempty"`
	Gateways []string `json:"gateways"`
	Active   string   `json:"active"`
	// Epoch, Reason and Since describe the claim that made Active the
	// active gateway, as its gateways reported it (Epoch 0: none yet, the
	// preferred gateway is active).
	Epoch  uint64     `json:"epoch,omitempty"`
	Reason string     `json:"reason,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
}

// TopologyEdge is one edge with the values its peers program for it.
type TopologyEdge struct {
	Name            string   `json:"name"`
	Site            string   `json:"site,omitempty"`
	Role            string   `json:"role"`
	HostAddr        string   `json:"host_addr"`
	CIDRs           []string `json:"cidrs"`
	VTEPMAC         string   `json:"vtep_mac"`
	NextHop         string   `json:"next_hop"`
	State           string   `json:"state"`
	AppliedRevision uint64   `json:"applied_revision"`
	// Since is when the agent went online or offline (unset before its
	// first heartbeat).
	Since     *time.Time `json:"since,omitempty"`
	LastError string     `json:"last_error,omitempty"`
	Conflicts []string   `json:"conflicts,omitempty"`
}

// Link states. State combines both views of a link: "up" when both ends
// run the current configuration and no probe fails, "pending" while an end
// has not applied the current revision, "down" when an end is offline or
// the probes through the tunnel fail although both ends applied it, and
// "incompatible" when the ends' underlays are of different families (one
// hostaddr IPv4, the other IPv6): they cannot build a tunnel at all.
const (
	LinkUp           = "up"
	LinkPending      = "pending"
	LinkDown         = "down"
	LinkIncompatible = "incompatible"
)

// Configuration states of a link (Link.Config).
const (
	ConfigApplied = "applied" // both ends online and at the current revision
	ConfigPending = "pending" // both online, one lags
	ConfigOffline = "offline" // an end's agent is not heartbeating
	ConfigNone    = "none"    // no tunnel to configure: the underlays are of different families
)

// Probe states of a link (Link.Probe), from the ends' tunnel probes.
const (
	ProbeUp      = "up"      // both ends reach each other through the tunnel
	ProbeDown    = "down"    // an end's probes of the other fail
	ProbeUnknown = "unknown" // no probe result (yet) from either end
)

// Link is the tunnel between two edges.
type Link struct {
	A     string `json:"a"`
	B     string `json:"b"`
	State string `json:"state"`
	// Config is what the configuration says, Probe what the data plane says.
	Config string `json:"config"`
	Probe  string `json:"probe"`
	// RTTMs is the round-trip time through the tunnel in milliseconds (the
	// mean of what both ends measure), 0 when unknown.
	RTTMs float64 `json:"rtt_ms,omitempty"`
	// Since is when the link entered State, where known.
	Since *time.Time `json:"since,omitempty"`
	// Reason says why a link is not up.
	Reason string `json:"reason,omitempty"`
	// Encryption is how the link's packets cross the underlay:
	// EncryptionWireGuard, EncryptionPlaintext, EncryptionNoPath (an end
	// requires encryption the other cannot do: the link carries nothing),
	// or "" while unknown (an end has not reported); EncryptionReason says
	// why a link is not encrypted.
	Encryption       string `json:"encryption,omitempty"`
	EncryptionReason string `json:"encryption_reason,omitempty"`
}

// Link encryption.
const (
	EncryptionWireGuard = "wireguard"
	EncryptionPlaintext = "plaintext"
	EncryptionNoPath    = "no-path"
)

// Credentials let an audit subscriber follow events on the bus.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
	// Port is the controller's NATS port; the host is the API's host.
	Port int `json:"port"`
	// Subject matches every live audit event.
	Subject string `json:"subject"`
	// Replay is the request subject for kept events (bus.ReplayRequest),
	// answered only into InboxPrefix.
	Replay      string `json:"replay"`
	InboxPrefix string `json:"inbox_prefix"`
	// Fingerprint is the bus certificate's key fingerprint: a client that
	// trusts this answer (loopback, or verified HTTPS) can pin it.
	Fingerprint string `json:"fingerprint"`
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// DelRequest is the body of POST /api-service/v1/edge/del.
type DelRequest struct {
	Name string `json:"name"`
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Mount is a further handler served beside the API, under its rules.
type Mount struct {
	Pattern string
	Handler http.Handler
}

// Handler serves the API and mounts. token is the bearer token non-loopback
// clients must present; empty means loopback only.
func Handler(svc Service, token string, log *slog.Logger, mounts ...Mount) http.Handler {
	mux := http.NewServeMux()
	route := func(path, method string, h func(r *http.Request) (any, error)) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != method {
				w.Header().Set("Allow", method)
				reply(w, http.StatusMethodNotAllowed, ErrorBody{fmt.Sprintf("%s needs %s, not %s", path, method, r.Method)})
				return
			}
			v, err := h(r)
			if err != nil {
				code := status(err)
				if code >= 500 {
					log.Error("api request failed", "path", path, "err", err)
				}
				reply(w, code, ErrorBody{err.Error()})
				return
			}
			reply(w, http.StatusOK, v)
		})
	}
	route(PathAdd, http.MethodPost, func(r *http.Request) (any, error) {
		var s edgeset.Spec
		if err := decode(r, &s); err != nil {
			return nil, err
		}
		return svc.AddEdge(withActor(r), s)
	})
	route(PathDel, http.MethodPost, func(r *http.Request) (any, error) {
		var d DelRequest
		if err := decode(r, &d); err != nil {
			return nil, err
		}
		if d.Name == "" {
			return nil, &edgeset.InvalidError{Msg: "name is required"}
		}
		return svc.DeleteEdge(withActor(r), d.Name)
	})
	route(PathList, http.MethodGet, func(*http.Request) (any, error) { return svc.ListEdges(), nil })
	route(PathTopology, http.MethodGet, func(*http.Request) (any, error) { return svc.Topology(), nil })
	route(PathCredentials, http.MethodGet, func(*http.Request) (any, error) { return svc.EventCredentials(), nil })
	route(PathCluster, http.MethodGet, func(*http.Request) (any, error) { return svc.Cluster(), nil })
	mux.HandleFunc(PathLogin, login(token))
	for _, m := range mounts {
		mux.Handle(m.Pattern, m.Handler)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNotFound, ErrorBody{fmt.Sprintf("no such API path %s", r.URL.Path)})
	})
	return authorize(mux, token)
}

// authorize lets loopback through and demands HTTPS and the bearer token
// elsewhere.
func authorize(next http.Handler, token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			got, ok := bearer(r)
			switch {
			case r.TLS == nil:
				reply(w, http.StatusBadRequest, ErrorBody{fmt.Sprintf("plain HTTP is answered on loopback only: use https://%s%s (the bus's certificate; cframectl verifies it with --secret, --ca or --fingerprint)", r.Host, r.URL.Path)})
				return
			case token == "":
				reply(w, http.StatusForbidden, ErrorBody{"the API answers loopback only: set api_token in controller.toml to allow remote clients"})
				return
			case !ok && (r.URL.Path == PathLogin || validSession(r, token)):
			case !ok && wantsPage(r):
				http.Redirect(w, r, PathLogin, http.StatusSeeOther)
				return
			case !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1:
				w.Header().Set("WWW-Authenticate", "Bearer")
				reply(w, http.StatusUnauthorized, ErrorBody{"missing or wrong bearer token"})
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// decode reads exactly one JSON object with no unknown fields.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &edgeset.InvalidError{Msg: "malformed JSON body: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	if dec.More() {
		return &edgeset.InvalidError{Msg: "malformed JSON body: more than one JSON value"}
	}
	return nil
}

func status(err error) int {
	var inv *edgeset.InvalidError
	var conflict *edgeset.ConflictError
	switch {
	case errors.As(err, &inv):
		return http.StatusBadRequest
	case errors.As(err, &conflict):
		return http.StatusConflict
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
