package embedded

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// raftHelper, when set in the environment, makes TestRaftHelperProcess run
// one clustered server: "name|cluster address|peer,peer,peer".
const raftHelper = "CFRAME_RAFT_HELPER"

// untunedMinElection is nats-server's own minimum election timeout: with
// its defaults no follower stands for election sooner after the leader
// goes silent.
const untunedMinElection = 4 * time.Second

// TestRaftHelperProcess is one server of TestRaftTuningTakesEffect's
// cluster, in a process of its own so that it can be killed with -9: it
// prints the metadata leader it knows every 20 ms until it is killed.
func TestRaftHelperProcess(t *testing.T) {
	spec := os.Getenv(raftHelper)
	if spec == "" {
		t.Skip("run by TestRaftTuningTakesEffect")
	}
	f := strings.Split(spec, "|")
	s := startClustered(t, f[0], testSecret, f[1], strings.Split(f[2], ","), &syncBuffer{})
	for range time.Tick(20 * time.Millisecond) {
		var meta string
		current := 0 // the other servers in the metadata group that are current
		if jz, err := s.ns.Jsz(nil); err == nil && jz.Meta != nil {
			meta = jz.Meta.Leader
			for _, r := range jz.Meta.Replicas {
				if r.Current {
					current++
				}
			}
		}
		fmt.Printf("leader %q current %d\n", meta, current)
	}
}

// The Raft timings reach nats-server (they are set through go:linkname,
// which would silently make variables of its own should nats-server rename
// them): three controllers' servers, each in its own process; the
// metadata leader is killed with -9, and the survivors elect another one
// sooner than nats-server's untuned timings ever allow.
func TestRaftTuningTakesEffect(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes")
	}
	names := []string{"c1", "c2", "c3"}
	peers := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	var mu sync.Mutex
	leader := map[string]string{} // as each server knows it
	followed := map[string]int{}  // the others current in its metadata group
	procs := map[string]*exec.Cmd{}
	for i, name := range names {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRaftHelperProcess$", "-test.v")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%s", raftHelper, name, peers[i], strings.Join(peers, ",")))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[name] = cmd
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var l string
				var current int
				if _, err := fmt.Sscanf(sc.Text(), "leader %q current %d", &l, &current); err == nil {
					mu.Lock()
					leader[name], followed[name] = l, current
					mu.Unlock()
				}
			}
		}()
	}
	// agreed returns the leader the given servers agree on, "" if none.
	agreed := func(servers ...string) string {
		mu.Lock()
		defer mu.Unlock()
		l := leader[servers[0]]
		for _, s := range servers[1:] {
			if leader[s] != l {
				return ""
			}
		}
		return l
	}
	var old string
	waitUntil(t, 60*time.Second, func() error {
		if old = agreed(names...); old == "" {
			return fmt.Errorf("no metadata leader all three agree on")
		}
		mu.Lock()
		defer mu.Unlock()
		if followed[old] != len(names)-1 {
			return fmt.Errorf("leader %s is followed by %d of the others", old, followed[old])
		}
		return nil
	})
	var survivors []string
	for _, n := range names {
		if n != old {
			survivors = append(survivors, n)
		}
	}
	killed := time.Now()
	if err := procs[old].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, func() error {
		if l := agreed(survivors...); l == "" || l == old {
			mu.Lock()
			defer mu.Unlock()
			return fmt.Errorf("%v have not elected a new metadata leader after %s was killed (they know %v)", survivors, old, leader)
		}
		return nil
	})
	took := time.Since(killed)
	t.Logf("metadata leader %s killed; %s elected %s later", old, agreed(survivors...), took.Round(time.Millisecond))
	if took >= untunedMinElection {
		t.Fatalf("a new leader took %s: no sooner than nats-server's untuned election timeout (%s), so the Raft tuning did not take effect", took.Round(time.Millisecond), untunedMinElection)
	}
}
