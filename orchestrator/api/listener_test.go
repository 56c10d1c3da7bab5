package api

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/bus/embedded"
)

// One address serves plain HTTP and HTTPS; a silent connection holds up
// nobody.
func TestListenServesHTTPAndHTTPS(t *testing.T) {
	certs, err := embedded.LoadCerts(embedded.CertSource{Dir: filepath.Join(t.TempDir(), "tls"), Proofs: []bus.Proof{{Secret: "s", Purpose: bus.PurposeController}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.TLS != nil)
	})}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(Listen(raw, certs.ServerTLS())) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := raw.Addr().String()

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	get := func(c *http.Client, url string) string {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(http.DefaultClient, "http://"+addr+"/"); got != "false" {
		t.Fatalf("plain HTTP: TLS = %s", got)
	}
	https := NewClient("https://"+addr, "")
	https.Trust(bus.Trust{Secret: "s"}, nil)
	if got := get(https.HTTP, "https://"+addr+"/"); got != "true" {
		t.Fatalf("HTTPS: TLS = %s", got)
	}
}
