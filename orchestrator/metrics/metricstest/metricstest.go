// Package metricstest reads a real scrape of a cframe /metrics endpoint
// for tests: the families, the value of one series, and promtool's verdict.
package metricstest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one scrape: the text as served and its parsed families.
type Scrape struct {
	Text     []byte
	Families map[string]*dto.MetricFamily
}

// Get scrapes url with client (nil: http.DefaultClient) and parses the text
// format, as Prometheus would.
func Get(client *http.Client, url string) (Scrape, error) {
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Get(url)
	if err != nil {
		return Scrape{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Scrape{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Scrape{}, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return Scrape{}, fmt.Errorf("GET %s: content type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return Scrape{}, fmt.Errorf("parse %s: %w", url, err)
	}
	return Scrape{Text: b, Families: fams}, nil
}

// Value returns the value of the series of family name whose labels include
// the given name/value pairs: a gauge's or counter's value, a histogram's
// sample count. ok is false when there is no such series.
func (s Scrape) Value(name string, labels ...string) (v float64, ok bool) {
	f := s.Families[name]
	if f == nil {
		return 0, false
	}
	sum := 0.0
	for _, m := range f.Metric {
		if !has(m, labels) {
			continue
		}
		ok = true
		switch {
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum, ok
}

// Type is the family's type ("GAUGE", "COUNTER", "HISTOGRAM"), "" if absent.
func (s Scrape) Type(name string) string {
	if f := s.Families[name]; f != nil {
		return f.GetType().String()
	}
	return ""
}

func has(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.Label {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Promtool runs `promtool check metrics` on the scraped text and fails t
// with its complaints. Without promtool (scripts/deps.sh installs Debian's
// prometheus package) the test is skipped.
func Promtool(t testing.TB, s Scrape) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; scripts/deps.sh installs it)")
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = bytes.NewReader(s.Text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
