// Package browser drives Debian's headless Chromium for cframe's page
// tests: it speaks the DevTools protocol over the pipe Chromium opens with
// --remote-debugging-pipe (NUL-terminated JSON on file descriptors 3 and 4),
// so it needs nothing but the chromium package — no npm, no driver, no port.
// Chromium can run inside a network namespace, where the page it loads is
// the controller's loopback API.
package browser

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Options configure a browser.
type Options struct {
	// NetNS runs Chromium inside this network namespace ("ip netns exec").
	NetNS string
	// Dir receives Chromium's profile and its log (chromium.log).
	Dir string
	// Width and Height are the viewport in CSS pixels (default 1366x768,
	// a laptop screen).
	Width, Height int
	// Args are further Chromium flags, like --ignore-certificate-errors
	// for a self-signed certificate.
	Args []string
}

// Flags are the launch flags that work on a closed machine: no sandbox
// (tests run as root), no GPU, and no background connections to Google.
var Flags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
}

// Browser is a running headless Chromium with one page.
type Browser struct {
	cmd     *exec.Cmd
	w       *os.File
	session string

	mu      sync.Mutex
	nextID  int
	pending map[int]chan reply
	dead    error
	done    chan struct{}
}

type reply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// Path is the Chromium binary, found on PATH as "chromium".
func Path() (string, error) { return exec.LookPath("chromium") }

// Start launches Chromium and opens a blank page of the given size.
func Start(o Options) (*Browser, error) {
	bin, err := Path()
	if err != nil {
		return nil, fmt.Errorf("browser: chromium not installed (Debian package chromium): %w", err)
	}
	if o.Width == 0 {
		o.Width, o.Height = 1366, 768
	}
	profile := filepath.Join(o.Dir, "profile")
	if err := os.MkdirAll(profile, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(o.Dir, "chromium.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append(append(append([]string{bin}, Flags...), o.Args...), "--user-data-dir="+profile, "--remote-debugging-pipe",
		fmt.Sprintf("--window-size=%d,%d", o.Width, o.Height), "about:blank")
	if o.NetNS != "" {
		args = append([]string{"ip", "netns", "exec", o.NetNS}, args...)
	}
	toChrome, chromeIn, err := os.Pipe() // Chromium reads commands on fd 3
	if err != nil {
		return nil, err
	}
	chromeOut, fromChrome, err := os.Pipe() // and writes replies on fd 4
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Close kills the whole tree
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("browser: start chromium: %w", err)
	}
	toChrome.Close()
	fromChrome.Close()
	b := &Browser{cmd: cmd, w: chromeIn, pending: map[int]chan reply{}, done: make(chan struct{})}
	go b.read(chromeOut)
	go func() {
		err := cmd.Wait()
		b.fail(fmt.Errorf("browser: chromium exited: %v (log in %s)", err, logf.Name()))
		close(b.done)
	}()
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		return nil, err
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		return nil, err
	}
	b.session = att.SessionID
	if err := b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": o.Width, "height": o.Height, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		return nil, err
	}
	ok = true
	return b, nil
}

// read dispatches Chromium's replies to their callers; events are ignored.
func (b *Browser) read(f *os.File) {
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		msg, err := r.ReadBytes(0)
		if err != nil {
			b.fail(fmt.Errorf("browser: pipe: %w", err))
			return
		}
		var m struct {
			ID int `json:"id"`
			reply
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil || m.ID == 0 {
			continue
		}
		b.mu.Lock()
		ch := b.pending[m.ID]
		delete(b.pending, m.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- m.reply
		}
	}
}

// fail ends every pending call with err.
func (b *Browser) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead == nil {
		b.dead = err
	}
	for id, ch := range b.pending {
		close(ch)
		delete(b.pending, id)
	}
}

// callTimeout bounds one DevTools command.
const callTimeout = 30 * time.Second

// call sends one DevTools command (to the page when session is set) and
// decodes its result into out (unless nil).
func (b *Browser) call(session, method string, params any, out any) error {
	b.mu.Lock()
	if b.dead != nil {
		b.mu.Unlock()
		return b.dead
	}
	b.nextID++
	id := b.nextID
	ch := make(chan reply, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := b.w.Write(append(body, 0)); err != nil {
		return fmt.Errorf("browser: %s: %w", method, err)
	}
	select {
	case r, ok := <-ch:
		switch {
		case !ok:
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.dead
		case r.Error != nil:
			return fmt.Errorf("browser: %s: %s", method, r.Error.Message)
		case out != nil:
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-time.After(callTimeout):
		return fmt.Errorf("browser: %s: no reply in %s", method, callTimeout)
	}
}

// Navigate loads url in the page. A load that Chromium abandons because
// the network changed under it (a namespace's addresses settling, IPv6
// duplicate address detection ending) is tried again, as a user would.
func (b *Browser) Navigate(url string) error {
	for attempt := 1; ; attempt++ {
		var r struct {
			ErrorText string `json:"errorText"`
		}
		if err := b.call(b.session, "Page.navigate", map[string]any{"url": url}, &r); err != nil {
			return err
		}
		switch {
		case r.ErrorText == "":
			return nil
		case r.ErrorText != "net::ERR_NETWORK_CHANGED" || attempt == 5:
			return fmt.Errorf("browser: navigate %s: %s", url, r.ErrorText)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Eval evaluates a JavaScript expression in the page and decodes its
// (JSON-serialisable) value into out.
func (b *Browser) Eval(expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := b.call(b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r); err != nil {
		return err
	}
	if e := r.ExceptionDetails; e != nil {
		return fmt.Errorf("browser: %s: %s %s", expr, e.Text, e.Exception.Description)
	}
	if out == nil || len(r.Result.Value) == 0 {
		return nil
	}
	return json.Unmarshal(r.Result.Value, out)
}

// Screenshot writes a PNG of the page's viewport to path.
func (b *Browser) Screenshot(path string) error {
	var r struct {
		Data string `json:"data"`
	}
	if err := b.call(b.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &r); err != nil {
		return err
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// Close asks Chromium to quit, then kills whatever of it is left.
func (b *Browser) Close() error {
	_ = b.call("", "Browser.close", map[string]any{}, nil)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	<-b.done
	return b.w.Close()
}

// WaitFor evaluates check, a JavaScript expression yielding "" once the
// page is as wanted and otherwise what is missing, until it yields "" or
// timeout has passed; the error says what was still missing.
func (b *Browser) WaitFor(timeout time.Duration, check string) error {
	deadline := time.Now().Add(timeout)
	for {
		var missing string
		err := b.Eval(check, &missing)
		if err == nil && missing == "" {
			return nil
		}
		if err != nil {
			missing = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("browser: after %s: %s", timeout, missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
