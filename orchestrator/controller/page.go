package controller

import (
	"net/http"

	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/metrics"
	"github.com/cframe/cframe/orchestrator/ui"
)

// mounts are what the controller serves beside the API, under its token
// rules: the metrics, the topology page and its event stream, and "/"
// sending a browser to the page.
func (c *Controller) mounts() []api.Mount {
	return []api.Mount{
		{Pattern: metrics.Path, Handler: metrics.Handler(c.metrics.reg)},
		{Pattern: ui.Path, Handler: ui.Assets()},
		{Pattern: api.PathTopologyStream, Handler: c.page},
		{Pattern: "/{$}", Handler: http.RedirectHandler(ui.Path, http.StatusSeeOther)},
	}
}

// changed tells the topology page that something it shows changed.
func (c *Controller) changed() { c.page.Notify() }
