// Package metrics is what the controller's and the edge agent's Prometheus
// endpoints share: a registry holding the Go runtime and process collectors
// and cframe_build_info, the /metrics handler, and the version cframe was
// built as. Each program defines its own cframe_* families (package
// controller, package agent).
package metrics

import (
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Version is the version cframe was built as (scripts/build.sh sets it from
// git describe); it is reported in cframe_build_info and in edge status.
var Version = "dev"

// Path is where both programs serve their metrics.
const Path = "/metrics"

// NewRegistry returns a registry with the Go runtime and process collectors
// and cframe_build_info{program, version, goversion} = 1.
func NewRegistry(program string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "cframe_build_info",
			Help:        "Always 1; the labels say which cframe program and version, built with which Go.",
			ConstLabels: prometheus.Labels{"program": program, "version": Version, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	return reg
}

// Handler serves reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError})
}

// Seconds are the buckets of cframe's duration histograms: 0.5 ms to 10 s,
// fine where a kernel update or an API call usually lands.
var Seconds = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
