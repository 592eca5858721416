#!/usr/bin/python3
"""unitsandbox: run a command with the privileges and the sandbox a systemd
service unit gives its ExecStart, on a machine whose PID 1 is not systemd.

    unitsandbox.py --unit drawbridge.service [--dropin vip.conf]...
                   [--path-map /var/lib/drawbridge=/srv/test/data]...
                   [--env NAME=VALUE]... -- COMMAND [ARG]...

The drawbridge deploy tests run the agent through it (as root) to prove that
what the unit allows is enough, and no more than needed. It reads the unit,
so a change to the unit changes what the test runs under, and it refuses a
[Service] key it does not know: whoever adds one decides here whether it is
emulated.

What it does, in systemd's order where it matters:
  - a new mount namespace per start (systemd makes one per start too):
    PrivateTmp, PrivateDevices, ProtectSystem=strict (every mount read-only
    but /dev, /proc, /sys), ReadWritePaths and StateDirectory (writable
    again), ProtectHome=yes, ProtectKernelTunables and
    ProtectControlGroups (/sys read-only), ProtectProc and ProcSubset (a
    new /proc with hidepid and subset);
  - LimitNOFILE, UMask;
  - seccomp, one filter per feature as systemd loads them (the kernel keeps
    the strictest answer): SystemCallFilter with systemd's semantics (the
    first line sets the mode, later ones add to or take from it; groups
    expanded by `systemd-analyze syscall-filter`), SystemCallErrorNumber,
    SystemCallArchitectures=native, RestrictAddressFamilies,
    RestrictNamespaces, RestrictSUIDSGID;
  - setpriv: User, Group with the user's supplementary groups,
    CapabilityBoundingSet, AmbientCapabilities (also inheritable, as
    systemd sets them), SecureBits, NoNewPrivileges;
  - the environment systemd gives a service (PATH, HOME, USER, LOGNAME,
    SHELL, LANG) plus Environment= lines and --env.

--path-map moves a path the unit names (ReadWritePaths, StateDirectory's
/var/lib/NAME) to where the test keeps it. Needs root, util-linux (setpriv,
mount) and python3-seccomp.
"""

import argparse
import ctypes
import errno
import os
import pwd
import resource
import subprocess
import sys

import seccomp

# [Service] keys and what this script does with them. A key missing here is
# an error, so the unit and the test cannot drift apart silently.
EMULATED = {
    "User", "Group", "AmbientCapabilities", "CapabilityBoundingSet", "SecureBits",
    "NoNewPrivileges", "UMask", "LimitNOFILE", "ReadWritePaths", "StateDirectory",
    "StateDirectoryMode", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
    "ProtectProc", "ProcSubset", "ProtectKernelTunables", "ProtectControlGroups",
    "SystemCallFilter", "SystemCallErrorNumber", "SystemCallArchitectures",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictSUIDSGID", "ExecStart",
    "Environment",
}
NOT_EMULATED = {
    # Process management: the test starts, stops and restarts the command.
    "Type", "Restart", "RestartSec", "KillMode", "KillSignal", "TimeoutStopSec", "ExecReload",
    # Only narrow what the capability bounding set and the syscall allow-list
    # already refuse (kernel modules, logs, clock, hostname, real-time
    # scheduling, personality), or IPC objects neither process uses.
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "ProtectHostname",
    "RestrictRealtime", "LockPersonality", "RemoveIPC", "PrivateIPC", "KeyringMode",
    "DevicePolicy",
}

CLONE_NEWNS = 0x00020000
NS_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080]
S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT = 0o100

AF = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
AF_MAX = 46


def die(msg):
    print("unitsandbox: " + msg, file=sys.stderr)
    sys.exit(111)


def parse_unit(paths):
    """[Service] key -> values in order; an empty assignment resets."""
    svc = {}
    for path in paths:
        section = ""
        with open(path) as f:
            lines = f.read().replace("\\\n", " ").splitlines()
        for line in lines:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if section != "Service":
                continue
            key, _, val = line.partition("=")
            if key not in EMULATED and key not in NOT_EMULATED:
                die("%s: [Service] %s is neither emulated nor explained in unitsandbox.py" % (path, key))
            if val == "":
                svc[key] = []
            else:
                svc.setdefault(key, []).append(val)
    return svc


def last(svc, key, default=""):
    v = svc.get(key)
    return v[-1] if v else default


def words(svc, key):
    out = []
    for v in svc.get(key, []):
        out.extend(v.split())
    return out


