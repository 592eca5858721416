package deploy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// nfpmModule is the nfpm the Makefile's deb target runs (go run, so it need
// not be in go.mod).
const nfpmModule = "github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"

// debVersion is the Debian version of the test package (~ sorts it before
// any real 0.0.0).
const debVersion = "0.0.0~deploytest"

// buildDeb builds the .deb for this machine's architecture into a temp dir,
// the way `make deb` does, and returns its path.
func buildDeb(t *testing.T) string {
	t.Helper()
	bin := drawbridgeBinary(t)
	out := t.TempDir()
	cmd := exec.Command(goTool(), "run", nfpmModule, "pkg", "--packager", "deb",
		"--config", "deploy/nfpm.yaml", "--target", out+"/")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(),
		"DRAWBRIDGE_VERSION="+debVersion,
		"DRAWBRIDGE_ARCH="+runtime.GOARCH,
		"DRAWBRIDGE_BINARY="+bin,
		"GOFLAGS=",
	)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nfpm pkg: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("nfpm made %v, want one .deb", debs)
	}
	if want := "drawbridge_" + debVersion + "_" + runtime.GOARCH + ".deb"; filepath.Base(debs[0]) != want {
		t.Errorf("package file %s, want %s", filepath.Base(debs[0]), want)
	}
	return debs[0]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(cleanEnv(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// debEntry is one line of dpkg-deb --contents.
type debEntry struct{ mode, owner string }

// TestDebianPackage builds the .deb with nfpm and inspects its control data
// and contents; as root with dpkg it also installs it on this machine (CI's
// throwaway one), checks files, user and unit, reinstalls over a local edit
// of the config, and purges it.
//
// The install part runs when the test runs as root with dpkg, unless
// DRAWBRIDGE_TEST_DEB=0; DRAWBRIDGE_TEST_DEB=1 makes it fail instead of skip
// when it cannot run. It never touches a machine where drawbridge is already
// installed or /etc/drawbridge or /var/lib/drawbridge exist.
func TestDebianPackage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: not building the Debian package")
	}
	testenv.Command(t, "dpkg-deb", "dpkg")
	deb := buildDeb(t)

	// Control data.
	fields := run(t, "dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends", "Maintainer")
	for _, want := range []string{
		"Package: drawbridge", "Version: " + debVersion, "Architecture: " + runtime.GOARCH, "Depends: haproxy",
	} {
		if !strings.Contains(fields, want+"\n") {
			t.Errorf("control lacks %q:\n%s", want, fields)
		}
	}
	ctl := t.TempDir()
	run(t, "dpkg-deb", "--control", deb, ctl)
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/drawbridge/drawbridge.yaml" {
		t.Errorf("conffiles = %q, want the config alone", b)
	}
	for _, s := range []string{"preinst", "postinst", "prerm", "postrm"} {
		want, _ := os.ReadFile(filepath.Join("debian", s))
		got, err := os.ReadFile(filepath.Join(ctl, s))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("maintainer script %s is not deploy/debian/%s (%v)", s, s, err)
		}
	}

	// Contents, owners and modes.
	entries := map[string]debEntry{}
	sc := bufio.NewScanner(strings.NewReader(run(t, "dpkg-deb", "--contents", deb)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			continue
		}
		entries[strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "."), "/")] = debEntry{mode: f[0], owner: f[1]}
	}
	for path, want := range map[string]debEntry{
		"/usr/bin/drawbridge":                    {"-rwxr-xr-x", "root/root"},
		"/lib/systemd/system/drawbridge.service": {"-rw-r--r--", "root/root"},
		"/etc/drawbridge/drawbridge.yaml":        {"-rw-r-----", "root/drawbridge"},
		"/var/lib/drawbridge":                    {"drwx--x--x", "drawbridge/drawbridge"},
		"/usr/share/drawbridge/systemd/vip.conf": {"-rw-r--r--", "root/root"},
		"/usr/share/doc/drawbridge/copyright":    {"-rw-r--r--", "root/root"},
	} {
		if got, ok := entries[path]; !ok {
			t.Errorf("the package has no %s", path)
		} else if got != want {
			t.Errorf("%s: %s %s, want %s %s", path, got.mode, got.owner, want.mode, want.owner)
		}
	}
	x := t.TempDir()
	run(t, "dpkg-deb", "--extract", deb, x)
	for pkgPath, src := range map[string]string{
		"lib/systemd/system/drawbridge.service": "systemd/drawbridge.service",
		"etc/drawbridge/drawbridge.yaml":        "drawbridge.yaml",
		"usr/bin/drawbridge":                    drawbridgeBinary(t),
	} {
		got, err1 := os.ReadFile(filepath.Join(x, pkgPath))
		want, err2 := os.ReadFile(src)
		if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
			t.Errorf("/%s differs from %s (%v %v)", pkgPath, src, err1, err2)
		}
	}

	t.Run("install", func(t *testing.T) { installDeb(t, deb) })
	t.Run("firstboot", func(t *testing.T) { firstbootDeb(t, deb) })
}

