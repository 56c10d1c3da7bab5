// Package embedded is the controller's side of the bus: the embedded NATS
// server with JetStream (StartServer), its authentication of the
// controller, audit readers and edges (join proof, pinned identity keys,
// per-edge permissions), the controllers' cluster over TLS routes and its
// Raft timings, the controller's certificates (LoadCerts), and the watch of
// edges' connections (Server.WatchEdges). Only cframe-controller links it;
// the wire contract it serves is package bus.
package embedded
