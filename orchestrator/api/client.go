package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// Client calls the API (used by cframectl and tests).
type Client struct {
	// Base is the controller's API URL, like "http://127.0.0.1:12345".
	Base string
	// Token is sent as a bearer token when set.
	Token string
	HTTP  *http.Client
}

// NewClient returns a client with a request timeout.
func NewClient(base, token string) *Client {
	return &Client{Base: strings.TrimRight(base, "/"), Token: token, HTTP: &http.Client{Timeout: 15 * time.Second}}
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
			return t.DialTLS(ctx, d, network, addr)
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

// StatusError is an API error response.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("controller API %s: %w", c.Base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("controller API %s: %w", c.Base, err)
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
