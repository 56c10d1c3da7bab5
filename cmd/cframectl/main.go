// Command cframectl is the operator CLI: edges and topology over the
// controller's HTTP API, audit events over the bus.
//
//	cframectl edge add --name sz-1 --hostaddr 198.51.100.10:58423 --cidr 172.18.0.0/16
//	cframectl edge add --name sz-2 ... --site sz --priority 200 --vip 172.18.171.250
//	cframectl edge del --name sz-1
//	cframectl edge list [-o json]
//	cframectl topology [-o json|dot]
//	cframectl cluster [-o json]
//	cframectl events [--since 1h] [-o json]
//
// Off the controller's host the API is HTTPS: --api https://HOST:12345
// --token TOKEN and one of --secret, --ca, --fingerprint to verify it.
// --api may list several controllers' URLs, separated by commas: cframectl
// uses the first that answers.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/cframe/cframe/bus"
	"github.com/cframe/cframe/orchestrator/api"
	"github.com/cframe/cframe/orchestrator/edgeset"
)

func main() {
	output := &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}
	app := &cli.App{
		Name:            "cframectl",
		Usage:           "manage a cframe mesh through its controller",
		HideHelpCommand: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "api", Value: "http://127.0.0.1:12345", EnvVars: []string{"CFRAME_API"}, Usage: "controller API URL; several, comma-separated, for a cluster (the first that answers is used)"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"CFRAME_API_TOKEN"}, Usage: "bearer token (needed unless the API is on loopback)"},
			&cli.StringFlag{Name: "secret", EnvVars: []string{"CFRAME_SECRET"}, Usage: "https: trust the controller by its proof of this join secret"},
			&cli.StringFlag{Name: "ca", EnvVars: []string{"CFRAME_CA"}, Usage: "https: trust the controller by this CA (PEM file) and its host name"},
			&cli.StringFlag{Name: "fingerprint", EnvVars: []string{"CFRAME_FINGERPRINT"}, Usage: "https: trust the controller by its key fingerprint (cframe-controller fingerprint)"},
		},
		OnUsageError: usageError,
		CommandNotFound: func(cc *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "cframectl: unknown command %q (see cframectl --help)\n", name)
			os.Exit(1)
		},
		Commands: []*cli.Command{
			{
				Name:  "edge",
				Usage: "add, delete and list edges",
				Subcommands: []*cli.Command{
					{
						Name:  "add",
						Usage: "add an edge, or update the edge of that name",
						Flags: []cli.Flag{
							&cli.StringFlag{Name: "name", Usage: "edge name (lowercase letters, digits, hyphens)"},
							&cli.StringFlag{Name: "hostaddr", Usage: "public IP:tunnel port the other edges reach it at"},
							&cli.StringSliceFlag{Name: "cidr", Usage: "network behind the edge; repeat for extra networks (k8s pod/service ranges)"},
							&cli.StringFlag{Name: "comment"},
							&cli.StringFlag{Name: "site", Usage: "the network this edge is one gateway of (gateways of a site carry the same CIDRs; one is active)"},
							&cli.IntFlag{Name: "priority", Usage: "rank among the site's gateways, 1-255 (default 100; higher takes over)"},
							&cli.StringFlag{Name: "vip", Usage: "the site's virtual IP inside its primary CIDR, held by the active gateway (the cloud's HaVip)"},
							&cli.StringFlag{Name: "vip6", Usage: "the site's IPv6 virtual IP inside one of its IPv6 CIDRs, held by the active gateway"},
						},
						OnUsageError: usageError,
						Action:       edgeAdd,
					},
					{
						Name:         "del",
						Usage:        "delete an edge (and its pinned key)",
						Flags:        []cli.Flag{&cli.StringFlag{Name: "name", Usage: "edge name"}},
						OnUsageError: usageError,
						Action: func(cc *cli.Context) error {
							if err := require(cc, "name"); err != nil {
								return err
							}
							c, err := client(cc)
							if err != nil {
								return err
							}
							r, err := c.Del(cc.Context, cc.String("name"))
							if err == nil {
								fmt.Printf("%s (revision %d)\n", r.Message, r.Revision)
							}
							return err
						},
					},
					{Name: "list", Usage: "list edges with their status", Flags: []cli.Flag{output}, OnUsageError: usageError, Action: edgeList},
				},
			},
			{
				Name:         "topology",
				Usage:        "show the mesh: sites and their active gateways, edges, next hops, and each link's configuration and probe state",
				Flags:        []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table, json or dot (Graphviz)"}},
				OnUsageError: usageError,
				Action:       topology,
			},
			{Name: "cluster", Usage: "show the controllers: which are reachable, quorum, leaders", Flags: []cli.Flag{output}, OnUsageError: usageError, Action: clusterStatus},
			{
				Name:  "events",
				Usage: "audit events (edge added, updated, deleted, online, offline, key pinned/refused, role): the kept ones since a point, then live",
				Flags: []cli.Flag{
					output,
					&cli.StringFlag{Name: "since", Usage: "replay the kept events since this long ago (1h, 30m, 7d) or this RFC 3339 time, then follow"},
					&cli.StringFlag{Name: "nats", Usage: "bus URL (default: the API's host and the controller's NATS port)"},
				},
				OnUsageError: usageError,
				Action:       events,
			},
		},
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "cframectl:", err)
		os.Exit(1)
	}
}

