package embedded

// Clients is the number of clients connected to the server.
func (s *Server) Clients() int { return s.ns.NumClients() }
