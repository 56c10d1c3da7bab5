package main

// parts are the benchmark's parts, in report order.
var parts = []part{
	{"dataplane", dataPlane},
	{"convergence", convergence},
	{"scale", busScale},
	{"reconcile", reconcileScale},
	{"failover", failover},
	{"observability", observeCost},
}
