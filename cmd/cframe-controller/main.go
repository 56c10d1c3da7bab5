// Command cframe-controller runs cframe's control plane: the HTTP API, the
// store of record and the embedded NATS server edges connect to.
//
//	cframe-controller -c controller.toml
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/cframe/cframe/orchestrator/config"
	"github.com/cframe/cframe/orchestrator/controller"
)

func main() {
	app := &cli.App{
		Name:  "cframe-controller",
		Usage: "cframe control plane: HTTP API, edge store and embedded NATS bus",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "/etc/cframe/controller.toml", Usage: "config file"},
		},
		HideHelpCommand: true,
		Action: func(cc *cli.Context) error {
			cfg, err := config.LoadController(cc.String("config"))
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			c, err := controller.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return c.Run(ctx)
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "cframe-controller:", err)
		os.Exit(1)
	}
}
