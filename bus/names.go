package bus

import (
	"fmt"
	"regexp"
)

// MaxNameLen bounds edge names: they become NATS subject tokens, parts of
// kernel link aliases and log keys.
const MaxNameLen = 32

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// CheckName reports whether name is a valid edge name: 1 to MaxNameLen
// lowercase letters, digits and inner hyphens ("sz-1", "gz-3"). Anything
// else could break NATS subjects (".", "*", ">"), kernel names or shell use.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("name %q is longer than %d characters", name, MaxNameLen)
	case !nameRE.MatchString(name):
		return fmt.Errorf("name %q is invalid: use lowercase letters, digits and inner hyphens (like \"sz-1\")", name)
	}
	return nil
}
