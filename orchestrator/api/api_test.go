package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cframe/cframe/orchestrator/edgeset"
)

// emptyService answers every call with nothing.
type emptyService struct{}

func (emptyService) AddEdge(context.Context, edgeset.Spec) (ChangeResult, error) {
	return ChangeResult{Message: "ok"}, nil
}
func (emptyService) DeleteEdge(context.Context, string) (ChangeResult, error) {
	return ChangeResult{}, ErrNotFound
}
func (emptyService) ListEdges() []EdgeView         { return []EdgeView{} }
func (emptyService) Topology() Topology            { return Topology{} }
func (emptyService) EventCredentials() Credentials { return Credentials{} }
func (emptyService) Cluster() Cluster {
	return Cluster{Name: "c1", Controllers: 1, Reachable: []string{"c1"}, Quorum: true}
}

func TestAuthorization(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	withToken := Handler(emptyService{}, "s3cret", log)
	noToken := Handler(emptyService{}, "", log)
	tests := []struct {
		name    string
		h       http.Handler
		remote  string
		https   bool
		auth    string
		code    int
		inError string
	}{
		{"loopback v4 needs nothing", withToken, "127.0.0.1:5000", false, "", 200, ""},
		{"loopback v6 needs nothing", withToken, "[::1]:5000", false, "", 200, ""},
		{"loopback over HTTPS", withToken, "127.0.0.1:5000", true, "", 200, ""},
		{"remote plain HTTP, even with the token", withToken, "192.0.2.7:5000", false, "Bearer s3cret", 400, "use https://example.com/api-service/v1/edge/list"},
		{"remote without token", withToken, "192.0.2.7:5000", true, "", 401, "bearer token"},
		{"remote with wrong token", withToken, "192.0.2.7:5000", true, "Bearer nope", 401, "bearer token"},
		{"remote with basic auth", withToken, "192.0.2.7:5000", true, "Basic czNjcmV0", 401, "bearer token"},
		{"remote with token", withToken, "192.0.2.7:5000", true, "Bearer s3cret", 200, ""},
		{"remote when no token configured", noToken, "192.0.2.7:5000", true, "Bearer s3cret", 403, "loopback only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, PathList, nil)
			req.RemoteAddr = tt.remote
			if tt.https {
				req.TLS = &tls.ConnectionState{}
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			tt.h.ServeHTTP(rec, req)
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.inError) {
				t.Fatalf("got %d %s, want %d containing %q", rec.Code, rec.Body, tt.code, tt.inError)
			}
			if rec.Code != 200 && rec.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("error is not JSON: %q", rec.Header().Get("Content-Type"))
			}
		})
	}
}

func TestClientReportsAPIErrors(t *testing.T) {
	srv := httptest.NewServer(Handler(emptyService{}, "", slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	c := NewClient(srv.URL, "")
	_, err := c.Del(context.Background(), "x")
	se, ok := err.(*StatusError)
	if !ok || se.Code != 404 || se.Msg != "not found" {
		t.Fatalf("Del error = %#v, want a 404 StatusError", err)
	}
	if list, err := c.List(context.Background()); err != nil || len(list) != 0 {
		t.Fatalf("List = %v, %v", list, err)
	}
}

// unavailableService refuses writes as a controller without a quorum does.
type unavailableService struct{ emptyService }

func (unavailableService) AddEdge(context.Context, edgeset.Spec) (ChangeResult, error) {
	return ChangeResult{}, fmt.Errorf("%w: no quorum", ErrUnavailable)
}

// A client given several controllers uses the first that answers: past a
// dead one and past one without a quorum (503), and keeps to it.
func TestClientFallsBack(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	down := httptest.NewServer(Handler(unavailableService{}, "", log))
	defer down.Close()
	up := httptest.NewServer(Handler(emptyService{}, "", log))
	defer up.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // nothing listens there now

	c := NewClient(dead.URL+", "+down.URL+"/,"+up.URL, "")
	if c.Base != dead.URL || len(c.Fallbacks) != 2 || c.Fallbacks[0] != down.URL {
		t.Fatalf("client = %+v", c)
	}
	if _, err := c.Add(context.Background(), edgeset.Spec{Name: "x"}); err != nil {
		t.Fatalf("Add = %v, want the third controller's answer", err)
	}
	if c.Answered() != up.URL {
		t.Fatalf("answered by %s, want %s", c.Answered(), up.URL)
	}
	if cl, err := c.Cluster(context.Background()); err != nil || cl.Name != "c1" {
		t.Fatalf("Cluster = %+v, %v", cl, err)
	}
	// Only the controller without a quorum left: its 503 comes back.
	c = NewClient(dead.URL+","+down.URL, "")
	_, err := c.Add(context.Background(), edgeset.Spec{Name: "x"})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Msg, "no quorum") {
		t.Fatalf("Add = %v, want the 503", err)
	}
}