def run(*cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        die("%s: %s" % (" ".join(cmd), r.stdout.strip()))


def mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            out.append(mp)
    return out


def under(path, prefixes):
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def sandbox_mounts(svc, pmap):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        die("unshare(CLONE_NEWNS): " + os.strerror(ctypes.get_errno()))
    run("mount", "--make-rprivate", "/")

    tmps = []
    if last(svc, "PrivateTmp") == "yes":
        for d in ("/tmp", "/var/tmp"):
            run("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", d)
            tmps.append(d)
    if last(svc, "PrivateDevices") == "yes":
        old = "/tmp/.unitsandbox-dev"
        os.makedirs(old, exist_ok=True)
        run("mount", "--rbind", "/dev", old)
        run("mount", "-t", "tmpfs", "-o", "mode=755,nosuid,noexec", "tmpfs", "/dev")
        for n in ("null", "zero", "full", "random", "urandom", "tty"):
            open("/dev/" + n, "w").close()
            run("mount", "--bind", old + "/" + n, "/dev/" + n)
        for d in ("pts", "shm"):
            os.mkdir("/dev/" + d)
        run("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
        run("umount", "-l", old)
        os.rmdir(old)

    # StateDirectory: made (owned by User, StateDirectoryMode) before the
    # file system turns read-only, then writable again like ReadWritePaths.
    rw = [pmap.get(p, p) for p in words(svc, "ReadWritePaths")]
    for name in words(svc, "StateDirectory"):
        d = pmap.get("/var/lib/" + name, "/var/lib/" + name)
        os.makedirs(d, exist_ok=True)
        u = pwd.getpwnam(last(svc, "User"))
        os.chown(d, u.pw_uid, u.pw_gid)
        os.chmod(d, int(last(svc, "StateDirectoryMode", "0755"), 8))
        rw.append(d)

    api = ["/proc", "/sys", "/dev"]
    if last(svc, "ProtectSystem") == "strict":
        for mp in mounts():
            if under(mp, api) or mp in tmps:
                continue
            run("mount", "-o", "remount,bind,ro", mp)
    elif last(svc, "ProtectSystem"):
        die("ProtectSystem=%s is not emulated" % last(svc, "ProtectSystem"))
    if last(svc, "ProtectKernelTunables") == "yes" or last(svc, "ProtectControlGroups") == "yes":
        for mp in mounts():
            if under(mp, ["/sys"]):
                run("mount", "-o", "remount,bind,ro", mp)

    for p in rw:
        p = p.lstrip("-")
        if not os.path.exists(p):
            continue
        run("mount", "--bind", p, p)
        run("mount", "-o", "remount,bind,rw", p)

    if last(svc, "ProtectHome") == "yes":
        for d in ("/home", "/root", "/run/user"):
            if os.path.isdir(d):
                run("mount", "-t", "tmpfs", "-o", "ro,mode=000,nosuid,nodev,noexec", "tmpfs", d)
    elif last(svc, "ProtectHome"):
        die("ProtectHome=%s is not emulated" % last(svc, "ProtectHome"))

    opts = []
    if last(svc, "ProtectProc") not in ("", "default"):
        opts.append("hidepid=" + last(svc, "ProtectProc"))
    if last(svc, "ProcSubset") not in ("", "all"):
        opts.append("subset=" + last(svc, "ProcSubset"))
    if opts:
        run("mount", "-t", "proc", "-o", ",".join(["nosuid", "nodev", "noexec"] + opts), "proc", "/proc")


def expand(group, seen=None):
    """The system calls of a name or @group, groups expanded."""
    if not group.startswith("@"):
        return {group}
    seen = seen or set()
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        calls |= expand(s, seen)
    return calls


def add(f, action, name, *args):
    try:
        f.add_rule(action, name, *args)
    except (RuntimeError, ValueError, OSError):
        pass  # not a system call on this architecture


def sandbox_seccomp(svc):
    err = getattr(errno, last(svc, "SystemCallErrorNumber", ""), None)
    filters = []

    # SystemCallFilter: the first line decides allow- or deny-list; later
    # lines add to it or take from it (systemd.exec(5)).
    lines = svc.get("SystemCallFilter", [])
    if lines:
        allow_mode = not lines[0].startswith("~")
        calls = set()
        for line in lines:
            deny = line.startswith("~")
            names = set()
            for w in line.lstrip("~").split():
                names |= expand(w)
            if deny == (not allow_mode):
                calls |= names
            else:
                calls -= names
        if allow_mode:
            f = seccomp.SyscallFilter(seccomp.ERRNO(err) if err else seccomp.KILL_PROCESS)
            for c in sorted(calls):
                add(f, seccomp.ALLOW, c)
        else:
            f = seccomp.SyscallFilter(seccomp.ALLOW)
            for c in sorted(calls):
                add(f, seccomp.ERRNO(err) if err else seccomp.KILL_PROCESS, c)
        filters.append(f)

    fams = words(svc, "RestrictAddressFamilies")
    if fams:
        if fams[0].startswith("~"):
            die("a RestrictAddressFamilies deny-list is not emulated")
        allowed = {AF[a] for a in fams}
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        for n in range(AF_MAX):
            if n not in allowed:
                add(f, seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, n))
        filters.append(f)

    if last(svc, "RestrictNamespaces") == "yes":
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        add(f, seccomp.ERRNO(errno.EPERM), "setns")
        add(f, seccomp.ERRNO(errno.ENOSYS), "clone3")  # flags in memory: systemd answers ENOSYS
        for flag in NS_FLAGS:
            add(f, seccomp.ERRNO(errno.EPERM), "unshare", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
            add(f, seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        filters.append(f)
    elif last(svc, "RestrictNamespaces"):
        die("RestrictNamespaces=%s is not emulated" % last(svc, "RestrictNamespaces"))

    if last(svc, "RestrictSUIDSGID") == "yes":
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        eperm = seccomp.ERRNO(errno.EPERM)
        for bit in (S_ISUID, S_ISGID):
            for name, i in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("mkdir", 1), ("mkdirat", 2),
                            ("mknod", 1), ("mknodat", 2), ("creat", 1)):
                add(f, eperm, name, seccomp.Arg(i, seccomp.MASKED_EQ, bit, bit))
            add(f, eperm, "open", seccomp.Arg(1, seccomp.MASKED_EQ, O_CREAT, O_CREAT),
                seccomp.Arg(2, seccomp.MASKED_EQ, bit, bit))
            add(f, eperm, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, O_CREAT, O_CREAT),
                seccomp.Arg(3, seccomp.MASKED_EQ, bit, bit))
        add(f, seccomp.ERRNO(errno.ENOSYS), "openat2")
        filters.append(f)

    arch = last(svc, "SystemCallArchitectures")
    if arch not in ("", "native"):
        die("SystemCallArchitectures=%s is not emulated" % arch)
    return filters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unit", required=True)
    ap.add_argument("--dropin", action="append", default=[])
    ap.add_argument("--path-map", action="append", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("command", nargs="+")
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("needs root")
    svc = parse_unit([a.unit] + a.dropin)
    pmap = dict(m.split("=", 1) for m in a.path_map)

    user = last(svc, "User")
    group = last(svc, "Group")
    pw = pwd.getpwnam(user)

    sandbox_mounts(svc, pmap)
    nofile = last(svc, "LimitNOFILE")
    if nofile:
        # Without CAP_SYS_RESOURCE (a container) the hard limit cannot
        # rise: the unit's value, or as close as this machine allows.
        n = min(int(nofile), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    os.umask(int(last(svc, "UMask", "0022"), 8))

    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "SHELL": pw.pw_shell,
    }
    for line in svc.get("Environment", []):
        for kv in line.split():
            k, _, v = kv.strip('"').partition("=")
            env[k] = v
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v

    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in words(svc, "AmbientCapabilities"))
    bounding = ",".join("+" + c.lower().removeprefix("cap_") for c in words(svc, "CapabilityBoundingSet"))
    cmd = ["setpriv", "--reuid", user, "--regid", group or str(pw.pw_gid), "--init-groups"]
    if bounding:
        cmd.append("--bounding-set=-all," + bounding)
    if caps:
        cmd += ["--inh-caps=-all," + caps, "--ambient-caps=-all," + caps]
    bits = [b for b in last(svc, "SecureBits").split() if b]
    if bits:
        cmd.append("--securebits=" + ",".join("+" + b.replace("-", "_") for b in bits))
    if last(svc, "NoNewPrivileges") == "yes":
        cmd.append("--no-new-privs")
    cmd += ["--"] + a.command

    # setpriv needs capset, prctl, setresuid, setgroups and execve, all of
    # them in @system-service: loading the filters first is what systemd's
    # order (filters last, just before exec) amounts to.
    os.chdir("/")  # WorkingDirectory's default for a system service
    # The allow-list goes last: it does not allow seccomp() itself.
    for f in reversed(sandbox_seccomp(svc)):
        f.set_attr(seccomp.Attr.CTL_NNP, 0)  # NoNewPrivileges decides that
        f.load()
    os.execvpe("setpriv", cmd, env)


if __name__ == "__main__":
    main()
