// Command cframe-edge is the gateway agent of one network.
//
//	cframe-edge -c edge.toml             follow the controller, keep the kernel in line (same as "run")
//	cframe-edge reconcile -c edge.toml   fetch the current set, make the kernel match once, print the changes
//	cframe-edge cleanup -c edge.toml     remove every kernel object cframe created
//	cframe-edge rotate-key -c edge.toml  have the running agent rotate its WireGuard key, print the new public key
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cframe/cframe/netcfg"
	"github.com/cframe/cframe/orchestrator/agent"
	"github.com/cframe/cframe/orchestrator/config"
)

func main() {
	configFlag := &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "/etc/cframe/edge.toml", Usage: "config file"}
	app := &cli.App{
		Name:            "cframe-edge",
		Usage:           "cframe gateway agent: reconciles the kernel's tunnel, routes and firewall with the edge set",
		Flags:           []cli.Flag{configFlag},
		HideHelpCommand: true,
		Action:          run,
		Commands: []*cli.Command{
			{Name: "run", Usage: "follow the controller and keep the kernel in line (default)", Flags: []cli.Flag{configFlag}, Action: run},
			{Name: "reconcile", Usage: "make the kernel match the controller's current edge set once", Flags: []cli.Flag{configFlag}, Action: reconcile},
			{Name: "rotate-key", Usage: "have the running agent rotate its WireGuard key without losing a packet; prints the new public key", Flags: []cli.Flag{configFlag,
				&cli.DurationFlag{Name: "timeout", Value: agent.RotateTimeout, Usage: "how long to wait for the agent"}}, Action: rotateKey},
			{Name: "cleanup", Usage: "remove every kernel object cframe created, and nothing else", Flags: []cli.Flag{configFlag}, Action: cleanup},
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "cframe-edge:", err)
		os.Exit(1)
	}
}

func newAgent(cc *cli.Context) (*agent.Agent, error) {
	cfg, err := config.LoadEdge(cc.String("config"))
	if err != nil {
		return nil, err
	}
	return agent.New(cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)).With("edge", cfg.Name))
}

func run(cc *cli.Context) error {
	a, err := newAgent(cc)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}

func reconcile(cc *cli.Context) error {
	a, err := newAgent(cc)
	if err != nil {
		return err
	}
	res, err := a.ReconcileOnce()
	for _, ch := range res.Changes {
		fmt.Println(ch)
	}
	for _, c := range res.Conflicts {
		fmt.Println("conflict (left alone):", c)
	}
	if err != nil {
		return err
	}
	if !res.Registered {
		return fmt.Errorf("this edge is not added on the controller (revision %d): no peers configured", res.Revision)
	}
	fmt.Printf("revision %d applied: %d change(s)\n", res.Revision, len(res.Changes))
	return nil
}

func cleanup(cc *cli.Context) error {
	if _, err := config.LoadEdge(cc.String("config")); err != nil {
		return err
	}
	k, err := netcfg.New()
	if err != nil {
		return err
	}
	removed, err := k.Cleanup()
	for _, ch := range removed {
		fmt.Println(ch)
	}
	if err != nil {
		return err
	}
	fmt.Printf("removed %d object(s)\n", len(removed))
	return nil
}

// rotateKey stages a new key in state_dir and waits for the running agent
// to rotate to it (or roll back) — see orchestrator/agent/rotate.go.
func rotateKey(cc *cli.Context) error {
	cfg, err := config.LoadEdge(cc.String("config"))
	if err != nil {
		return err
	}
	pub, err := agent.StageRotation(cfg.StateDir)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(cc.Duration("timeout"))
	for time.Now().Before(deadline) {
		res, err := agent.ReadRotateResult(cfg.StateDir)
		switch {
		case err != nil:
			return err
		case res != nil && res.Error != "":
			return fmt.Errorf("key rotation failed: %s", res.Error)
		case res != nil:
			fmt.Println("rotated WireGuard key; new public key", res.Key)
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the agent did not finish the key rotation within %s (is cframe-edge running and connected to the controller?); the new key %s stays staged in %s and is used once it is", cc.Duration("timeout"), pub, cfg.StateDir)
}
