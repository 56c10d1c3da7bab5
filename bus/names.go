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
func CheckName(name string) error { return checkToken("name", name, "sz-1") }

// CheckSite reports whether site is a valid site name: the rules of edge
// names (it becomes a NATS subject token and a log key too).
func CheckSite(site string) error { return checkToken("site", site, "sz") }

func checkToken(what, s, example string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%s %q is longer than %d characters", what, s, MaxNameLen)
	case !nameRE.MatchString(s):
		return fmt.Errorf("%s %q is invalid: use lowercase letters, digits and inner hyphens (like \"%s\")", what, s, example)
	}
	return nil
}
