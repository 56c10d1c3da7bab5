// Package ui is the controller's live topology page: static assets
// embedded in the binary (no CDN, nothing fetched from elsewhere) and the
// Hub that streams the topology to it as server-sent events. The page shows
// each site with its gateways (active/standby), every link coloured by what
// the data plane's probes say, with its round-trip time, and each edge's
// applied revision, state and last error; it draws a graph for a few sites
// and a link matrix for many.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
)

// Path is where the page is served.
const Path = "/ui/"

//go:embed assets
var assets embed.FS

// Assets serves the page's files under Path.
func Assets() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(Path, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		files.ServeHTTP(w, r)
	})
}
