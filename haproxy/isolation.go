package haproxy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Isolation runs HAProxy, the process that faces the internet, with less
// power than the agent that manages it. HAProxy is started through setpriv
// (util-linux), which switches to Isolation's user and leaves HAProxy only
// the capabilities it needs: CAP_NET_BIND_SERVICE (routes on ports below
// 1024) and, with a chroot, CAP_SYS_CHROOT. Whatever else the agent holds
// (CAP_NET_ADMIN and CAP_NET_RAW for the vip provider, CAP_SETUID and
// CAP_SETGID to make the switch, CAP_KILL to stop old workers of another
// user) stays with the agent. HAProxy's environment is always scrubbed to
// PATH, isolated or not, so a token passed to the agent by environment
// never reaches it.
type Isolation struct {
	// User and Group HAProxy runs as (names or numbers). Empty User: the
	// agent's own user, and no switch.
	User, Group string
	// Chroot makes workers chroot into Dir/empty, an empty directory the
	// agent creates (mode 0555, not writable by HAProxy's user).
	Chroot bool
	// Setpriv is the setpriv binary; default "setpriv" looked up in PATH.
	Setpriv string
}

// haproxyEnv is the whole environment HAProxy gets.
var haproxyEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Linux capability numbers (linux/capability.h).
const (
	capSetGID         = 6
	capSetUID         = 7
	capNetBindService = 10
	capSysChroot      = 18
)

// isolated reports whether HAProxy runs as another user than the agent, so
// its sockets and files must be shared with its group.
func (c Config) isolated() bool { return c.Isolation.User != "" }

// chrootDir is the empty directory workers chroot into ("" when off).
func (c Config) chrootDir() string {
	if !c.Isolation.Chroot {
		return ""
	}
	return filepath.Join(c.Dir, "empty")
}

