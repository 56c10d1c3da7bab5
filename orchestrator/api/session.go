package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"html/template"
	"net/http"
	"strings"

	"github.com/cframe/cframe/bus"
)

// Who is calling. Audit events of API changes name the client: its address
// and, when it presented one, its token by fingerprint.

type actorKey struct{}

// TokenFingerprint names a token without revealing it: "sha256:" and the
// first 12 hex digits of its SHA-256.
func TokenFingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// withActor is r's context carrying the client that made r.
func withActor(r *http.Request) context.Context {
	a := &bus.Actor{Remote: r.RemoteAddr}
	if tok, ok := bearer(r); ok {
		a.Token = TokenFingerprint(tok)
	}
	return context.WithValue(r.Context(), actorKey{}, a)
}

// ActorOf returns the API client an AddEdge or DeleteEdge context carries,
// or nil.
func ActorOf(ctx context.Context) *bus.Actor {
	a, _ := ctx.Value(actorKey{}).(*bus.Actor)
	return a
}

func bearer(r *http.Request) (string, bool) {
	return strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
}

// Browser sessions. A browser cannot send a bearer token with a page load
// or an EventSource, so off loopback the topology page signs in once at
// PathLogin with the API token and gets a cookie: HttpOnly, SameSite=Strict,
// Secure over HTTPS, holding a MAC of the token (changing the token ends
// every session). The cookie is good for reading only (GET), so it cannot
// be used to change the edge set from another site.

// PathLogin is the sign-in form of the topology page.
const PathLogin = "/ui/login"

const sessionCookie = "cframe_session"

func sessionValue(token string) string {
	h := hmac.New(sha256.New, []byte(token))
	h.Write([]byte("cframe topology page session"))
	return hex.EncodeToString(h.Sum(nil))
}

// validSession reports whether a read request carries a session of token.
func validSession(r *http.Request, token string) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	c, err := r.Cookie(sessionCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(sessionValue(token))) == 1
}

// wantsPage reports whether r is a browser loading a page.
func wantsPage(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/html")
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cframe: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:15px system-ui,sans-serif;margin:4rem auto;max-width:26rem;color:#1d2733}
input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.5rem 0}
button{font:inherit;padding:.4rem 1rem}.err{color:#b3261e}</style></head>
<body><h1>cframe</h1><p>The controller's API token (<code>api_token</code> in controller.toml) opens the topology page.</p>
{{if .}}<p class="err">{{.}}</p>{{end}}
<form method="post" action="` + PathLogin + `"><input type="password" name="token" autocomplete="current-password" autofocus placeholder="API token">
<button type="submit">Sign in</button></form></body></html>
`))

// login serves the sign-in form and, for the right token, sets the session
// cookie and sends the browser to the page.
func login(token string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		msg := ""
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 4096)
			got := r.PostFormValue("token")
			if token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
				http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sessionValue(token), Path: "/",
					HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
				http.Redirect(w, r, "/ui/", http.StatusSeeOther)
				return
			}
			msg = "That is not the API token."
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusUnauthorized)
		} else {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
		}
		_ = loginPage.Execute(w, msg)
	}
}