// canInstall skips (or, with DRAWBRIDGE_TEST_DEB=1, fails) unless this test
// may install the package on this machine, and arranges to purge it and
// remove what it created afterwards.
func canInstall(t *testing.T) {
	t.Helper()
	force := os.Getenv("DRAWBRIDGE_TEST_DEB")
	skip := func(format string, args ...any) {
		t.Helper()
		if force == "1" {
			t.Fatalf("DRAWBRIDGE_TEST_DEB=1 but "+format, args...)
		}
		testenv.Missing(t, format, args...)
	}
	switch {
	case force == "0":
		t.Skip("DRAWBRIDGE_TEST_DEB=0")
	case os.Geteuid() != 0:
		skip("not root: not installing the package (CI runs this as root)")
	}
	// Another test process on this machine (two go test runs at once)
	// installs the same package and makes the same users: one at a time.
	machineLock(t)
	if _, err := exec.LookPath("dpkg"); err != nil {
		skip("dpkg is not installed")
	}
	if exec.Command("dpkg-query", "-W", "-f=${Status}", "haproxy").Run() != nil {
		skip("haproxy is not installed (the package depends on it; apt-get install haproxy)")
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "drawbridge").Output(); len(out) > 0 && !strings.Contains(string(out), "not-installed") {
		skip("a drawbridge package is already installed here (%s); not touching it", out)
	}
	for _, p := range []string{"/etc/drawbridge", "/var/lib/drawbridge", "/var/cache/drawbridge"} {
		if _, err := os.Stat(p); err == nil {
			skip("%s exists: not installing over a drawbridge set up by hand", p)
		}
	}
	_, userErr := user.Lookup("drawbridge")
	userExisted := userErr == nil
	_, groupErr := user.LookupGroup("drawbridge")
	groupExisted := groupErr == nil
	_, hUserErr := user.Lookup("drawbridge-haproxy")
	hUserExisted := hUserErr == nil
	_, hGroupErr := user.LookupGroup("drawbridge-haproxy")
	hGroupExisted := hGroupErr == nil

	t.Cleanup(func() {
		cmd := exec.Command("dpkg", "--purge", "drawbridge")
		cmd.Env = append(cleanEnv(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge drawbridge: %v\n%s", err, out)
		}
		// Files cloud-init would have written, which no package owns.
		os.RemoveAll("/etc/drawbridge")
		os.RemoveAll("/var/cache/drawbridge")
		// Debian leaves system users behind on purge; the test removes the
		// one it made.
		if !userExisted {
			exec.Command("userdel", "drawbridge").Run()
		}
		if !groupExisted {
			exec.Command("groupdel", "drawbridge").Run()
		}
		if !hUserExisted {
			exec.Command("userdel", "drawbridge-haproxy").Run()
		}
		if !hGroupExisted {
			exec.Command("groupdel", "drawbridge-haproxy").Run()
		}
	})
}

func installDeb(t *testing.T, deb string) {
	canInstall(t)
	run(t, "dpkg", "--install", deb)

	if out := run(t, "dpkg-query", "-W", "-f=${Status} ${Version}", "drawbridge"); out != "install ok installed "+debVersion {
		t.Errorf("dpkg-query: %q", out)
	}

	// The user the unit runs as: a system account with no login.
	u, err := user.Lookup("drawbridge")
	if err != nil {
		t.Fatalf("no drawbridge user after install: %v", err)
	}
	if uid, _ := strconv.Atoi(u.Uid); uid >= 1000 || uid == 0 {
		t.Errorf("drawbridge uid %s is not a system uid", u.Uid)
	}
	if u.HomeDir != "/var/lib/drawbridge" {
		t.Errorf("drawbridge home %q", u.HomeDir)
	}
	passwd := run(t, "getent", "passwd", "drawbridge")
	if f := strings.Split(strings.TrimSpace(passwd), ":"); len(f) != 7 || f[6] != "/usr/sbin/nologin" {
		t.Errorf("getent passwd drawbridge = %q, want shell /usr/sbin/nologin", passwd)
	}
	g, err := user.LookupGroup("drawbridge")
	if err != nil || g.Gid != u.Gid {
		t.Errorf("drawbridge group %v (%v), want the user's primary group %s", g, err, u.Gid)
	}
	// HAProxy's own user: a system account with no login, whose group the
	// agent's user joins to reach HAProxy's sockets.
	hu, err := user.Lookup("drawbridge-haproxy")
	if err != nil {
		t.Fatalf("no drawbridge-haproxy user after install: %v", err)
	}
	if uid, _ := strconv.Atoi(hu.Uid); uid >= 1000 || uid == 0 || hu.Uid == u.Uid {
		t.Errorf("drawbridge-haproxy uid %s: want a system uid of its own", hu.Uid)
	}
	if groups := run(t, "id", "-nG", "drawbridge"); !slices.Contains(strings.Fields(groups), "drawbridge-haproxy") {
		t.Errorf("drawbridge is not in group drawbridge-haproxy: %s", groups)
	}

	stat := func(path string, mode os.FileMode, uid, gid string) {
		t.Helper()
		st, err := os.Stat(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return
		}
		sys := st.Sys().(*syscall.Stat_t)
		if st.Mode().Perm() != mode || strconv.Itoa(int(sys.Uid)) != uid || strconv.Itoa(int(sys.Gid)) != gid {
			t.Errorf("%s: mode %v uid %d gid %d, want %v %s %s", path, st.Mode().Perm(), sys.Uid, sys.Gid, mode, uid, gid)
		}
	}
	stat("/usr/bin/drawbridge", 0o755, "0", "0")
	stat("/lib/systemd/system/drawbridge.service", 0o644, "0", "0")
	stat("/etc/drawbridge/drawbridge.yaml", 0o640, "0", g.Gid)
	stat("/var/lib/drawbridge", 0o711, u.Uid, g.Gid)

	if out := run(t, "/usr/bin/drawbridge", "version"); strings.TrimSpace(out) != "drawbridge "+testVersion {
		t.Errorf("drawbridge version: %q", out)
	}
	// As installed, the config names secrets and certificates nobody has
	// written yet: check-config refuses it, naming each (the agent would
	// exit at start). The package itself installed fine without them.
	const conf = "/etc/drawbridge/drawbridge.yaml"
	installed, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, exec.Command("/usr/bin/drawbridge", "agent", "--check-config", "--config", conf), testenv.ConfigPaths(installed))

	// The setup steps the installed config documents, run as written,
	// create every file; then the agent's user, which reads them at start,
	// has a valid configuration (the certificate names edge-1).
	steps := setupSteps(installed)
	if len(steps) < 8 {
		t.Fatalf("the installed config documents %d setup commands, want keygen twice, tls ca and cert create, and the installs:\n%s", len(steps), strings.Join(steps, "\n"))
	}
	work := t.TempDir()
	for _, step := range steps {
		cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", step)
		cmd.Dir = work
		cmd.Env = cleanEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("setup step %q: %v\n%s", step, err, out)
		}
	}
	asAgent := func(args ...string) *exec.Cmd {
		cmd := exec.Command("runuser", append([]string{"-u", "drawbridge", "--", "/usr/bin/drawbridge"}, args...)...)
		cmd.Dir = "/"
		return cmd
	}
	wantValid(t, asAgent("agent", "--check-config", "--config", conf, "--node-name", "edge-1"))
	stat("/etc/drawbridge/token", 0o640, "0", g.Gid)
	stat("/etc/drawbridge/tls/node-key.pem", 0o640, "0", g.Gid)
	if _, err := os.Stat("/etc/drawbridge/tls/ca-key.pem"); err == nil {
		t.Error("the setup steps put the CA key on the node")
	}
	if conf := run(t, "dpkg-query", "-W", "-f=${Conffiles}", "drawbridge"); !strings.Contains(conf, "/etc/drawbridge/drawbridge.yaml") {
		t.Errorf("conffiles registered: %q", conf)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		verifyUnit(t, sa, "/lib/systemd/system/drawbridge.service")
	}

	// Reinstall (preinst upgrade, postinst configure with the old version):
	// an operator's edit of the config survives.
	f, err := os.OpenFile("/etc/drawbridge/drawbridge.yaml", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	const edit = "# edited on this node\n"
	f.WriteString(edit)
	f.Close()
	run(t, "dpkg", "--install", deb)
	if b, _ := os.ReadFile("/etc/drawbridge/drawbridge.yaml"); !bytes.HasSuffix(b, []byte(edit)) {
		t.Error("reinstalling replaced the edited config")
	}

	run(t, "dpkg", "--purge", "drawbridge")
	for _, p := range []string{"/usr/bin/drawbridge", "/lib/systemd/system/drawbridge.service", "/etc/drawbridge/drawbridge.yaml", "/var/lib/drawbridge"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there after purge", p)
		}
	}
}

