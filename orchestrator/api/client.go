package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// Client calls the API (used by cframectl and tests). With several
// controllers it calls the first that answers: Base, then each of
// Fallbacks, and keeps using the one that answered.
type Client struct {
	// Base is the controller's API URL, like "http://127.0.0.1:12345".
	Base string
	// Fallbacks are further controllers' API URLs.
	Fallbacks []string
	// Token is sent as a bearer token when set.
	Token string
	HTTP  *http.Client

	cur atomic.Int32 // index into urls() of the controller that answered last
}

// NewClient returns a client with a request timeout. base may list several
// controllers' URLs, separated by commas.
func NewClient(base, token string) *Client {
	var urls []string
	for _, u := range strings.Split(base, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		urls = []string{""}
	}
	return &Client{Base: urls[0], Fallbacks: urls[1:], Token: token, HTTP: &http.Client{Timeout: 15 * time.Second}}
}

func (c *Client) urls() []string { return append([]string{c.Base}, c.Fallbacks...) }

// Answered is the URL of the controller that answered the last call (Base
// before any call).
func (c *Client) Answered() string {
	urls := c.urls()
	return urls[int(c.cur.Load())%len(urls)]
}

// Trust makes the client's HTTPS calls trust the controller as t says and
// dials every connection through d (nil: directly).
func (c *Client) Trust(t bus.Trust, d bus.Dialer) {
	if d == nil {
		d = &net.Dialer{}
	}
	c.HTTP.Transport = &http.Transport{
		DialContext: d.DialContext,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := t.DialTLS(ctx, d, network, addr)
			if err != nil {
				return nil, err // not a nil *tls.Conn in a non-nil net.Conn
			}
			return conn, nil
		},
	}
}

// Add adds or updates an edge.
func (c *Client) Add(ctx context.Context, s edgeset.Spec) (ChangeResult, error) {
	var r ChangeResult
	return r, c.do(ctx, http.MethodPost, PathAdd, s, &r)
}

// Del deletes an edge.
func (c *Client) Del(ctx context.Context, name string) (ChangeResult, error) {
	var r ChangeResult
	return r, c.do(ctx, http.MethodPost, PathDel, DelRequest{Name: name}, &r)
}

// List returns the edge list.
func (c *Client) List(ctx context.Context) ([]EdgeView, error) {
	var r []EdgeView
	return r, c.do(ctx, http.MethodGet, PathList, nil, &r)
}

// Topology returns the mesh view.
func (c *Client) Topology(ctx context.Context) (Topology, error) {
	var r Topology
	return r, c.do(ctx, http.MethodGet, PathTopology, nil, &r)
}

// Credentials returns the audit subscriber's NATS credentials.
func (c *Client) Credentials(ctx context.Context) (Credentials, error) {
	var r Credentials
	return r, c.do(ctx, http.MethodGet, PathCredentials, nil, &r)
}

// Cluster returns the control plane as the answering controller sees it.
func (c *Client) Cluster(ctx context.Context) (Cluster, error) {
	var r Cluster
	return r, c.do(ctx, http.MethodGet, PathCluster, nil, &r)
}

// StatusError is an API error response.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

// do calls the controller that answered last, then the others in order,
// until one answers with anything but 503 (a controller without a quorum,
// when another may have one).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	urls := c.urls()
	first := int(c.cur.Load()) % len(urls)
	var err error
	for i := range urls {
		n := (first + i) % len(urls)
		err = c.call(ctx, urls[n], method, path, body, out)
		var se *StatusError
		if err == nil || (errors.As(err, &se) && se.Code != http.StatusServiceUnavailable) || ctx.Err() != nil {
			c.cur.Store(int32(n))
			return err
		}
	}
	return err
}

// call makes one request to the controller at base.
func (c *Client) call(ctx context.Context, base, method, path string, in []byte, out any) error {
	var body io.Reader
	if in != nil {
		body = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("controller API %s: %w", base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("controller API %s: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorBody
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &StatusError{Code: resp.StatusCode, Msg: e.Error}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("controller API %s: bad response: %w", path, err)
	}
	return nil
}
