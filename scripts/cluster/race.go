//go:build race

package cluster

// raceBuild is true when this program was built with the race detector:
// then Build builds the programs it starts with it too.
const raceBuild = true
