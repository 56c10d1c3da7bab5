// Command vmrun runs a command on Debian's stock kernel in QEMU (package
// internal/vm), streaming the console, and exits with the command's status:
//
//	go run ./scripts/vmrun [-systemd] [-share DIR]... [-timeout 10m] -- CMD [ARG...]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cframe/cframe/internal/vm"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var o vm.Options
	var shares, env list
	flag.BoolVar(&o.Systemd, "systemd", false, "boot systemd as PID 1 and run the command as a unit")
	flag.Var(&shares, "share", "host directory mounted read-write at the same path (repeatable)")
	flag.Var(&env, "env", "KEY=value for the command (repeatable)")
	flag.StringVar(&o.Hostname, "hostname", "", "the VM's host name")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound of the whole run")
	flag.Parse()
	o.Command, o.Share, o.Env, o.Out = flag.Args(), shares, env, os.Stdout
	o.Dir, _ = os.Getwd()
	code, err := vm.Run(context.Background(), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	os.Exit(code)
}