// setupSteps are the shell commands the config's header documents for a
// node's secrets and certificates (drawbridge keygen, drawbridge tls,
// install), in order.
func setupSteps(conf []byte) []string {
	var out []string
	for _, line := range strings.Split(string(conf), "\n") {
		cmd, ok := strings.CutPrefix(line, "#   ")
		if !ok {
			continue
		}
		cmd = strings.TrimSpace(cmd)
		if strings.HasPrefix(cmd, "drawbridge keygen") || strings.HasPrefix(cmd, "drawbridge tls ") || strings.HasPrefix(cmd, "install ") {
			out = append(out, cmd)
		}
	}
	return out
}

// firstbootDeb plays a droplet's first boot on this machine: it writes the
// files cloud-init would write for edge-1, then runs drawbridge-firstboot
// with the runcmd arguments, the real package, dpkg, sha256sum and the
// installed drawbridge, and stand-ins only for what needs the internet or a
// running systemd (curl, apt-get's resolver, systemctl, drawbridge-peers).
func firstbootDeb(t *testing.T, deb string) {
	canInstall(t)
	cc := parseCloudConfig(t, renderNodes(t, nil)[0].userData)

	// Stand-ins, logging their arguments.
	stubs := t.TempDir()
	calls := filepath.Join(stubs, "calls.log")
	stub := func(name, body string) {
		script := "#!/bin/sh\necho \"" + name + " $*\" >> " + calls + "\n" + body + "\n"
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// curl ... --output FILE URL: "download" the package built above.
	stub("curl", `while [ $# -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done; cp `+deb+` "$out"`)
	// apt-get install -y -q -o ... FILE: dpkg with the same options.
	stub("apt-get", `for a; do last=$a; done; exec dpkg --force-confold --force-confdef --install "$last"`)
	stub("systemctl", "exit 0")
	stub("drawbridge-peers", "exit 0")

	var script []byte
	for _, w := range cc.WriteFiles {
		data := w.data(t)
		if w.Path == "/usr/local/sbin/drawbridge-firstboot" {
			script = data
			continue
		}
		if strings.HasPrefix(w.Path, "/usr/local/sbin/") {
			continue // drawbridge-peers: stubbed
		}
		if strings.HasPrefix(w.Path, "/etc/systemd/") {
			// Written as cloud-init would, removed afterwards: systemctl
			// is stubbed, so this machine never runs it.
			t.Cleanup(func() { os.Remove(w.Path) })
		}
		mode, err := strconv.ParseUint(w.Permissions, 8, 32)
		if err != nil || w.Owner != "root:root" {
			t.Fatalf("%s: permissions %q owner %q", w.Path, w.Permissions, w.Owner)
		}
		if err := os.MkdirAll(filepath.Dir(w.Path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(w.Path, data, os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	firstboot := filepath.Join(stubs, "drawbridge-firstboot")
	if err := os.WriteFile(firstboot, script, 0o755); err != nil {
		t.Fatal(err)
	}
	wrote, _ := os.ReadFile("/etc/drawbridge/drawbridge.yaml")

	args := slices.Clone(cc.RunCmd[0][1:])
	runFirstboot := func(args []string) ([]byte, error) {
		cmd := exec.Command(firstboot, args...)
		cmd.Env = append(cleanEnv(), "PATH="+stubs+":"+os.Getenv("PATH"))
		return cmd.CombinedOutput()
	}

	// A package that does not match its checksum is refused.
	bad := slices.Clone(args)
	bad[slices.Index(bad, "--package-sha256")+1] = strings.Repeat("0", 64)
	if out, err := runFirstboot(bad); err == nil {
		t.Fatalf("firstboot accepted a package with the wrong checksum:\n%s", out)
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "drawbridge").Output(); strings.Contains(string(out), "installed") && !strings.Contains(string(out), "not-installed") {
		t.Fatalf("the package was installed despite the checksum: %s", out)
	}

	sum := strings.Fields(run(t, "sha256sum", deb))[0]
	args[slices.Index(args, "--package-sha256")+1] = sum

	// A node key cloud-init failed to write: firstboot stops at the check,
	// naming it, and never enables or starts the agent.
	const key = "/etc/drawbridge/tls/node-key.pem"
	keyData, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(key)
	if out, err := runFirstboot(args); err == nil || !bytes.Contains(out, []byte(key+": no such file or directory")) {
		t.Errorf("firstboot without the node key: %v\n%s", err, out)
	}
	if log, _ := os.ReadFile(calls); bytes.Contains(log, []byte("systemctl enable drawbridge")) || bytes.Contains(log, []byte("systemctl restart drawbridge")) {
		t.Errorf("firstboot started the agent without its key:\n%s", log)
	}
	if err := os.WriteFile(key, keyData, 0o600); err != nil {
		t.Fatal(err)
	}

	// Files root can read but the agent's user cannot (a certificate
	// directory closed to others): the check runs as that user and stops
	// firstboot, as the agent would fail at start under systemd.
	const tlsDir = "/etc/drawbridge/tls"
	if err := os.Chmod(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := runFirstboot(args); err == nil || !bytes.Contains(out, []byte("permission denied")) {
		t.Errorf("firstboot with %s closed to the drawbridge user: %v\n%s", tlsDir, err, out)
	}
	if log, _ := os.ReadFile(calls); bytes.Contains(log, []byte("systemctl enable drawbridge")) || bytes.Contains(log, []byte("systemctl restart drawbridge")) {
		t.Errorf("firstboot started the agent with files it cannot read:\n%s", log)
	}
	if err := os.Chmod(tlsDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// With every file, run again (firstboot is safe to rerun).
	out, err := runFirstboot(args)
	if err != nil {
		t.Fatalf("drawbridge-firstboot: %v\n%s", err, out)
	}
	for _, s := range []string{fakeAPIToken, fakeDOToken, fakeGossipKey} {
		if bytes.Contains(out, []byte(s)) {
			t.Errorf("drawbridge-firstboot printed a secret:\n%s", out)
		}
	}

	if got := run(t, "dpkg-query", "-W", "-f=${Status}", "drawbridge"); got != "install ok installed" {
		t.Errorf("after firstboot: %q", got)
	}
	if got, _ := os.ReadFile("/etc/drawbridge/drawbridge.yaml"); !bytes.Equal(got, wrote) {
		t.Error("installing the package replaced the config cloud-init wrote")
	}
	g, err := user.LookupGroup("drawbridge")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/etc/drawbridge/token", "/etc/drawbridge/gossip.key", "/etc/drawbridge/do-token"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if st.Mode().Perm() != 0o640 || sys.Uid != 0 || strconv.Itoa(int(sys.Gid)) != g.Gid {
			t.Errorf("%s: mode %v uid %d gid %d, want 0640 root:drawbridge", p, st.Mode().Perm(), sys.Uid, sys.Gid)
		}
	}
	log, _ := os.ReadFile(calls)
	for _, want := range []string{
		"systemctl disable --now haproxy.service",
		"drawbridge-peers --config /etc/drawbridge/drawbridge.yaml --token-file /etc/drawbridge/do-token --tag drawbridge --vpc " + fakeVPCID + " --expect 3",
		"systemctl enable --now drawbridge-metadata-guard.service",
		"systemctl enable drawbridge.service",
		"systemctl restart drawbridge.service",
	} {
		if !strings.Contains(string(log), want+"\n") {
			t.Errorf("firstboot did not run %q; it ran:\n%s", want, log)
		}
	}
	if i, j := strings.Index(string(log), "drawbridge-peers"), strings.Index(string(log), "systemctl restart drawbridge"); i < 0 || j < i {
		t.Errorf("the agent must start after its peers are known:\n%s", log)
	}
}