func usageError(_ *cli.Context, err error, _ bool) error { return err }

// trust is how the controller is verified, from the flags; set reports
// whether any was given.
func trust(cc *cli.Context) (t bus.Trust, set bool, err error) {
	t = bus.Trust{Secret: cc.String("secret"), Fingerprint: cc.String("fingerprint")}
	if t.Fingerprint != "" {
		if t.Fingerprint, err = bus.ParseFingerprint(t.Fingerprint); err != nil {
			return t, true, fmt.Errorf("--fingerprint: %w", err)
		}
	}
	if path := cc.String("ca"); path != "" {
		if t.CA, err = bus.LoadCA(path); err != nil {
			return t, true, fmt.Errorf("--ca: %w", err)
		}
	}
	return t, t.Secret != "" || t.CA != nil || t.Fingerprint != "", nil
}

// client calls the API at --api; over https it verifies the controller as
// the flags say (the system's CAs when none is given).
func client(cc *cli.Context) (*api.Client, error) {
	c := api.NewClient(cc.String("api"), cc.String("token"))
	t, _, err := trust(cc)
	if err != nil {
		return nil, err
	}
	c.Trust(t, nil)
	return c, nil
}

// require checks flags itself: urfave/cli's Required prints the whole help
// page, and errors here are one line.
func require(cc *cli.Context, flags ...string) error {
	var missing []string
	for _, f := range flags {
		if !cc.IsSet(f) {
			missing = append(missing, "--"+f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: missing %s", strings.TrimPrefix(cc.Command.HelpName, cc.App.Name+" "), strings.Join(missing, ", "))
	}
	return nil
}

func edgeAdd(cc *cli.Context) error {
	if err := require(cc, "name", "hostaddr", "cidr"); err != nil {
		return err
	}
	cidrs := cc.StringSlice("cidr")
	s := edgeset.Spec{Name: cc.String("name"), HostAddr: cc.String("hostaddr"), CIDR: cidrs[0], ExtraCIDRs: cidrs[1:], Comment: cc.String("comment"),
		Site: cc.String("site"), VIP: cc.String("vip"), VIP6: cc.String("vip6")}
	if cc.IsSet("priority") {
		p := cc.Int("priority")
		s.Priority = &p
	}
	c, err := client(cc)
	if err != nil {
		return err
	}
	r, err := c.Add(cc.Context, s)
	if err == nil {
		fmt.Printf("%s (revision %d)\n", r.Message, r.Revision)
	}
	return err
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func edgeList(cc *cli.Context) error {
	c, err := client(cc)
	if err != nil {
		return err
	}
	edges, err := c.List(cc.Context)
	if err != nil || cc.String("output") == "json" {
		if err == nil {
			err = printJSON(edges)
		}
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSITE\tROLE\tHOSTADDR\tCIDRS\tSTATE\tAPPLIED\tREVISION\tERROR\tCOMMENT")
	for _, e := range edges {
		errText := e.LastError
		if errText == "" && len(e.Conflicts) > 0 {
			errText = fmt.Sprintf("%d conflict(s): %s", len(e.Conflicts), strings.Join(e.Conflicts, "; "))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.Name, dash(e.Site), e.Role, e.HostAddr, strings.Join(append([]string{e.CIDR}, e.ExtraCIDRs...), ","),
			e.State, e.AppliedRevision, e.Revision, dash(errText), dash(e.Comment))
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func topology(cc *cli.Context) error {
	format := cc.String("output")
	if format != "table" && format != "json" && format != "dot" {
		return fmt.Errorf("topology: --output %q: use table, json or dot", format)
	}
	c, err := client(cc)
	if err != nil {
		return err
	}
	t, err := c.Topology(cc.Context)
	switch {
	case err != nil:
		return err
	case format == "json":
		return printJSON(t)
	case format == "dot":
		return api.WriteDOT(os.Stdout, t)
	}
	fmt.Printf("revision %d\n\n", t.Revision)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SITE\tCIDRS\tVIP\tACTIVE\tGATEWAYS\tEPOCH\tSINCE\tREASON")
	for _, s := range t.Sites {
		since := "-"
		if s.Since != nil {
			since = s.Since.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Name, strings.Join(s.CIDRs, ","), dash(strings.Trim(s.VIP+","+s.VIP6, ",")), s.Active,
			strings.Join(s.Gateways, ","), s.Epoch, since, dash(s.Reason))
	}
	w.Flush()
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "EDGE\tROLE\tHOSTADDR\tCIDRS\tVTEP MAC\tNEXT HOP\tSTATE\tAPPLIED")
	for _, e := range t.Edges {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", e.Name, e.Role, e.HostAddr, strings.Join(e.CIDRs, ","), e.VTEPMAC, e.NextHop, e.State, e.AppliedRevision)
	}
	w.Flush()
	if len(t.Links) > 0 {
		fmt.Println()
		w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "LINK\tSTATE\tCONFIG\tPROBE\tRTT\tENCRYPTION\tSINCE\tREASON")
		for _, l := range t.Links {
			rtt, since := "-", "-"
			if l.RTTMs > 0 {
				rtt = fmt.Sprintf("%.2fms", l.RTTMs)
			}
			if l.Since != nil {
				since = l.Since.Local().Format(time.RFC3339)
			}
			reason := l.Reason
			if l.EncryptionReason != "" && l.EncryptionReason != reason {
				reason = strings.TrimPrefix(reason+"; ", "; ") + l.Encryption + ": " + l.EncryptionReason
			}
			fmt.Fprintf(w, "%s <-> %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.A, l.B, l.State, l.Config, l.Probe, rtt, dash(l.Encryption), since, dash(reason))
		}
		w.Flush()
	}
	if len(t.Pending) > 0 {
		fmt.Printf("\nconnected but not added: %s\n", strings.Join(t.Pending, ", "))
	}
	return nil
}

func clusterStatus(cc *cli.Context) error {
	c, err := client(cc)
	if err != nil {
		return err
	}
	cl, err := c.Cluster(cc.Context)
	if err != nil || cc.String("output") == "json" {
		if err == nil {
			err = printJSON(cl)
		}
		return err
	}
	quorum := "yes: writes are accepted"
	if !cl.Quorum {
		quorum = "NO: writes are refused, reads answer from the last known state"
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "controller\t%s\n", cl.Name)
	fmt.Fprintf(w, "reachable\t%d of %d: %s\n", len(cl.Reachable), cl.Controllers, strings.Join(cl.Reachable, ", "))
	fmt.Fprintf(w, "quorum\t%s\n", quorum)
	fmt.Fprintf(w, "store\t%s, revision %d\n", cl.Store, cl.Revision)
	if cl.Controllers > 1 {
		fmt.Fprintf(w, "leaders\tmetadata %s, store %s\n", dash(cl.MetaLeader), dash(cl.StoreLeader))
	}
	return w.Flush()
}

// events replays the kept audit events since --since, if given, then
// follows the live ones, with the read-only credentials the API hands out.
// The bus is TLS: its certificate is verified as the flags say, or else
// pinned to the fingerprint the (loopback or verified) API reported.
func events(cc *cli.Context) error {
	var since time.Time
	if v := cc.String("since"); v != "" {
		var err error
		if since, err = bus.ParseSince(v, time.Now()); err != nil {
			return fmt.Errorf("events: --%v", err)
		}
	}
	c, err := client(cc)
	if err != nil {
		return err
	}
	creds, err := c.Credentials(cc.Context)
	if err != nil {
		return err
	}
	t, set, _ := trust(cc) // checked by client
	if !set {
		t = bus.Trust{Fingerprint: creds.Fingerprint}
	}
	natsURL := cc.String("nats")
	if natsURL == "" {
		u, err := url.Parse(c.Answered())
		if err != nil {
			return fmt.Errorf("--api %q: %w", c.Answered(), err)
		}
		natsURL = "nats://" + net.JoinHostPort(u.Hostname(), strconv.Itoa(creds.Port))
	}
	opts := append(bus.ClientOptions(t, nil), append(bus.AuditOptions(creds.Password), nats.Name("cframectl events"), nats.MaxReconnects(-1))...)
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		return fmt.Errorf("bus %s: %w", natsURL, err)
	}
	defer nc.Close()
	if since.IsZero() {
		fmt.Fprintf(os.Stderr, "following %s on %s (Ctrl-C to stop)\n", creds.Subject, natsURL)
	} else {
		fmt.Fprintf(os.Stderr, "replaying events since %s, then following %s on %s (Ctrl-C to stop)\n", since.Local().Format(time.RFC3339), creds.Subject, natsURL)
	}
	asJSON := cc.String("output") == "json"
	err = bus.FollowEvents(cc.Context, nc, since, func(e bus.Event) {
		if asJSON {
			b, _ := json.Marshal(e)
			fmt.Println(string(b))
			return
		}
		by := ""
		if e.Actor != nil {
			by = "  by " + e.Actor.Remote
			if e.Actor.Token != "" {
				by += " token " + e.Actor.Token
			}
		}
		fmt.Printf("%s  %-11s %-16s rev=%-6d %s%s\n", e.Time.Local().Format(time.RFC3339), e.Kind, e.Edge, e.Revision, e.Detail, by)
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