// prepareIsolation creates the chroot directory and, when HAProxy runs as
// another user, hands Dir to HAProxy's group: mode 1770, so HAProxy's
// master can create its pid file and sockets there, and sticky, so it
// cannot remove or rename the agent's files.
//
// Dir carries no setgid bit: the systemd unit's RestrictSUIDSGID=yes
// refuses to set one (on directories too), so each file HAProxy must read
// (the configuration, the dynamic range's map) is handed to its group as
// it is written (shareFile). Changing a file's group to one the agent's
// user belongs to needs no capability.
func (m *Manager) prepareIsolation() error {
	if dir := m.cfg.chrootDir(); dir != "" {
		if err := os.MkdirAll(dir, 0o555); err != nil {
			return fmt.Errorf("haproxy chroot: %w", err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("haproxy chroot: %w", err)
		}
		if len(entries) > 0 {
			return fmt.Errorf("haproxy chroot %s must be empty", dir)
		}
		if err := os.Chmod(dir, 0o555); err != nil {
			return fmt.Errorf("haproxy chroot: %w", err)
		}
	}
	if !m.cfg.isolated() && !m.cfg.Isolation.Chroot {
		return nil
	}
	if err := CheckIsolation(m.cfg.Isolation); err != nil {
		return err
	}
	if missing := MissingCapabilities(m.cfg.Isolation); len(missing) > 0 {
		return fmt.Errorf("isolating haproxy (haproxy.user, haproxy.chroot) needs %s, which this agent does not hold: "+
			"run it under drawbridge.service (its AmbientCapabilities grant them) or as root; "+
			"--dev, or a configuration without haproxy.user and haproxy.chroot, runs HAProxy as the agent's own user",
			strings.Join(missing, ", "))
	}
	if !m.cfg.isolated() {
		return nil
	}
	gid, err := isolationGroup(m.cfg.Isolation)
	if err != nil {
		return err
	}
	m.shareGID = gid
	if err := os.Chown(m.cfg.Dir, -1, gid); err != nil {
		return fmt.Errorf("give haproxy dir %s to HAProxy's group %d (the agent's user must be a member of it): %w", m.cfg.Dir, gid, err)
	}
	if err := os.Chmod(m.cfg.Dir, 0o770|os.ModeSticky); err != nil {
		return fmt.Errorf("haproxy dir: %w", err)
	}
	// Files from an older drawbridge, or written before the switch.
	for _, p := range []string{m.cfgPath, m.lastGoodPath, m.mapPath, m.lastGoodMapPath} {
		if p == "" {
			continue
		}
		if err := shareExisting(p, gid); err != nil {
			return err
		}
	}
	return nil
}

// CheckIsolation reports what keeps iso from working on this machine for
// this process: setpriv missing, HAProxy's user or group unknown, a group
// that is the agent's own (which reads the agent's secrets), or, for an
// agent that is not root, a group it is no member of (it hands HAProxy its
// files and reaches HAProxy's sockets through it). It does not look at
// capabilities: see MissingCapabilities.
func CheckIsolation(iso Isolation) error {
	if iso.User == "" && !iso.Chroot {
		return nil
	}
	setpriv := iso.Setpriv
	if setpriv == "" {
		setpriv = "setpriv"
	}
	if _, err := exec.LookPath(setpriv); err != nil {
		return fmt.Errorf("isolating haproxy needs setpriv (apt-get install util-linux): %w", err)
	}
	if iso.User == "" {
		return nil
	}
	uid, err := lookupUser(iso.User)
	if err != nil {
		return err
	}
	gid, err := isolationGroup(iso)
	if err != nil {
		return err
	}
	if uid == 0 {
		return fmt.Errorf("haproxy.user %s is root: name an unprivileged user of its own (the package makes drawbridge-haproxy)", iso.User)
	}
	if uid == os.Geteuid() {
		return fmt.Errorf("haproxy.user %s is the agent's own user: name a user of its own (the package makes drawbridge-haproxy), or leave haproxy.user empty", iso.User)
	}
	if gid == 0 {
		return fmt.Errorf("haproxy.group %s is root's group: give HAProxy a group of its own (the package makes drawbridge-haproxy)", groupName(iso))
	}
	if gid == os.Getegid() {
		return fmt.Errorf("haproxy.group %s is the agent's own group, which reads its secrets: give HAProxy a group of its own (drawbridge-haproxy)", groupName(iso))
	}
	if os.Geteuid() != 0 {
		groups, _ := os.Getgroups()
		if !slices.Contains(groups, gid) {
			return fmt.Errorf("the agent's user is not a member of HAProxy's group %d, through which it hands HAProxy its configuration and reaches its sockets: usermod --append --groups %s $(id -un) (the package does this for drawbridge)", gid, groupName(iso))
		}
	}
	return nil
}

// MissingCapabilities names the capabilities iso needs that this process
// lacks in its permitted set: CAP_SETUID and CAP_SETGID to start HAProxy
// as its user, CAP_SYS_CHROOT for HAProxy's workers to chroot (passed on
// to HAProxy, which keeps it). Empty when it holds them (as root, or under
// drawbridge.service).
func MissingCapabilities(iso Isolation) []string {
	prm, err := permittedCaps()
	if err != nil {
		prm = 0
	}
	var missing []string
	need := func(name string, bit uint) {
		if prm&(1<<bit) == 0 {
			missing = append(missing, name)
		}
	}
	if iso.User != "" {
		need("CAP_SETUID", capSetUID)
		need("CAP_SETGID", capSetGID)
	}
	if iso.Chroot {
		need("CAP_SYS_CHROOT", capSysChroot)
	}
	return missing
}

// groupName is how an error names HAProxy's group.
func groupName(iso Isolation) string {
	if iso.Group != "" {
		return iso.Group
	}
	return iso.User
}

// warnAdoptedUser logs when the adopted master runs as another user than
// the configuration asks (isolation switched on or off since it started):
// reloads keep its user, so the change waits for HAProxy to restart. The
// pid file tells, as the master writes it: under the unit's
// ProtectProc=invisible the agent cannot see another user's process.
func (m *Manager) warnAdoptedUser() {
	st, err := os.Stat(m.pidPath)
	if err != nil {
		return
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	want := os.Geteuid()
	if m.cfg.isolated() {
		uid, err := lookupUser(m.cfg.Isolation.User)
		if err != nil {
			return
		}
		want = uid
	}
	if int(sys.Uid) != want {
		m.log.Warn("the adopted HAProxy runs as another user than haproxy.user says; reloads keep its user, so the change takes effect when HAProxy restarts (systemctl kill --kill-whom=all drawbridge, then start it: this drops connections)",
			"running_uid", sys.Uid, "want_uid", want)
	}
}

// isolationGroup is the group HAProxy runs as: Isolation.Group, or the
// primary group of Isolation.User. Never the agent's own group, which may
// read the agent's secrets.
func isolationGroup(iso Isolation) (int, error) {
	if iso.Group != "" {
		return lookupGroup(iso.Group)
	}
	return primaryGroup(iso.User)
}

// shareFile gives an open file the agent wrote to HAProxy's group, readable
// (0640), when HAProxy runs as its own user.
func (m *Manager) shareFile(f *os.File) error {
	if !m.cfg.isolated() {
		return nil
	}
	if err := f.Chown(-1, m.shareGID); err != nil {
		return fmt.Errorf("give %s to HAProxy's group: %w", f.Name(), err)
	}
	return f.Chmod(0o640)
}

// shareExisting is shareFile for a file already in place ("" or missing:
// nothing to do).
func shareExisting(path string, gid int) error {
	if err := os.Chown(path, -1, gid); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("give %s to HAProxy's group: %w", path, err)
	}
	return os.Chmod(path, 0o640)
}

// masterCommand builds the command that starts the HAProxy master: haproxy
// itself, or setpriv then haproxy when isolated, always with a scrubbed
// environment.
func (m *Manager) masterCommand(args ...string) (*exec.Cmd, error) {
	var cmd *exec.Cmd
	if !m.cfg.isolated() && !m.cfg.Isolation.Chroot {
		cmd = exec.Command(m.cfg.Bin, args...)
	} else {
		setpriv := m.cfg.Isolation.Setpriv
		if setpriv == "" {
			setpriv = "setpriv"
		}
		bin, err := exec.LookPath(setpriv)
		if err != nil {
			return nil, fmt.Errorf("isolating haproxy needs setpriv (util-linux): %w", err)
		}
		caps := []string{"+net_bind_service"}
		if m.cfg.Isolation.Chroot {
			caps = append(caps, "+sys_chroot")
		}
		caps = keepHeld(caps)
		set := "-all"
		if len(caps) > 0 {
			set += "," + strings.Join(caps, ",")
		}
		pre := []string{"--inh-caps=" + set, "--ambient-caps=" + set}
		if u := m.cfg.Isolation.User; u != "" {
			// Always a group too: without --regid HAProxy would keep the
			// agent's group, which reads the agent's secrets.
			pre = append(pre, "--reuid="+u, "--regid="+strconv.Itoa(m.shareGID), "--clear-groups")
		}
		pre = append(pre, "--", m.cfg.Bin)
		cmd = exec.Command(bin, append(pre, args...)...)
	}
	cmd.Env = append([]string(nil), haproxyEnv...)
	return cmd, nil
}

// keepHeld drops the capabilities ("+name") this process does not hold in
// its permitted set: setpriv cannot pass on what the agent lacks, and
// HAProxy then runs without it (ports below 1024 fail to bind, as they
// would have anyway).
func keepHeld(caps []string) []string {
	prm, err := permittedCaps()
	if err != nil {
		return nil
	}
	var out []string
	for _, c := range caps {
		n := map[string]uint{"+net_bind_service": capNetBindService, "+sys_chroot": capSysChroot}[c]
		if prm&(1<<n) != 0 {
			out = append(out, c)
		}
	}
	return out
}

// permittedCaps reads CapPrm from /proc/self/status.
func permittedCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapPrm:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapPrm in /proc/self/status")
}

