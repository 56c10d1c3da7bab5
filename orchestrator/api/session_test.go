package api

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// actorService records the actor of the last change.
type actorService struct {
	emptyService
	got *bus.Actor
}

func (s *actorService) AddEdge(ctx context.Context, _ edgeset.Spec) (ChangeResult, error) {
	s.got = ActorOf(ctx)
	return ChangeResult{}, nil
}

func TestActorNamesClientAndTokenFingerprint(t *testing.T) {
	svc := &actorService{}
	h := Handler(svc, "s3cret", slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, tt := range []struct{ remote, auth, token string }{
		{"192.0.2.7:5000", "Bearer s3cret", TokenFingerprint("s3cret")},
		{"127.0.0.1:4000", "", ""},
	} {
		req := httptest.NewRequest(http.MethodPost, PathAdd, strings.NewReader(`{"name":"a"}`))
		req.RemoteAddr, req.TLS = tt.remote, &tls.ConnectionState{}
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 || svc.got == nil || svc.got.Remote != tt.remote || svc.got.Token != tt.token {
			t.Fatalf("%s: %d, actor %+v, want remote %s token %q", tt.remote, rec.Code, svc.got, tt.remote, tt.token)
		}
	}
	if fp := TokenFingerprint("s3cret"); strings.Contains(fp, "s3cret") || !strings.HasPrefix(fp, "sha256:") || len(fp) != 19 {
		t.Fatalf("fingerprint %q", fp)
	}
}

// Off loopback a browser signs in with the token and then reads — only
// reads — with its session cookie.
func TestBrowserSession(t *testing.T) {
	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "page") })
	h := Handler(emptyService{}, "s3cret", slog.New(slog.NewTextHandler(io.Discard, nil)), Mount{"/ui/", page})
	do := func(method, path string, body string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.RemoteAddr, req.TLS = "192.0.2.7:5000", &tls.ConnectionState{}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := do("GET", "/ui/", "", "Accept", "text/html"); rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != PathLogin {
		t.Fatalf("page without session: %d %v", rec.Code, rec.Header())
	}
	if rec := do("GET", "/ui/", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("non-browser GET without token: %d", rec.Code)
	}
	if rec := do("GET", PathLogin, ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `type="password"`) {
		t.Fatalf("login form: %d %s", rec.Code, rec.Body)
	}
	form := "application/x-www-form-urlencoded"
	if rec := do("POST", PathLogin, "token=nope", "Content-Type", form); rec.Code != http.StatusUnauthorized || len(rec.Result().Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v", rec.Code, rec.Result().Cookies())
	}
	rec := do("POST", PathLogin, "token="+url.QueryEscape("s3cret"), "Content-Type", form)
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("sign in: %d, cookies %v", rec.Code, cookies)
	}
	c := cookies[0]
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || strings.Contains(c.Value, "s3cret") {
		t.Fatalf("session cookie %+v", c)
	}
	cookie := c.Name + "=" + c.Value
	if rec := do("GET", "/ui/", "", "Cookie", cookie); rec.Code != 200 || rec.Body.String() != "page" {
		t.Fatalf("page with session: %d %s", rec.Code, rec.Body)
	}
	if rec := do("GET", PathList, "", "Cookie", cookie); rec.Code != 200 {
		t.Fatalf("API read with session: %d", rec.Code)
	}
	if rec := do("POST", PathAdd, `{}`, "Cookie", cookie); rec.Code != http.StatusUnauthorized {
		t.Fatalf("a session must not change anything: POST got %d", rec.Code)
	}
	if rec := do("GET", "/ui/", "", "Cookie", c.Name+"=forged"); rec.Code != http.StatusUnauthorized {
		t.Fatalf("forged session: %d", rec.Code)
	}
}
