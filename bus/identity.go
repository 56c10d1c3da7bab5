package bus

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/cframe/cframe/internal/atomicfile"
)

// AuditUser is the NATS user name of read-only audit subscribers; its
// password is AuditPassword(secret).
const AuditUser = "cframe-audit"

// Identity is an edge's key pair. The controller pins the public key the
// first time it sees the edge's name, so the private seed never leaves the
// edge's state_dir.
type Identity struct {
	Name string
	kp   nkeys.KeyPair
	// Public is the nkey public key ("U...").
	Public string
}

// LoadIdentity reads the edge key seed from path, creating a new key pair
// (file mode 0600, parent directory 0700) on first start.
func LoadIdentity(path, name string) (*Identity, error) {
	seed, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("create edge key: %w", err)
		}
		if seed, err = kp.Seed(); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(path, seed, 0o600); err != nil {
			return nil, fmt.Errorf("save edge key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read edge key: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return nil, fmt.Errorf("edge key %s: %w", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	return &Identity{Name: name, kp: kp, Public: pub}, nil
}

// JoinProof is the password an edge presents: it proves knowledge of the
// join secret without sending it, and binds it to the edge's name and key so
// a captured proof is useless without the private key that signs the
// server's nonce.
func JoinProof(secret, name, publicKey string) string {
	return mac(secret, "join\x00"+name+"\x00"+publicKey)
}

// AuditPassword is the password of AuditUser, derived from the join secret.
func AuditPassword(secret string) string { return mac(secret, "audit") }

func mac(secret, msg string) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(msg))
	return hex.EncodeToString(h.Sum(nil))
}

// EdgeOptions are the NATS options an edge connects with: TLS trusting a
// controller that proves the join secret, its name, proof of the join
// secret, its key (signing the server nonce), its private inbox, and
// reconnecting forever — also past refusals, which a controller that is
// starting, or cannot reach its cluster to pin a new key, answers with —
// after ReconnectDelay.
// ClientOptions appended later replace the TLS trust.
func (id *Identity) EdgeOptions(secret string) []nats.Option {
	return append(ClientOptions(Trust{Secret: secret}, nil),
		nats.Name(ConnName(id.Name)),
		nats.UserInfo(id.Name, JoinProof(secret, id.Name, id.Public)),
		nats.Nkey(id.Public, id.kp.Sign),
		nats.CustomInboxPrefix(InboxPrefix(id.Name)),
		nats.MaxReconnects(-1),
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(ReconnectDelay),
		nats.Timeout(ConnectTimeout),
	)
}

// ConnectTimeout bounds one attempt to connect to a controller: the TCP
// dial, the TLS handshake and the controller's answer to the join, which
// pins a new key in its store first. A controller that thousands of edges
// join at once takes longer than nats.go's default of 2 s: an attempt
// abandoned then is a handshake done for nothing, and its retry more load.
const ConnectTimeout = 10 * time.Second

// Reconnect timing: see ReconnectDelay.
const (
	reconnectFloor = 100 * time.Millisecond
	reconnectBase  = time.Second
	// ReconnectSpread caps the window an edge picks its wait in: an edge
	// whose controller was down for a while is back within it of the
	// controller's return (the handshake and pin bounds at the controller,
	// not a wider window, keep a burst of joins from feeding itself).
	ReconnectSpread = 4 * time.Second
)

// ReconnectDelay is how long an edge waits before its attempt-th round of
// trying the controllers (from 1; nats.go counts the rounds that failed in a
// row): a random time up to reconnectWindow(attempt), plus a floor of
// 100 ms. A lone edge is back within about a second of its controller; the
// edges a restarted controller lost come back spread over seconds rather
// than in one burst; and when thousands join at once and most attempts fail
// (handshakes refused or timed out at a busy controller), the window keeps
// doubling, so the retries thin out instead of coming back in waves.
func ReconnectDelay(attempt int) time.Duration {
	return reconnectFloor + rand.N(reconnectWindow(attempt))
}

// reconnectWindow doubles from one second with every attempt that failed,
// up to ReconnectSpread.
func reconnectWindow(attempt int) time.Duration {
	return min(reconnectBase<<min(max(attempt-1, 0), 16), ReconnectSpread)
}

// ControllerURLs turns the edge config's controller addresses ("1.2.3.4:58422"
// as in the walkthrough, or full nats:// URLs) into the NATS client's server
// list. The client picks one at random, moves to another when it is lost,
// and adds the servers the cluster announces.
func ControllerURLs(addrs []string) string {
	urls := make([]string, len(addrs))
	for i, a := range addrs {
		urls[i] = a
		if !strings.Contains(a, "://") {
			urls[i] = "nats://" + a
		}
	}
	return strings.Join(urls, ",")
}

// ClusterSecret is the cluster's secret derived from a join secret, for
// clusters configured without one of their own: the controllers share the
// join secret, so they share this too. (So does every edge: a cluster whose
// edge hosts must not pose as controllers is given its own secret.)
func ClusterSecret(joinSecret string) string { return mac(joinSecret, "cluster") }

// connNamePrefix starts the NATS connection name of every edge.
const connNamePrefix = "cframe-edge "

// ConnName is the NATS connection name edge name connects with.
func ConnName(name string) string { return connNamePrefix + name }

// EdgeOfConn is the edge name a connection name claims (ConnName), if any:
// a claim only, to be checked against the key the connection proved.
func EdgeOfConn(connName string) (string, bool) {
	return strings.CutPrefix(connName, connNamePrefix)
}
