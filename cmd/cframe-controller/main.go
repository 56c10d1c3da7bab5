// Command cframe-controller runs cframe's control plane: the HTTP API, the
// store of record and the embedded NATS server edges connect to.
//
//	cframe-controller -c controller.toml               run (SIGHUP reloads the TLS certificate)
//	cframe-controller fingerprint -c controller.toml   print the certificate's key fingerprint
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
	configFlag := &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "/etc/cframe/controller.toml", Usage: "config file"}
	app := &cli.App{
		Name:            "cframe-controller",
		Usage:           "cframe control plane: HTTP API, edge store and embedded NATS bus",
		Flags:           []cli.Flag{configFlag},
		HideHelpCommand: true,
		Action:          run,
		Commands: []*cli.Command{
			{
				Name:  "fingerprint",
				Usage: "print the key fingerprint of the TLS certificate (for cframectl --fingerprint)",
				Flags: []cli.Flag{configFlag},
				Action: func(cc *cli.Context) error {
					cfg, err := config.LoadController(cc.String("config"))
					if err != nil {
						return err
					}
					fp, err := controller.Fingerprint(cfg)
					if err == nil {
						fmt.Println(fp)
					}
					return err
				},
			},
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "cframe-controller:", err)
		os.Exit(1)
	}
}

func run(cc *cli.Context) error {
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: reloading the TLS certificate")
			if err := c.ReloadTLS(); err != nil {
				log.Error("TLS certificate not reloaded; the one in use stays", "err", err)
			}
		}
	}()
	return c.Run(ctx)
}
