package ui_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/internal/browser"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/controller"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

// fleet is a running controller with simulated edges: bus clients that join
// as agents do (own key, join proof) and report status.
type fleet struct {
	c     *controller.Controller
	api   *api.Client
	base  string
	conns map[string]*nats.Conn
}

func startFleet(t *testing.T, n int) *fleet {
	t.Helper()
	cfg := config.Controller{ListenAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		AuditRetention: config.Duration{Duration: time.Hour}, AuditMaxBytes: 1 << 20}
	c, err := controller.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	f := &fleet{c: c, base: "http://" + c.APIAddr().String(), conns: map[string]*nats.Conn{}}
	f.api = api.NewClient(f.base, "")
	keys := t.TempDir()
	for i := range n {
		name := fmt.Sprintf("e-%03d", i)
		spec := edgeset.Spec{Name: name, HostAddr: fmt.Sprintf("198.18.%d.%d:58423", i/250, i%250+1), CIDR: fmt.Sprintf("10.%d.%d.0/24", 100+i/250, i%250)}
		if i%10 == 0 {
			spec.Comment = "every tenth edge has a comment"
		}
		if i < 2 { // the first two are the gateways of one site
			spec.Site, spec.CIDR = "bj", "10.99.0.0/24"
		}
		if _, err := f.api.Add(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		id, err := bus.LoadIdentity(filepath.Join(keys, name+".nk"), name)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect("nats://"+c.NATSAddr().String(), id.EdgeOptions(c.Secret())...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		f.conns[name] = nc
	}
	return f
}

// report publishes edge name's status: applied rev, with an error if given.
func (f *fleet) report(t *testing.T, name string, rev uint64, errText string) {
	t.Helper()
	st := bus.Status{Name: name, State: bus.StateReady, AppliedRevision: rev, Error: errText, Time: time.Now().UTC(), AppliedAt: time.Now().UTC()}
	if errText != "" {
		st.State = bus.StateError
	}
	if err := bus.Publish(f.conns[name], bus.StatusSubject(name), st); err != nil {
		t.Fatal(err)
	}
}

func startBrowser(t *testing.T) *browser.Browser {
	t.Helper()
	if _, err := browser.Path(); err != nil {
		t.Skip("chromium not installed (Debian package chromium; scripts/deps.sh installs it)")
	}
	b, err := browser.Start(browser.Options{Dir: t.TempDir(), Width: 1366, Height: 768})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// With a hundred edges the page draws a link matrix that fits a laptop
// screen, lists every edge, and follows a change live (no reload).
func TestTopologyPageHundredEdges(t *testing.T) {
	const n = 100
	f := startFleet(t, n)
	topo := f.c.Topology()
	for name := range f.conns {
		f.report(t, name, topo.Revision, "")
	}
	b := startBrowser(t)
	if err := b.Navigate(f.base + "/ui/"); err != nil {
		t.Fatal(err)
	}
	links := n * (n - 1) / 2
	err := b.WaitFor(20*time.Second, fmt.Sprintf(`(() => {
		const roles = [...document.querySelectorAll("#edges tr[data-edge^=e-00] .badge")].map(b => b.textContent).join(",");
		if (!roles.startsWith("active,online,standby,online")) return "site bj's gateways: " + roles;
		const rows = document.querySelectorAll("#edges tbody tr[data-state=online]").length;
		const up = document.querySelectorAll("#graph svg rect.cell[data-state=up]:not([data-mirror])").length;
		if (rows !== %d || up !== %d) return "online rows " + rows + ", up links " + up;
		if (document.querySelector("#conn").dataset.state !== "open") return "stream not open";
		return "";
	})()`, n, links))
	if err != nil {
		t.Fatal(err)
	}
	// Readable on a 1366x768 screen: the page itself does not scroll, the
	// matrix is square and fully in view, each cell at least 5 pixels.
	var layout struct {
		PageScroll bool    `json:"pageScroll"`
		W          float64 `json:"w"`
		H          float64 `json:"h"`
		Right      float64 `json:"right"`
		Bottom     float64 `json:"bottom"`
		Cell       float64 `json:"cell"`
	}
	if err := b.Eval(`(() => {
		const r = document.querySelector("#graph svg").getBoundingClientRect();
		const c = document.querySelector("#graph svg rect.cell[data-link]").getBoundingClientRect();
		return {pageScroll: document.documentElement.scrollHeight > innerHeight + 1, w: r.width, h: r.height,
			right: r.right, bottom: r.bottom, cell: c.width};
	})()`, &layout); err != nil {
		t.Fatal(err)
	}
	if layout.PageScroll || layout.Right > 1366 || layout.Bottom > 768 || layout.Cell < 5 || layout.W < 500 || layout.H < 500 {
		t.Errorf("layout at 1366x768: %+v", layout)
	}
	var loaded float64
	if err := b.Eval(`window.__marker = Math.random()`, &loaded); err != nil {
		t.Fatal(err)
	}
	// A state change: one edge fails to apply the revision. Its row turns
	// to error and its 99 links to pending, listed among the links not up.
	f.report(t, "e-042", topo.Revision-1, "route add 10.100.7.0/24: file exists")
	err = b.WaitFor(10*time.Second, fmt.Sprintf(`(() => {
		const row = document.querySelector("#edges tr[data-edge=e-042]");
		if (!row || row.dataset.state !== "error") return "e-042's row: " + (row && row.dataset.state);
		if (!row.textContent.includes("file exists")) return "e-042's row lacks its error";
		const pending = document.querySelectorAll("#graph svg rect.cell[data-state=pending]:not([data-mirror])").length;
		const listed = document.querySelector("#problems li[data-edge=e-042][data-state=pending]");
		if (pending !== %d) return "pending links " + pending;
		if (!listed || !listed.textContent.includes("%d links")) return "e-042's links not listed as pending: " + document.querySelector("#problems").textContent;
		if (document.querySelector("#edges tbody tr").dataset.edge !== "e-042") return "the failing edge is not listed first";
		if (window.__marker !== %v) return "the page was reloaded";
		return "";
	})()`, n-1, n-1, loaded))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.ArtifactDir(), "topology-100-edges.png")
	if err := b.Screenshot(shot); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
}