// lookupGroup resolves a group name or number from /etc/group.
func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	b, err := os.ReadFile("/etc/group")
	if err != nil {
		return 0, fmt.Errorf("look up group %s: %w", name, err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) >= 3 && f[0] == name {
			return strconv.Atoi(f[2])
		}
	}
	return 0, fmt.Errorf("haproxy.group %s does not exist (the drawbridge package creates drawbridge-haproxy)", name)
}

// lookupUser resolves a user name or number to its uid from /etc/passwd.
func lookupUser(name string) (int, error) {
	uid, _, err := passwdEntry(name)
	return uid, err
}

// primaryGroup resolves a user name or number to its primary group from
// /etc/passwd.
func primaryGroup(name string) (int, error) {
	_, gid, err := passwdEntry(name)
	return gid, err
}

// passwdEntry finds a user by name or number in /etc/passwd and returns its
// uid and primary gid. A number without an entry stands for itself (setpriv
// takes it), as both ids.
func passwdEntry(name string) (uid, gid int, err error) {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return 0, 0, fmt.Errorf("look up user %s: %w", name, err)
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) >= 4 && (f[0] == name || f[2] == name) {
			if uid, err = strconv.Atoi(f[2]); err != nil {
				return 0, 0, fmt.Errorf("user %s: uid %q in /etc/passwd: %w", name, f[2], err)
			}
			if gid, err = strconv.Atoi(f[3]); err != nil {
				return 0, 0, fmt.Errorf("user %s: gid %q in /etc/passwd: %w", name, f[3], err)
			}
			return uid, gid, nil
		}
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, n, nil
	}
	return 0, 0, fmt.Errorf("haproxy.user %s does not exist: install the drawbridge package, which creates drawbridge-haproxy, or create it (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s)", name, name)
}
